package server

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"k8s.io/klog/v2"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// session is one agent's control stream (AgentService.Connect) on this
// server. It sends DIAL_REQs, matches the answers to the waiting dials, and,
// for agents without the conn-streams extension, demultiplexes DATA of the
// connections that share the control stream.
type session struct {
	id          string
	hostKeys    []string
	peerAddr    string
	connStreams bool
	stream      agentpb.AgentService_ConnectServer
	log         klog.Logger
	m           *metrics.Server
	// maxPending bounds pending (0: no bound), so that clients cannot pile
	// up dials at one agent faster than it answers them.
	maxPending int

	sendMu   sync.Mutex
	draining atomic.Bool

	mu      sync.Mutex
	closed  bool
	pending map[int64]*pendingDial       // by DIAL_REQ random
	conns   map[int64]*tunnel.PacketConn // single-stream connections by the agent's connectID
}

type pendingDial struct {
	address string
	result  chan dialResult // buffered: the resolver never blocks
}

type dialResult struct {
	conn io.ReadWriteCloser
	err  error
}

// AgentID implements router.Backend.
func (s *session) AgentID() string { return s.id }

// send writes one packet to the agent; the control stream allows one sender
// at a time.
func (s *session) send(p *client.Packet) error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(p)
}

// Dial asks the agent to dial address and waits for its answer: a
// per-connection stream (conn-streams), a DIAL_RSP with a connectID (single
// stream), or a DIAL_RSP with an error. If ctx ends first, the agent is told
// with DIAL_CLS, and a connection that still arrives is closed, not leaked.
func (s *session) Dial(ctx context.Context, address string) (io.ReadWriteCloser, error) {
	pd := &pendingDial{address: address, result: make(chan dialResult, 1)}
	random, err := s.addPending(pd)
	if err != nil {
		return nil, err
	}
	req := &client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: "tcp", Address: address, Random: random}}}
	if err := s.send(req); err != nil {
		if s.take(random) != nil {
			return nil, tunnel.Errorf(tunnel.KindUnavailable, "edge-tunnel-server: the connection to edge-tunnel-agent %s broke while dialing %s: %v", s.id, address, err)
		}
	}
	select {
	case r := <-pd.result:
		return r.conn, r.err
	case <-ctx.Done():
	}
	if s.take(random) != nil {
		// The agent may still be dialing: tell it to give up and to close
		// whatever it opens. Sent asynchronously so a slow control stream
		// cannot hold the caller past its deadline.
		go s.send(&client.Packet{Type: client.PacketType_DIAL_CLS, Payload: &client.Packet_CloseDial{
			CloseDial: &client.CloseDial{Random: random}}})
	} else if r := <-pd.result; r.conn != nil {
		r.conn.Close() // resolved while we gave up
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-server: edge-tunnel-agent %s did not complete the dial of %s in time; the target may be unreachable from that node", s.id, address)
	}
	return nil, tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-server: dial of %s through edge-tunnel-agent %s was cancelled", address, s.id)
}

// addPending registers pd under a fresh random dial ID.
func (s *session) addPending(pd *pendingDial) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, tunnel.Errorf(tunnel.KindUnavailable, "edge-tunnel-server: edge-tunnel-agent %s disconnected", s.id)
	}
	if s.maxPending > 0 && len(s.pending) >= s.maxPending {
		s.m.Refusals.WithLabelValues(metrics.RefusedAgentPendingDials).Inc()
		return 0, tunnel.Errorf(tunnel.KindUnavailable,
			"edge-tunnel-server: %d dials are already waiting for edge-tunnel-agent %s to answer (--max-pending-dials-per-agent); retry later, and check why that node answers slowly",
			s.maxPending, s.id)
	}
	for {
		random := newDialID()
		if _, dup := s.pending[random]; !dup {
			s.pending[random] = pd
			return random, nil
		}
	}
}

// take removes and returns the pending dial, or nil if it was already
// resolved or given up. Whoever takes it owns its outcome.
func (s *session) take(random int64) *pendingDial {
	s.mu.Lock()
	defer s.mu.Unlock()
	pd := s.pending[random]
	delete(s.pending, random)
	return pd
}

// resolve hands a dial's outcome to its waiter. It returns false when nobody
// waits any more; the caller then closes r.conn.
func (s *session) resolve(random int64, r dialResult) bool {
	pd := s.take(random)
	if pd == nil {
		return false
	}
	pd.result <- r
	return true
}

// serve reads the control stream until it ends, then fails everything that
// still depends on it.
func (s *session) serve() error {
	defer s.shutdown()
	for {
		pkt, err := s.stream.Recv()
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		s.handle(pkt)
	}
}

func (s *session) handle(pkt *client.Packet) {
	switch pkt.Type {
	case client.PacketType_DIAL_RSP:
		if rsp := pkt.GetDialResponse(); rsp != nil {
			s.onDialResponse(rsp)
			return
		}
	case client.PacketType_DATA:
		if d := pkt.GetData(); d != nil {
			s.onData(d)
			return
		}
	case client.PacketType_CLOSE_RSP:
		if c := pkt.GetCloseResponse(); c != nil {
			if conn := s.forget(c.ConnectID); conn != nil {
				conn.RemoteClosed()
			}
			return
		}
	case client.PacketType_DIAL_CLS:
		if c := pkt.GetCloseDial(); c != nil {
			s.resolve(c.Random, dialResult{err: tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-server: edge-tunnel-agent %s closed the dial", s.id)})
			return
		}
	case client.PacketType_DRAIN:
		if !s.draining.Swap(true) {
			s.log.Info("Agent is draining; new dials prefer other agents")
		}
		return
	}
	s.badPacket(pkt, "unexpected packet type or missing payload")
}

func (s *session) badPacket(pkt *client.Packet, reason string) {
	s.m.BadPackets.WithLabelValues("agent", pkt.Type.String()).Inc()
	s.log.Info("Ignoring bad packet from agent", "type", pkt.Type.String(), "reason", reason)
}

func (s *session) onDialResponse(rsp *client.DialResponse) {
	if rsp.Error != "" {
		err := tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-agent %s could not dial: %s", s.id, rsp.Error)
		if !s.resolve(rsp.Random, dialResult{err: err}) {
			s.log.V(2).Info("Late dial error for a dial nobody waits for", "dialID", rsp.Random, "error", rsp.Error)
		}
		return
	}
	// A successful DIAL_RSP is the single-stream protocol: the connection's
	// DATA will share the control stream under rsp.ConnectID.
	id := rsp.ConnectID
	if id == 0 {
		s.m.BadPackets.WithLabelValues("agent", "DIAL_RSP").Inc()
		s.log.Info("DIAL_RSP without error and without connectID; failing the dial", "dialID", rsp.Random)
		s.resolve(rsp.Random, dialResult{err: tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-agent %s answered the dial without a connection ID", s.id)})
		return
	}
	conn := tunnel.NewPacketConn(id, tunnel.DefaultQueueLimit, s.send, func() { s.closeLocal(id) })
	s.mu.Lock()
	old := s.conns[id]
	if !s.closed && old == nil {
		s.conns[id] = conn
	}
	closed := s.closed
	s.mu.Unlock()
	if old != nil || closed {
		s.m.BadPackets.WithLabelValues("agent", "DIAL_RSP").Inc()
		s.log.Info("DIAL_RSP reuses a connectID that is still open; failing the new dial", "connectionID", id)
		s.resolve(rsp.Random, dialResult{err: tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-agent %s reused connection ID %d", s.id, id)})
		return
	}
	if !s.resolve(rsp.Random, dialResult{conn: conn}) {
		conn.Close() // the dial was given up: close the agent's side
	}
}

// closeLocal runs on the first local Close of a single-stream connection. The
// connection stays registered until the agent's CLOSE_RSP, so DATA still in
// flight is recognized and dropped quietly.
func (s *session) closeLocal(id int64) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return
	}
	s.send(&client.Packet{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{
		CloseRequest: &client.CloseRequest{ConnectID: id}}})
}

func (s *session) forget(id int64) *tunnel.PacketConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	conn := s.conns[id]
	delete(s.conns, id)
	return conn
}

func (s *session) onData(d *client.Data) {
	s.mu.Lock()
	conn := s.conns[d.ConnectID]
	s.mu.Unlock()
	if conn == nil {
		s.m.BadPackets.WithLabelValues("agent", "DATA").Inc()
		s.log.V(2).Info("DATA for an unknown connection; asking the agent to close it", "connectionID", d.ConnectID)
		s.send(&client.Packet{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{
			CloseRequest: &client.CloseRequest{ConnectID: d.ConnectID}}})
		return
	}
	if !conn.Deliver(d.Data) {
		// The reader of this connection is far behind. Waiting for it would
		// stall every other connection on this agent's stream, so it goes.
		s.m.StalledCloses.Inc()
		s.log.Info("Closing a stalled connection: its reader fell more than the queue limit behind, and the agent's single stream cannot wait for it",
			"connectionID", d.ConnectID, "queueLimitBytes", tunnel.DefaultQueueLimit)
		conn.Abort(fmt.Errorf("edge-tunnel-server: connection %d through agent %s closed: its reader stalled (more than %d bytes unread) and the agent has no per-connection flow control", d.ConnectID, s.id, tunnel.DefaultQueueLimit))
	}
}

// shutdown fails the pending dials and the single-stream connections once
// the control stream is gone.
func (s *session) shutdown() {
	s.mu.Lock()
	s.closed = true
	pending, conns := s.pending, s.conns
	s.pending, s.conns = map[int64]*pendingDial{}, map[int64]*tunnel.PacketConn{}
	s.mu.Unlock()
	gone := tunnel.Errorf(tunnel.KindUnavailable, "edge-tunnel-server: edge-tunnel-agent %s disconnected", s.id)
	for _, pd := range pending {
		pd.result <- dialResult{err: gone}
	}
	for _, c := range conns {
		c.Abort(gone)
	}
}

// newDialID returns a random positive int64. Dial IDs are unguessable so a
// per-connection stream cannot claim a dial it was not asked for.
func newDialID() int64 {
	var b [8]byte
	for {
		rand.Read(b[:]) // never fails since Go 1.24
		if id := int64(binary.BigEndian.Uint64(b[:]) >> 1); id != 0 {
			return id
		}
	}
}
