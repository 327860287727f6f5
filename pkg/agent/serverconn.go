package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"k8s.io/klog/v2"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// closeGrace is how long a per-connection stream waits, after this side
// ended it, for the server to end its side before the stream is cancelled.
const closeGrace = 5 * time.Second

// serverConn is the agent's connection to one server replica: a gRPC
// connection, its control stream, and the tunneled connections it carries.
type serverConn struct {
	a           *Agent
	serverID    string
	cc          *grpc.ClientConn
	stream      grpc.BidiStreamingClient[client.Packet, client.Packet]
	connStreams bool
	log         klog.Logger

	// With the mux feature every connection rides on mux, which the
	// first connection opens (openOnMux); stopControl ends the control
	// stream.
	useMux      bool
	stopControl context.CancelFunc
	muxMu       sync.Mutex
	mux         *tunnel.Mux
	muxCancel   context.CancelFunc
	muxDone     chan struct{} // closed when mux.Serve returned
	muxIdle     *time.Timer   // closes the mux when it carried nothing for MuxIdle

	sendMu sync.Mutex

	mu     sync.Mutex
	dials  map[int64]context.CancelFunc // dials in progress, by the server's random
	conns  map[int64]*tunnel.PacketConn // single-stream connections by connectID
	lastID int64
	wg     sync.WaitGroup // dials and connections
}

func (sc *serverConn) send(p *client.Packet) error {
	sc.sendMu.Lock()
	defer sc.sendMu.Unlock()
	return sc.stream.Send(p)
}

// serve reads the control stream until it ends, then waits for the
// connections it started.
func (sc *serverConn) serve() error {
	err := sc.recvLoop()
	sc.mu.Lock()
	for _, cancel := range sc.dials {
		cancel()
	}
	conns := sc.conns
	sc.conns = map[int64]*tunnel.PacketConn{}
	sc.mu.Unlock()
	gone := errors.New("edge-tunnel-agent: control stream to the server ended")
	for _, c := range conns {
		c.Abort(gone)
	}
	sc.wg.Wait()
	sc.closeMux()
	sc.cc.Close()
	return err
}

// mode names the protocol this connection speaks, for logs.
func (sc *serverConn) mode() string {
	switch {
	case sc.useMux:
		return agentpb.FeatureMux
	case sc.connStreams:
		return agentpb.FeatureConnStreams
	}
	return "single-stream"
}

// openOnMux answers dial random with an open frame on the MuxService
// stream that carries this server connection's tunneled connections. The
// first connection opens the stream, and one that carried nothing for
// MuxIdle is closed (closeIdleMux): an agent that tunnels nothing costs the
// server no stream (with thousands of edge nodes, most are idle most of
// the time). Opening under muxMu keeps that from racing.
//
// The stream lives with the agent's connection lifetime, not the control
// stream's (during a drain, open connections outlive the control stream),
// until serve or the idle timer is done with it. Should it break while the
// control stream is up, the control stream ends too and the agent
// reconnects: without its mux the connection cannot answer dials.
func (sc *serverConn) openOnMux(random int64) (*tunnel.MuxConn, error) {
	sc.muxMu.Lock()
	defer sc.muxMu.Unlock()
	if sc.mux == nil {
		ctx, cancel := context.WithCancel(sc.a.connCtx)
		ctx = metadata.AppendToOutgoingContext(ctx, agentpb.AgentIDKey, sc.a.cfg.AgentID)
		ms, err := agentpb.NewMuxServiceClient(sc.cc).Mux(ctx)
		if err != nil {
			cancel()
			sc.log.Info("Could not open the mux stream to the server; reconnecting", "err", err)
			sc.stopControl()
			return nil, fmt.Errorf("opening the mux stream to server %s: %w", sc.serverID, err)
		}
		m := tunnel.NewMux(ms, tunnel.MuxOptions{Workers: sc.a.workers, OnBadFrame: func(err error) {
			sc.log.Info("Dropping a bad frame from the server's mux stream", "err", err)
		}})
		done := make(chan struct{})
		sc.mux, sc.muxCancel, sc.muxDone = m, cancel, done
		go func() {
			defer close(done)
			err := m.Serve()
			if ctx.Err() == nil {
				sc.log.Info("The mux stream to the server ended; reconnecting", "err", err)
				sc.stopControl()
			}
		}()
	}
	return sc.mux.Open(random)
}

// muxConnDone restarts the idle timer when a connection on the mux ends.
func (sc *serverConn) muxConnDone() {
	sc.muxMu.Lock()
	defer sc.muxMu.Unlock()
	if sc.muxIdle == nil {
		sc.muxIdle = time.AfterFunc(sc.a.cfg.MuxIdle, sc.closeIdleMux)
	} else {
		sc.muxIdle.Reset(sc.a.cfg.MuxIdle)
	}
}

// closeIdleMux closes the mux stream if it carries no connection; the
// next connection opens a new one.
func (sc *serverConn) closeIdleMux() {
	sc.muxMu.Lock()
	defer sc.muxMu.Unlock()
	if sc.mux == nil || sc.mux.Len() > 0 {
		return
	}
	sc.stopMuxLocked()
	sc.log.V(2).Info("Closed the idle mux stream", "idle", sc.a.cfg.MuxIdle)
}

// closeMux ends the mux stream; serve calls it once no connection uses it.
func (sc *serverConn) closeMux() {
	sc.muxMu.Lock()
	defer sc.muxMu.Unlock()
	if sc.muxIdle != nil {
		sc.muxIdle.Stop()
	}
	if sc.mux != nil {
		sc.stopMuxLocked()
	}
}

// stopMuxLocked cancels the mux stream and waits for its Serve to return;
// muxMu held. Serve then knows the end was asked for and does not stop
// the control stream.
func (sc *serverConn) stopMuxLocked() {
	sc.muxCancel()
	<-sc.muxDone
	sc.mux = nil
}

func (sc *serverConn) recvLoop() error {
	for {
		pkt, err := sc.stream.Recv()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		switch pkt.Type {
		case client.PacketType_DIAL_REQ:
			if r := pkt.GetDialRequest(); r != nil {
				sc.onDial(r)
				continue
			}
		case client.PacketType_DIAL_CLS:
			if c := pkt.GetCloseDial(); c != nil {
				sc.mu.Lock()
				cancel := sc.dials[c.Random]
				sc.mu.Unlock()
				if cancel != nil {
					cancel()
				}
				continue
			}
		case client.PacketType_DATA:
			if d := pkt.GetData(); d != nil {
				sc.onData(d)
				continue
			}
		case client.PacketType_CLOSE_REQ:
			if c := pkt.GetCloseRequest(); c != nil {
				sc.onCloseRequest(c.ConnectID)
				continue
			}
		}
		sc.log.Info("Ignoring unexpected packet from the server", "type", pkt.Type.String())
	}
}

func (sc *serverConn) dialResponse(random, id int64, errText string) {
	sc.send(&client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{
		DialResponse: &client.DialResponse{Random: random, ConnectID: id, Error: errText}}})
}

func (sc *serverConn) onDial(r *client.DialRequest) {
	if r.Protocol != "tcp" {
		sc.a.m.Dials.WithLabelValues("refused").Inc()
		sc.dialResponse(r.Random, 0, fmt.Sprintf("protocol %q is not supported; only \"tcp\" is", r.Protocol))
		return
	}
	ctx, cancel := context.WithTimeout(sc.a.connCtx, sc.a.cfg.DialTimeout)
	sc.mu.Lock()
	if _, dup := sc.dials[r.Random]; dup {
		sc.mu.Unlock()
		cancel()
		sc.a.m.Dials.WithLabelValues("refused").Inc()
		sc.dialResponse(r.Random, 0, "duplicate dial ID: a dial with this random is already in progress")
		return
	}
	sc.dials[r.Random] = cancel
	sc.wg.Add(1)
	sc.mu.Unlock()
	sc.a.open.Add(1)
	sc.a.workers.Go(func() { sc.dial(ctx, cancel, r) })
}

// dial dials one target and, on success, carries the connection until it
// ends: on the mux stream, on its own ConnService stream, or on the
// control stream.
func (sc *serverConn) dial(ctx context.Context, cancel context.CancelFunc, r *client.DialRequest) {
	defer sc.wg.Done()
	defer sc.a.open.Add(-1)
	m := sc.a.m
	start := time.Now()
	target, err := sc.a.dialer.resolve(r.Address)
	if err != nil {
		sc.forgetDial(r.Random, cancel)
		m.Dials.WithLabelValues("refused").Inc()
		sc.log.V(2).Info("Dial refused", "address", r.Address, "reason", err)
		sc.dialResponse(r.Random, 0, err.Error())
		return
	}
	conn, err := sc.a.dialer.dial(ctx, target)
	cancelled := errors.Is(ctx.Err(), context.Canceled)
	sc.forgetDial(r.Random, cancel)
	m.DialLatency.Observe(time.Since(start).Seconds())
	if err != nil {
		if cancelled {
			m.Dials.WithLabelValues("cancelled").Inc()
			return // DIAL_CLS: the server no longer waits
		}
		m.Dials.WithLabelValues("error").Inc()
		sc.log.V(2).Info("Dial failed", "address", r.Address, "err", err)
		sc.dialResponse(r.Random, 0, err.Error())
		return
	}
	if cancelled {
		m.Dials.WithLabelValues("cancelled").Inc()
		conn.Close()
		return
	}
	m.Dials.WithLabelValues("ok").Inc()

	var up io.ReadWriteCloser
	switch {
	case sc.useMux:
		var mc *tunnel.MuxConn
		if mc, err = sc.openOnMux(r.Random); err == nil {
			up = mc
		}
	case sc.connStreams:
		up, err = sc.openConnStream(r.Random)
	default:
		up = sc.newPacketConn(r.Random)
	}
	if err != nil {
		conn.Close()
		sc.log.V(2).Info("Could not open the connection stream; closing the target connection", "address", r.Address, "err", err)
		sc.dialResponse(r.Random, 0, err.Error()) // the server need not wait for its timeout
		return
	}
	// The connection gets a goroutine of its own and this one, whose stack
	// grew while dialing and opening the stream, ends: a tunnel idles for
	// hours, and a stack that grew only as far as copying needs is what it
	// then costs.
	sc.wg.Add(1)
	sc.a.open.Add(1)
	go sc.carry(conn, up)
}

// carry copies between the target and the server until either ends.
func (sc *serverConn) carry(conn net.Conn, up io.ReadWriteCloser) {
	defer sc.wg.Done()
	defer sc.a.open.Add(-1)
	m := sc.a.m
	m.OpenConns.Inc()
	defer m.OpenConns.Dec()
	toServer, fromServer, _ := tunnel.Splice(conn, up)
	if sc.useMux {
		sc.muxConnDone()
	}
	m.Bytes.WithLabelValues("to_server").Add(float64(toServer))
	m.Bytes.WithLabelValues("from_server").Add(float64(fromServer))
}

func (sc *serverConn) forgetDial(random int64, cancel context.CancelFunc) {
	sc.mu.Lock()
	delete(sc.dials, random)
	sc.mu.Unlock()
	cancel()
}

// openConnStream answers a dial with a ConnService stream of its own. The
// stream's context is the agent's connection lifetime, not the control
// stream's: during a drain, open connections outlive the control stream.
func (sc *serverConn) openConnStream(random int64) (io.ReadWriteCloser, error) {
	ctx, cancel := context.WithCancel(sc.a.connCtx)
	ctx = metadata.AppendToOutgoingContext(ctx, agentpb.AgentIDKey, sc.a.cfg.AgentID, agentpb.DialIDKey, strconv.FormatInt(random, 10))
	cs, err := agentpb.NewConnServiceClient(sc.cc).Conn(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	ss := &sendCloser{ConnService_ConnClient: cs}
	return &streamConn{StreamConn: tunnel.NewStreamConn(ss, func() {
		time.AfterFunc(closeGrace, cancel)
		ss.CloseSend()
	}), cancel: cancel}, nil
}

// sendCloser keeps CloseSend from running concurrently with Send, which gRPC
// does not allow (the close of a Splice comes from the copy that ended while
// the other copy may be in Send). A CloseSend that finds a Send in flight is
// left to that Send's caller, so Close never waits for a Send that flow
// control blocks; the cancellation Close schedules (closeGrace later)
// unblocks such a Send.
type sendCloser struct {
	agentpb.ConnService_ConnClient
	mu      sync.Mutex
	sending bool
	closing bool // CloseSend was asked for
	closed  bool // CloseSend was done
}

func (s *sendCloser) SendMsg(m any) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return io.ErrClosedPipe
	}
	s.sending = true
	s.mu.Unlock()
	err := s.ConnService_ConnClient.SendMsg(m)
	s.mu.Lock()
	s.sending = false
	late := s.closing && !s.closed
	s.closed = s.closed || late
	s.mu.Unlock()
	if late {
		s.ConnService_ConnClient.CloseSend()
	}
	return err
}

func (s *sendCloser) Send(c *agentpb.Chunk) error { return s.SendMsg(c) }

func (s *sendCloser) CloseSend() error {
	s.mu.Lock()
	s.closing = true
	now := !s.sending && !s.closed
	s.closed = s.closed || now
	s.mu.Unlock()
	if now {
		return s.ConnService_ConnClient.CloseSend()
	}
	return nil
}

// streamConn releases the stream's context once the reader saw its end.
type streamConn struct {
	*tunnel.StreamConn
	cancel context.CancelFunc
}

func (c *streamConn) Read(p []byte) (int, error) {
	n, err := c.StreamConn.Read(p)
	if err != nil {
		c.cancel()
	}
	return n, err
}

func (c *streamConn) WriteChunksTo(w io.Writer) (int64, error) {
	n, err := c.StreamConn.WriteChunksTo(w)
	c.cancel()
	return n, err
}

// newPacketConn answers a dial the plain konnectivity way: DIAL_RSP with a
// connectID, then DATA on the control stream.
func (sc *serverConn) newPacketConn(random int64) io.ReadWriteCloser {
	sc.mu.Lock()
	sc.lastID++
	id := sc.lastID
	pc := tunnel.NewPacketConn(id, tunnel.DefaultQueueLimit, sc.send, func() {
		sc.mu.Lock()
		delete(sc.conns, id)
		sc.mu.Unlock()
		sc.send(&client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
			CloseResponse: &client.CloseResponse{ConnectID: id}}})
	})
	sc.conns[id] = pc
	sc.mu.Unlock()
	sc.dialResponse(random, id, "")
	return pc
}

func (sc *serverConn) onData(d *client.Data) {
	sc.mu.Lock()
	pc := sc.conns[d.ConnectID]
	sc.mu.Unlock()
	if pc == nil {
		sc.log.V(2).Info("DATA for an unknown connection; dropped", "connectionID", d.ConnectID)
		return
	}
	if !pc.Deliver(d.Data) {
		sc.log.Info("Closing a stalled connection: its target fell more than the queue limit behind, and the single control stream cannot wait for it",
			"connectionID", d.ConnectID, "queueLimitBytes", tunnel.DefaultQueueLimit)
		pc.Abort(errors.New("edge-tunnel-agent: connection stalled"))
	}
}

func (sc *serverConn) onCloseRequest(id int64) {
	sc.mu.Lock()
	pc := sc.conns[id]
	sc.mu.Unlock()
	if pc == nil {
		sc.send(&client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
			CloseResponse: &client.CloseResponse{ConnectID: id, Error: "unknown connection ID"}}})
		return
	}
	pc.RemoteClosed() // the copy to the target ends after the queued data; Close then answers CLOSE_RSP
}

// drain tells the server this agent is going away.
func (sc *serverConn) drain() {
	sc.send(&client.Packet{Type: client.PacketType_DRAIN, Payload: &client.Packet_Drain{Drain: &client.Drain{}}})
}
