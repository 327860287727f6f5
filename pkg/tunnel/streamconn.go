package tunnel

import (
	"context"
	"io"
	"net"
	"sync"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// ChunkStream is the part of a ConnService stream that StreamConn needs. The
// client side (agent) and the server side (server) of the generated stream
// both satisfy it. Messages go through SendMsg so that a WireMessage reaches
// Codec unchanged.
type ChunkStream interface {
	SendMsg(m any) error
	RecvMsg(m any) error
}

// StreamConn is one tunneled connection carried by its own gRPC stream. Its
// flow control is the stream's HTTP/2 window: a Write blocks when the peer's
// reader is slow, which stalls this connection and nothing else.
//
// Besides Read and Write it moves bytes without intermediate copies:
// ReadChunksFrom sends what it reads in the buffer it read into, and
// WriteChunksTo writes gRPC's receive buffers themselves. Copy uses them.
type StreamConn struct {
	s       ChunkStream
	closeFn func()
	once    sync.Once
	closed  chan struct{} // closed by Close

	// A hosted connection runs work on its stream's goroutine (Serve).
	hostMu   sync.Mutex
	tasks    chan func() // nil unless hosted
	hostGone bool

	// Read side, used by one goroutine at a time. With Codec installed the
	// received payload stays in gRPC's buffers until read.
	rbufs chunkBufs
	// Scratch of WriteChunksTo: views of the current payload, and what a
	// vectored write has not consumed yet (fields, so no write allocates).
	views, unwritten net.Buffers
	// Write side, used by one goroutine at a time; reused so a Write does
	// not allocate a message per chunk (Send marshals synchronously).
	wmsg agentpb.Chunk
}

// NewStreamConn wraps s. closeFn ends the stream: on the agent (client side)
// it half-closes and later cancels the stream context, on the server it lets
// the handler return. It runs once, on the first Close.
func NewStreamConn(s ChunkStream, closeFn func()) *StreamConn {
	return &StreamConn{s: s, closeFn: closeFn, closed: make(chan struct{})}
}

// NewHostedStreamConn is NewStreamConn for a stream whose goroutine would
// otherwise only wait for the end (a gRPC server handler): its owner calls
// Serve, and Go hands that goroutine work. An idle tunneled connection
// then costs one goroutine stack less.
//
// The work must not read from this stream: a server stream ends only when
// its handler returns, so a Read blocked on the handler's own goroutine
// would outlive Close. Copying towards the stream is the work to hand.
func NewHostedStreamConn(s ChunkStream, closeFn func()) *StreamConn {
	c := NewStreamConn(s, closeFn)
	c.tasks = make(chan func(), 1)
	return c
}

// Serve runs the work Go hands it on the calling goroutine until the
// connection is closed, or until ctx ends, which closes it.
func (c *StreamConn) Serve(ctx context.Context) {
	for {
		select {
		case f := <-c.tasks:
			f()
			continue
		case <-c.closed:
		case <-ctx.Done():
			c.Close()
		}
		break
	}
	c.hostMu.Lock()
	c.hostGone = true
	c.hostMu.Unlock()
	select {
	case f := <-c.tasks: // handed over just before the end
		f()
	default:
	}
}

// Go runs f on the goroutine in Serve and reports whether it will; false
// means the caller must run f itself.
func (c *StreamConn) Go(f func()) bool {
	c.hostMu.Lock()
	defer c.hostMu.Unlock()
	if c.tasks == nil || c.hostGone {
		return false
	}
	select {
	case c.tasks <- f:
		return true
	default:
		return false
	}
}

// Read returns bytes of the connection; io.EOF once the peer ended the stream.
func (c *StreamConn) Read(p []byte) (int, error) {
	if err := c.fill(); err != nil {
		return 0, err
	}
	return c.rbufs.read(p), nil
}

// fill receives the next non-empty Chunk unless payload is still unread.
func (c *StreamConn) fill() error {
	for c.rbufs.left == 0 {
		if err := c.s.RecvMsg(&c.rbufs); err != nil {
			return err // io.EOF when the peer ended the stream
		}
	}
	return nil
}

// Write sends p in chunks of at most ChunkSize. p is not retained.
func (c *StreamConn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		end := min(written+ChunkSize, len(p))
		c.wmsg.Data = p[written:end]
		err := c.s.SendMsg(&c.wmsg)
		c.wmsg.Data = nil
		if err != nil {
			return written, sendErr(err)
		}
		written = end
	}
	return written, nil
}

// sendErr maps the io.EOF of a send on a stream the peer already ended
// (the server returned from its handler) to a closed-pipe error.
func sendErr(err error) error {
	if err == io.EOF {
		return io.ErrClosedPipe
	}
	return err
}

// BufferWriter is a destination that takes payload buffers as they are, so
// they go on without a copy (a frontend that wraps them in DATA packets).
// WriteBuffers owns bufs from the call on and frees them, also on error.
type BufferWriter interface {
	WriteBuffers(bufs mem.BufferSlice) error
}

// VectorWriter is a destination that writes several slices in one call,
// for wrappers of a net.Conn that hide its writev (net.Buffers.WriteTo
// uses writev only on the net package's own connection types).
type VectorWriter interface {
	WriteVectors(v *net.Buffers) (int64, error)
}

// WriteChunksTo writes the connection's bytes to w until the peer ends the
// stream (which is not an error). Each received Chunk goes to w straight
// from gRPC's receive buffers: to a BufferWriter as the buffers themselves,
// to anything else in one vectored write (writev on a net.Conn).
func (c *StreamConn) WriteChunksTo(w io.Writer) (int64, error) {
	bw, _ := w.(BufferWriter)
	var total int64
	for {
		if err := c.fill(); err != nil {
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
		if bw != nil {
			n := c.rbufs.left
			if err := bw.WriteBuffers(c.rbufs.detach()); err != nil {
				return total, err
			}
			total += int64(n)
			continue
		}
		c.views = c.rbufs.appendViews(c.views[:0])
		c.unwritten = c.views
		var n int64
		var err error
		if vw, ok := w.(VectorWriter); ok {
			n, err = vw.WriteVectors(&c.unwritten)
		} else {
			n, err = c.unwritten.WriteTo(w)
		}
		clear(c.views) // drop references into buffers about to be freed
		c.unwritten = nil
		c.rbufs.release()
		total += n
		if err != nil {
			return total, err
		}
	}
}

// ReadChunksFrom sends what r yields until r ends (io.EOF is not an error),
// each read in the buffer gRPC then sends (sendReads).
func (c *StreamConn) ReadChunksFrom(r io.Reader) (int64, error) {
	return sendReads(r, nil, c.sendPayload)
}

// maxForward bounds one Chunk that SendBuffers passes on. A client's DATA
// packet goes on whole up to this size (cutting a 256 KiB write at
// ChunkSize would leave a few bytes for a message of their own); larger
// ones are cut, well below gRPC's default 4 MiB receive limit.
const maxForward = 4 * ChunkSize

// SendBuffers sends bufs as Chunks of at most maxForward bytes without
// copying them. It owns bufs from the call on.
func (c *StreamConn) SendBuffers(bufs mem.BufferSlice) error {
	for len(bufs) > 0 {
		var part mem.BufferSlice
		part, bufs = splitAt(bufs, maxForward)
		if err := c.sendPayload(part, part.Len()); err != nil {
			bufs.Free()
			return err
		}
	}
	return nil
}

// sendPayload sends payload (n bytes, owned) as one Chunk.
func (c *StreamConn) sendPayload(payload mem.BufferSlice, n int) error {
	msg := newWireMessage(func(b []byte) []byte {
		return protowire.AppendVarint(append(b, chunkTag), uint64(n))
	}, payload)
	err := c.s.SendMsg(msg)
	msg.Free()
	return sendErr(err)
}

// splitAt returns the first n bytes of s and the rest, splitting a buffer
// when n falls inside it. Ownership of every buffer moves to the results.
func splitAt(s mem.BufferSlice, n int) (head, rest mem.BufferSlice) {
	for i, b := range s {
		l := b.Len()
		if n >= l {
			n -= l
			if n == 0 {
				return s[:i+1], s[i+1:]
			}
			continue
		}
		left, right := mem.SplitUnsafe(b, n)
		head = append(s[:i:i], left)
		rest = append(mem.BufferSlice{right}, s[i+1:]...)
		return head, rest
	}
	return s, nil
}

// Close ends the stream. It is idempotent and does not block.
func (c *StreamConn) Close() error {
	c.once.Do(func() {
		close(c.closed)
		c.closeFn()
	})
	return nil
}
