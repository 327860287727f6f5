package frontend

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	"github.com/edge-tunnel/edge-tunnel/pkg/workers"
)

// Proxy serves the konnectivity ProxyService (/ProxyService/Proxy), the
// frontend of kube-apiserver's egress selector with proxyProtocol: GRPC.
//
// kube-apiserver opens a new gRPC connection and stream per dial, so the
// stream's own HTTP/2 window is the flow control of its connection: DATA
// from the client is written to the backend synchronously, and a slow backend
// slows exactly this stream. A client that multiplexes several connections
// on one stream shares that backpressure among them.
type Proxy struct {
	client.UnimplementedProxyServiceServer
	dialer      Dialer
	dialTimeout time.Duration
	log         klog.Logger

	// MaxPendingDials bounds the dials waiting for an answer on one
	// stream (0: no bound). kube-apiserver has one at a time per stream;
	// a client that sends DIAL_REQs without waiting would otherwise hold
	// a goroutine and an agent's pending slot each. Set it before Register.
	MaxPendingDials int
	// Refused, when set, counts dials refused by MaxPendingDials.
	Refused func()
	// Workers runs the dials, which end once the connection is open and
	// its bytes are pushed on demand; nil starts a goroutine for each. Set
	// it before Register.
	Workers *workers.Pool
}

// NewProxy returns the ProxyService implementation.
func NewProxy(d Dialer, dialTimeout time.Duration, log klog.Logger) *Proxy {
	return &Proxy{dialer: d, dialTimeout: dialTimeout, log: log}
}

// Register adds the service to s.
func (p *Proxy) Register(s *grpc.Server) { client.RegisterProxyServiceServer(s, p) }

// proxyStream is the state of one Proxy stream.
type proxyStream struct {
	p      *Proxy
	stream client.ProxyService_ProxyServer
	ctx    context.Context

	sendMu sync.Mutex

	mu      sync.Mutex
	dials   map[int64]context.CancelFunc // pending dials by random
	conns   map[int64]*feConn            // open connections by connectID
	lastID  int64                        // connectIDs are 1, 2, ... per stream
	wg      sync.WaitGroup
	stopped bool
}

// Proxy handles one client stream until the client ends it. Every dial and
// connection started on the stream is finished before it returns.
func (p *Proxy) Proxy(stream client.ProxyService_ProxyServer) error {
	ps := &proxyStream{p: p, stream: stream, ctx: stream.Context(),
		dials: map[int64]context.CancelFunc{}, conns: map[int64]*feConn{}}
	err := ps.recvLoop()
	ps.stop()
	return err
}

func (ps *proxyStream) send(pkt *client.Packet) error {
	ps.sendMu.Lock()
	defer ps.sendMu.Unlock()
	return ps.stream.Send(pkt)
}

func (ps *proxyStream) recvLoop() error {
	var rp tunnel.RecvPacket
	defer rp.Release()
	for {
		if err := ps.stream.RecvMsg(&rp); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if rp.IsData {
			ps.onData(rp.ConnectID, &rp)
			continue
		}
		pkt := &rp.Packet
		switch pkt.Type {
		case client.PacketType_DIAL_REQ:
			if r := pkt.GetDialRequest(); r != nil {
				ps.onDial(r)
				continue
			}
		case client.PacketType_DATA:
			if d := pkt.GetData(); d != nil {
				ps.onData(d.ConnectID, bytesWriter(d.Data))
				continue
			}
		case client.PacketType_CLOSE_REQ:
			if c := pkt.GetCloseRequest(); c != nil {
				ps.onClose(c.ConnectID)
				continue
			}
		case client.PacketType_DIAL_CLS:
			if c := pkt.GetCloseDial(); c != nil {
				ps.mu.Lock()
				cancel := ps.dials[c.Random]
				ps.mu.Unlock()
				if cancel != nil {
					cancel()
				}
				continue
			}
		default:
			return status.Errorf(codes.InvalidArgument, "edge-tunnel-server: unexpected packet type %s on ProxyService; a client sends DIAL_REQ, DATA, CLOSE_REQ and DIAL_CLS", pkt.Type)
		}
		return status.Errorf(codes.InvalidArgument, "edge-tunnel-server: %s packet without its payload", pkt.Type)
	}
}

func (ps *proxyStream) onDial(r *client.DialRequest) {
	fail := func(msg string) {
		ps.send(dialResponse(r.Random, 0, msg))
	}
	if r.Protocol != "tcp" {
		fail(fmt.Sprintf("edge-tunnel-server: protocol %q is not supported; only \"tcp\" is", r.Protocol))
		return
	}
	ctx, cancel := context.WithTimeout(ps.ctx, ps.p.dialTimeout)
	ps.mu.Lock()
	if _, dup := ps.dials[r.Random]; dup || ps.stopped {
		ps.mu.Unlock()
		cancel()
		fail("edge-tunnel-server: duplicate dial ID on this stream; each DIAL_REQ needs its own random")
		return
	}
	if max := ps.p.MaxPendingDials; max > 0 && len(ps.dials) >= max {
		ps.mu.Unlock()
		cancel()
		if ps.p.Refused != nil {
			ps.p.Refused()
		}
		fail(fmt.Sprintf("edge-tunnel-server: %d dials are already waiting for an answer on this stream (--max-pending-dials-per-stream); wait for their DIAL_RSP, or open another stream", max))
		return
	}
	ps.dials[r.Random] = cancel
	ps.wg.Add(1)
	ps.mu.Unlock()
	ps.p.Workers.Go(func() { ps.dial(ctx, cancel, r) })
}

// dial runs one dial; on success it registers the connection, answers
// DIAL_RSP and then copies the backend to the client until it ends.
func (ps *proxyStream) dial(ctx context.Context, cancel context.CancelFunc, r *client.DialRequest) {
	defer ps.wg.Done()
	conn, err := ps.p.dialer.Dial(ctx, "grpc", r.Address)
	cancelled := ctx.Err() == context.Canceled // DIAL_CLS or the stream ended
	cancel()

	ps.mu.Lock()
	delete(ps.dials, r.Random)
	var id int64
	if err == nil && !cancelled && !ps.stopped {
		ps.lastID++
		id = ps.lastID
		ps.conns[id] = &feConn{ReadWriteCloser: conn}
	}
	ps.mu.Unlock()

	switch {
	case err != nil:
		if !cancelled {
			ps.send(dialResponse(r.Random, 0, err.Error()))
		}
		return
	case id == 0:
		conn.Close() // the client gave up (DIAL_CLS) while the agent dialed
		return
	}
	if err := ps.send(dialResponse(r.Random, id, "")); err != nil {
		ps.finish(id)
		return
	}
	ps.pump(id, conn)
}

// pump copies backend bytes to the client as DATA packets, then sends the
// connection's single CLOSE_RSP. A backend that pushes its bytes (a mux
// connection) does so from goroutines of its own, which run only while
// bytes are there: the dial's goroutine then ends, and an idle tunnel has
// none waiting. Any other backend is copied by a new goroutine, not the
// dial's (a worker whose stack grew while dialing; see package workers).
func (ps *proxyStream) pump(id int64, conn io.ReadWriteCloser) {
	w := &dataWriter{ps: ps, id: id}
	ps.wg.Add(1)
	if p, ok := conn.(tunnel.Pusher); ok {
		if p.PushTo(w, func(_ int64, err error) { defer ps.wg.Done(); ps.pumped(id, err) }) {
			return
		}
	}
	go func() {
		defer ps.wg.Done()
		_, err := tunnel.Copy(w, conn)
		ps.pumped(id, err)
	}()
}

// pumped ends connection id after its backend ended with err.
func (ps *proxyStream) pumped(id int64, err error) {
	ps.mu.Lock()
	byClient := ps.conns[id] != nil && ps.conns[id].byClient
	ps.mu.Unlock()
	if ps.finish(id) {
		// A connection that ended abnormally (the agent went away, or it was
		// closed as stalled) says why, so the client can tell it from a
		// complete response.
		var reason string
		if err != nil && !byClient && !errors.Is(err, tunnel.ErrClosed) {
			reason = err.Error()
		}
		ps.send(&client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
			CloseResponse: &client.CloseResponse{ConnectID: id, Error: reason}}})
	}
}

// finish forgets and closes connection id. It returns false if the stream
// already ended (then there is nobody to send CLOSE_RSP to).
func (ps *proxyStream) finish(id int64) bool {
	ps.mu.Lock()
	conn := ps.conns[id]
	delete(ps.conns, id)
	stopped := ps.stopped
	ps.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	return !stopped
}

// payload is the data of one DATA packet, delivered to a connection.
type payload interface {
	WriteData(io.Writer) error
	Release()
}

func (ps *proxyStream) onData(id int64, data payload) {
	ps.mu.Lock()
	conn := ps.conns[id]
	ps.mu.Unlock()
	if conn == nil {
		// Data racing our CLOSE_RSP is normal; anything else is a client bug.
		data.Release()
		ps.p.log.V(2).Info("DATA for a connection that is not open on this stream; dropped", "connectionID", id)
		return
	}
	if err := data.WriteData(conn.ReadWriteCloser); err != nil {
		conn.Close() // pump sees it, sends CLOSE_RSP
	}
}

// bytesWriter is the payload of a DATA packet decoded the ordinary way.
type bytesWriter []byte

func (b bytesWriter) WriteData(w io.Writer) error {
	_, err := w.Write(b)
	return err
}

func (b bytesWriter) Release() {}

// onClose closes connection id; its pump then sends the one CLOSE_RSP. A
// CLOSE_REQ for an ID this stream never assigned gets an error CLOSE_RSP so
// the client does not wait; one for an ID already closed gets nothing, since
// its CLOSE_RSP was already sent.
func (ps *proxyStream) onClose(id int64) {
	ps.mu.Lock()
	conn := ps.conns[id]
	if conn != nil {
		conn.byClient = true
	}
	known := id > 0 && id <= ps.lastID
	ps.mu.Unlock()
	if conn != nil {
		conn.Close()
		return
	}
	if !known {
		ps.send(&client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
			CloseResponse: &client.CloseResponse{ConnectID: id, Error: "edge-tunnel-server: unknown connection ID on this stream"}}})
	}
}

// stop ends every dial and connection of the stream and waits for them.
func (ps *proxyStream) stop() {
	ps.mu.Lock()
	ps.stopped = true
	for _, cancel := range ps.dials {
		cancel()
	}
	conns := ps.conns
	ps.conns = map[int64]*feConn{}
	ps.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	ps.wg.Wait()
}

// feConn is a connection of the stream; byClient (guarded by the stream's
// mu) records that the client asked for the close, so its end is no error.
type feConn struct {
	io.ReadWriteCloser
	byClient bool
}

func dialResponse(random, connectID int64, errText string) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{
		DialResponse: &client.DialResponse{Random: random, ConnectID: connectID, Error: errText}}}
}

// dataWriter sends each Write as one DATA packet of a connection. Writes come
// from tunnel.Copy, at most ChunkSize each.
type dataWriter struct {
	ps  *proxyStream
	id  int64
	dat client.Data
	pkt client.Packet
}

// WriteBuffers sends bufs (the payload of a Chunk from the agent, still in
// gRPC's receive buffers) as one DATA packet without copying it.
func (w *dataWriter) WriteBuffers(bufs mem.BufferSlice) error {
	msg := tunnel.DataPacket(w.id, bufs, bufs.Len())
	w.ps.sendMu.Lock()
	err := w.ps.stream.SendMsg(msg)
	w.ps.sendMu.Unlock()
	msg.Free()
	return err
}

func (w *dataWriter) Write(p []byte) (int, error) {
	if w.pkt.Payload == nil {
		w.dat.ConnectID = w.id
		w.pkt = client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &w.dat}}
	}
	w.dat.Data = p
	err := w.ps.send(&w.pkt)
	w.dat.Data = nil
	if err != nil {
		return 0, err
	}
	return len(p), nil
}
