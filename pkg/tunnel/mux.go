package tunnel

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/edge-tunnel/edge-tunnel/pkg/workers"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// MuxWindow is how many bytes of one connection a Mux sender may have
// outstanding: sent, and not yet granted back by the receiver. It is the
// connection's share of the pipe while it moves data (like a per-stream
// HTTP/2 window). The receiver grants bytes back when its writer takes
// them from the queue, not when the write returns (as HTTP/2 returns a
// window when the application reads a message, not when it is done with
// it): the pipe then stays full while the writer writes, and a stalled
// reader holds at most two windows, the queue and the write that blocks.
const MuxWindow = 1 << 20

// creditBatch is how much a reader takes before granting it back: a bulk
// transfer costs one credit frame per creditBatch bytes, and a sender
// whose reader keeps up never has less than MuxWindow-creditBatch to send.
const creditBatch = MuxWindow / 4

// Mux carries many tunneled connections on one Frame stream (a MuxService
// stream, agentpb.Frame messages), the way yamux carries streams on one
// TCP connection: every connection has a window of its own, so a
// connection whose reader stalls fills its window and stops, and the
// others go on. Compared with a gRPC stream per connection (StreamConn) an
// idle connection costs no HTTP/2 stream, no gRPC stream state and, with
// PushTo, no goroutine waiting for the peer's bytes.
//
// Invariants:
//   - Serve's receive loop never blocks on a connection: received data is
//     queued (at most MuxWindow per connection, more is a protocol error
//     that closes that connection) and handed on by the connection's
//     reader or push goroutine.
//   - Every connection sends exactly one close frame, and is forgotten
//     once it has both sent one and received one (or the stream ended).
type Mux struct {
	s    ChunkStream
	opts MuxOptions

	sendMu sync.Mutex // gRPC allows one SendMsg at a time per stream

	mu    sync.Mutex
	conns map[int64]*MuxConn
	ended error // why Serve returned; nil while it runs
}

// MuxOptions configures a Mux.
type MuxOptions struct {
	// OnOpen, on the side that accepts connections (the server), is called
	// from the receive loop for each open frame with the new connection. A
	// non-nil error refuses it: the connection is closed with that reason.
	// It must not block. Without OnOpen an open frame is a protocol error.
	OnOpen func(c *MuxConn) error
	// OnBadFrame hears of frames that break the protocol. The frame is
	// dropped (and its connection closed, where it has one); the stream
	// and the other connections go on.
	OnBadFrame func(err error)
	// Workers runs the goroutines that hand received bytes on
	// (MuxConn.PushTo), which end once the bytes are written; nil starts a
	// goroutine for each.
	Workers *workers.Pool
}

// NewMux returns a Mux on s. Call Serve to receive.
func NewMux(s ChunkStream, opts MuxOptions) *Mux {
	return &Mux{s: s, opts: opts, conns: map[int64]*MuxConn{}}
}

// ErrMuxEnded is the error of connections whose Mux stream ended.
var ErrMuxEnded = errors.New("tunnel: the connection's mux stream ended")

// Serve receives frames until the stream ends, then ends every connection
// still open and returns the stream's error (nil for a clean end).
func (m *Mux) Serve() error {
	var f muxFrame
	for {
		if err := m.s.RecvMsg(&f); err != nil {
			f.data.release()
			if err == io.EOF {
				err = nil
			}
			m.end(err)
			return err
		}
		m.handle(&f)
	}
}

func (m *Mux) end(err error) {
	m.mu.Lock()
	m.ended = ErrMuxEnded
	if err != nil {
		m.ended = fmt.Errorf("%w: %v", ErrMuxEnded, err)
	}
	conns := m.conns
	m.conns = map[int64]*MuxConn{}
	m.mu.Unlock()
	for _, c := range conns {
		c.streamEnded(m.ended)
	}
}

// Len returns the number of connections the Mux holds.
func (m *Mux) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

func (m *Mux) bad(format string, args ...any) {
	if m.opts.OnBadFrame != nil {
		m.opts.OnBadFrame(fmt.Errorf(format, args...))
	}
}

func (m *Mux) handle(f *muxFrame) {
	m.mu.Lock()
	c := m.conns[f.conn]
	m.mu.Unlock()
	if f.open {
		if m.opts.OnOpen == nil || c != nil {
			f.data.release()
			m.bad("unexpected open frame for connection %d", f.conn)
			// Refuse it, so the peer does not wait on a connection that
			// will never work; an open connection of that ID is closed.
			if c != nil {
				c.closeWith("edge-tunnel: a second open frame for this connection")
			} else {
				m.sendControl(&agentpb.Frame{Conn: f.conn, Close: true, Error: "edge-tunnel: this side does not accept connections"})
			}
			return
		}
		var err error
		if c, err = m.add(f.conn); err != nil {
			f.data.release()
			return
		}
		if err := m.opts.OnOpen(c); err != nil {
			c.closeWith(err.Error())
		}
	}
	if c == nil {
		// A connection this side forgot: frames the peer sent before it
		// saw this side's close. Nothing to do.
		f.data.release()
		return
	}
	if f.credit > 0 {
		c.addCredit(int(f.credit))
	}
	if f.data.left > 0 {
		c.deliver(&f.data)
	}
	f.data.release()
	if f.close {
		c.peerClose(f.errText)
	}
}

// add registers a new connection id.
func (m *Mux) add(id int64) (*MuxConn, error) {
	c := &MuxConn{m: m, id: id, credit: MuxWindow}
	c.cond.L = &c.mu
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.ended != nil:
		return nil, m.ended
	case m.conns[id] != nil:
		return nil, fmt.Errorf("tunnel: connection %d is already open on this mux stream", id)
	}
	m.conns[id] = c
	return c, nil
}

func (m *Mux) forget(c *MuxConn) {
	m.mu.Lock()
	if m.conns[c.id] == c {
		delete(m.conns, c.id)
	}
	m.mu.Unlock()
}

// Open starts connection id (the dial it answers) with an open frame.
func (m *Mux) Open(id int64) (*MuxConn, error) {
	c, err := m.add(id)
	if err != nil {
		return nil, err
	}
	if err := m.sendControl(&agentpb.Frame{Conn: id, Open: true}); err != nil {
		m.forget(c)
		return nil, fmt.Errorf("tunnel: sending the open frame: %w", err)
	}
	return c, nil
}

func (m *Mux) sendControl(f *agentpb.Frame) error {
	m.sendMu.Lock()
	defer m.sendMu.Unlock()
	return sendErr(m.s.SendMsg(f))
}

// sendData sends payload (n bytes, owned) as a data frame of id.
func (m *Mux) sendData(id int64, payload mem.BufferSlice, n int) error {
	msg := newWireMessage(func(b []byte) []byte {
		b = protowire.AppendVarint(append(b, frameConnTag), uint64(id))
		return protowire.AppendVarint(append(b, frameDataTag), uint64(n))
	}, payload)
	m.sendMu.Lock()
	err := m.s.SendMsg(msg)
	m.sendMu.Unlock()
	msg.Free()
	return sendErr(err)
}

var (
	frameConnTag = byte(protowire.EncodeTag(1, protowire.VarintType))
	frameDataTag = byte(protowire.EncodeTag(6, protowire.BytesType))
)

// muxFrame is a received Frame whose data stays in gRPC's buffers.
type muxFrame struct {
	conn        int64
	open, close bool
	credit      uint32
	errText     string
	data        chunkBufs
}

// take parses data frames (conn and data only, the bulk of the traffic)
// in place; any other frame is decoded the ordinary way.
func (f *muxFrame) take(data mem.BufferSlice) error {
	f.data.release()
	*f = muxFrame{}
	total := data.Len()
	var hdr [2 + 2*binaryMaxVarintLen]byte
	n := 0
	for _, b := range data {
		n += copy(hdr[n:], b.ReadOnlyData())
		if n == len(hdr) {
			break
		}
	}
	if n > 0 && hdr[0] == frameConnTag {
		id, k := protowire.ConsumeVarint(hdr[1:n])
		if i := 1 + k; k > 0 && i < n && hdr[i] == frameDataTag {
			l, k2 := protowire.ConsumeVarint(hdr[i+1 : n])
			if skip := i + 1 + k2; k2 > 0 && skip+int(l) == total {
				data.Ref()
				f.conn = int64(id)
				f.data = chunkBufs{bufs: data, left: int(l)}
				f.data.skip(skip)
				return nil
			}
		}
	}
	var pf agentpb.Frame
	buf := data.MaterializeToBuffer(GRPCBufferPool)
	defer buf.Free()
	if err := proto.Unmarshal(buf.ReadOnlyData(), &pf); err != nil {
		return fmt.Errorf("edge-tunnel codec: bad Frame: %w", err)
	}
	f.conn, f.open, f.close, f.credit, f.errText = pf.Conn, pf.Open, pf.Close, pf.Credit, pf.Error
	if len(pf.Data) > 0 {
		f.data = chunkBufs{bufs: mem.BufferSlice{mem.SliceBuffer(pf.Data)}, left: len(pf.Data)}
	}
	return nil
}
