package tunnel

import (
	"io"
	"net"
	"sync"

	"google.golang.org/grpc/mem"
)

// The zero-copy paths of a tunneled connection. StreamConn implements the
// three below, MuxConn also Pusher (muxconn.go); wrappers that count or
// watch a connection implement them by delegating (see Metered), so the
// fast path survives wrapping.

// ChunkSource is a connection whose received bytes can be written to w
// without an intermediate buffer.
type ChunkSource interface {
	WriteChunksTo(w io.Writer) (int64, error)
}

// ChunkSink is a connection that can send what it reads from r without an
// intermediate copy.
type ChunkSink interface {
	ReadChunksFrom(r io.Reader) (int64, error)
}

// BufferSender is a connection that sends buffers it is given as they are
// (it owns them from the call on).
type BufferSender interface {
	SendBuffers(bufs mem.BufferSlice) error
}

// Meter watches a connection: In and Out see every byte read from and
// written to it, Closed runs on its first Close.
type Meter struct {
	In, Out func(n int64)
	Closed  func()
}

// Metered wraps conn with m, on the zero-copy paths too (if conn has them).
func Metered(conn io.ReadWriteCloser, m Meter) io.ReadWriteCloser {
	return &counted{ReadWriteCloser: conn, in: m.In, out: m.Out, closed: m.Closed}
}

type counted struct {
	io.ReadWriteCloser
	in, out func(int64)
	closed  func()
	once    sync.Once
}

func (c *counted) Go(f func()) bool { return hostGo(c.ReadWriteCloser, f) }

func (c *counted) Close() error {
	c.once.Do(c.closed)
	return c.ReadWriteCloser.Close()
}

func (c *counted) Read(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(p)
	if n > 0 {
		c.in(int64(n))
	}
	return n, err
}

func (c *counted) Write(p []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(p)
	if n > 0 {
		c.out(int64(n))
	}
	return n, err
}

// plain hides every method but Read and Write, so Copy takes its buffered
// path instead of asking the wrapper again.
type plain struct{ io.ReadWriter }

func (c *counted) WriteChunksTo(w io.Writer) (int64, error) {
	s, ok := c.ReadWriteCloser.(ChunkSource)
	if !ok {
		return Copy(w, plain{c})
	}
	return s.WriteChunksTo(countWrites(w, c.in))
}

func (c *counted) ReadChunksFrom(r io.Reader) (int64, error) {
	s, ok := c.ReadWriteCloser.(ChunkSink)
	if !ok {
		return Copy(plain{c}, r)
	}
	return s.ReadChunksFrom(&countReader{r: r, fn: c.out})
}

func (c *counted) PushTo(w io.Writer, done func(n int64, err error)) bool {
	p, ok := c.ReadWriteCloser.(Pusher)
	return ok && p.PushTo(countWrites(w, c.in), done)
}

func (c *counted) SendBuffers(bufs mem.BufferSlice) error {
	n := int64(bufs.Len())
	if s, ok := c.ReadWriteCloser.(BufferSender); ok {
		err := s.SendBuffers(bufs)
		if err == nil {
			c.out(n)
		}
		return err
	}
	defer bufs.Free()
	for _, b := range bufs {
		if _, err := c.Write(b.ReadOnlyData()); err != nil {
			return err
		}
	}
	return nil
}

type countReader struct {
	r  io.Reader
	fn func(int64)
}

func (c *countReader) WaitReadable() bool { return WaitReadable(c.r) }

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.fn(int64(n))
	}
	return n, err
}

// countWrites wraps w so that fn sees each write's size, keeping w's
// BufferWriter or VectorWriter fast path.
func countWrites(w io.Writer, fn func(int64)) io.Writer {
	switch t := w.(type) {
	case BufferWriter:
		return &countBufferWriter{countWriter: countWriter{w: w, fn: fn}, bw: t}
	case VectorWriter:
		return &countVectorWriter{w: t, fn: fn}
	case *net.TCPConn, *net.UnixConn:
		return &countVectorWriter{w: netVectors{w}, fn: fn}
	}
	return &countWriter{w: w, fn: fn}
}

type countWriter struct {
	w  io.Writer
	fn func(int64)
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.fn(int64(n))
	return n, err
}

type countBufferWriter struct {
	countWriter
	bw BufferWriter
}

func (c *countBufferWriter) WriteBuffers(bufs mem.BufferSlice) error {
	n := int64(bufs.Len())
	err := c.bw.WriteBuffers(bufs)
	if err == nil {
		c.fn(n)
	}
	return err
}

type countVectorWriter struct {
	w  VectorWriter
	fn func(int64)
}

func (c *countVectorWriter) Write(p []byte) (int, error) {
	v := net.Buffers{p}
	n, err := c.w.WriteVectors(&v)
	c.fn(n)
	return int(n), err
}

func (c *countVectorWriter) WriteVectors(v *net.Buffers) (int64, error) {
	n, err := c.w.WriteVectors(v)
	c.fn(n)
	return n, err
}

// netVectors gives a net package connection (which net.Buffers writes with
// writev) the VectorWriter method.
type netVectors struct{ w io.Writer }

func (n netVectors) WriteVectors(v *net.Buffers) (int64, error) { return v.WriteTo(n.w) }
