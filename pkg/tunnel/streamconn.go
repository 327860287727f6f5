package tunnel

import (
	"io"
	"sync"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// ChunkStream is the part of a ConnService stream that StreamConn needs. The
// client side (agent) and the server side (server) of the generated stream
// both satisfy it.
type ChunkStream interface {
	Send(*agentpb.Chunk) error
	RecvMsg(m any) error
}

// StreamConn is one tunneled connection carried by its own gRPC stream. Its
// flow control is the stream's HTTP/2 window: a Write blocks when the peer's
// reader is slow, which stalls this connection and nothing else.
type StreamConn struct {
	s       ChunkStream
	closeFn func()
	once    sync.Once

	// Read side, used by one goroutine at a time. With Codec installed the
	// received payload stays in gRPC's buffers until read.
	rbufs chunkBufs
	// Write side, used by one goroutine at a time; reused so a Write does
	// not allocate a message per chunk (Send marshals synchronously).
	wmsg agentpb.Chunk
}

// NewStreamConn wraps s. closeFn ends the stream: on the agent (client side)
// it half-closes and later cancels the stream context, on the server it lets
// the handler return. It runs once, on the first Close.
func NewStreamConn(s ChunkStream, closeFn func()) *StreamConn {
	return &StreamConn{s: s, closeFn: closeFn}
}

// Read returns bytes of the connection; io.EOF once the peer ended the stream.
func (c *StreamConn) Read(p []byte) (int, error) {
	for c.rbufs.left == 0 {
		if err := c.s.RecvMsg(&c.rbufs); err != nil {
			return 0, err // io.EOF when the peer ended the stream
		}
	}
	return c.rbufs.read(p), nil
}

// Write sends p in chunks of at most ChunkSize. p is not retained.
func (c *StreamConn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		end := min(written+ChunkSize, len(p))
		c.wmsg.Data = p[written:end]
		err := c.s.Send(&c.wmsg)
		c.wmsg.Data = nil
		if err != nil {
			if err == io.EOF {
				// The server returned from its handler: the connection
				// was closed from the other side.
				return written, io.ErrClosedPipe
			}
			return written, err
		}
		written = end
	}
	return written, nil
}

// Close ends the stream. It is idempotent and does not block.
func (c *StreamConn) Close() error {
	c.once.Do(c.closeFn)
	return nil
}
