package tunnel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"google.golang.org/grpc/mem"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// MuxConn is one tunneled connection of a Mux. It has the zero-copy paths
// of StreamConn (ReadChunksFrom, WriteChunksTo, SendBuffers) and one more,
// PushTo, which hands received bytes on from goroutines started only while
// there are bytes to hand on.
//
// Sending waits for credit: at most MuxWindow bytes are outstanding, and
// the peer grants them back as its reader consumes them. Receiving never
// waits: the Mux queues what arrives for the reader.
type MuxConn struct {
	m  *Mux
	id int64

	mu   sync.Mutex
	cond sync.Cond // on mu: data, credit or an end arrived

	credit int // bytes this side may still send

	queue  mem.BufferSlice // received, not yet handed to the reader
	spare  mem.BufferSlice // an empty slice for the next queue (recycle)
	queued int             // bytes in queue
	held   int             // received and not yet granted back: queued, being written, consumed
	acked  int             // of held, consumed (written or read)

	closed    bool  // Close was called
	sentClose bool  // a close frame went out (or cannot any more)
	peerEnd   error // io.EOF or why the peer (or the stream) ended it; nil while open

	// PushTo: where received bytes go, and how the push ends.
	pushW    io.Writer
	pushDone func(n int64, err error)
	pushing  bool // a push goroutine runs
	pushN    int64

	views net.Buffers // scratch of the one writer of received bytes
}

// ID returns the connection's ID: the random of the dial it answers.
func (c *MuxConn) ID() int64 { return c.id }

// deliver queues the received bytes of data (taking its buffers); called
// by the receive loop only.
func (c *MuxConn) deliver(data *chunkBufs) {
	n := data.left
	c.mu.Lock()
	if c.closed || c.peerEnd != nil {
		c.mu.Unlock()
		data.release()
		return
	}
	if c.held+n > MuxWindow {
		c.mu.Unlock()
		data.release()
		c.m.bad("connection %d: the peer sent %d bytes beyond its window of %d", c.id, c.held+n-MuxWindow, MuxWindow)
		c.closeWith("edge-tunnel: the peer sent more than its flow-control window")
		return
	}
	if c.queue == nil {
		c.queue, c.spare = c.spare, nil
	}
	c.queue = data.detachTo(c.queue)
	c.queued += n
	c.held += n
	c.cond.Broadcast()
	start := c.pushStartLocked()
	c.mu.Unlock()
	if start {
		c.m.opts.Workers.Go(c.push)
	}
}

// recycle keeps the slice of a batch written to w for the next one, so
// that a steady transfer allocates no queue slices. Its buffers were freed
// by the write, unless w took them (a BufferWriter keeps the slice too).
func (c *MuxConn) recycle(w io.Writer, bufs mem.BufferSlice) {
	if _, owned := w.(BufferWriter); owned {
		return
	}
	clear(bufs)
	c.mu.Lock()
	if c.spare == nil {
		c.spare = bufs[:0]
	}
	c.mu.Unlock()
}

// addCredit takes a credit frame; called by the receive loop only.
func (c *MuxConn) addCredit(n int) {
	c.mu.Lock()
	c.credit += n
	c.cond.Broadcast()
	c.mu.Unlock()
}

// peerClose takes the peer's close frame; called by the receive loop only.
func (c *MuxConn) peerClose(reason string) {
	c.mu.Lock()
	if c.peerEnd == nil {
		c.peerEnd = io.EOF
		if reason != "" {
			c.peerEnd = fmt.Errorf("tunnel: the peer closed the connection: %s", reason)
		}
	}
	c.cond.Broadcast()
	forget := c.sentClose
	start := c.pushStartLocked()
	c.mu.Unlock()
	if forget {
		c.m.forget(c)
	}
	if start {
		c.m.opts.Workers.Go(c.push)
	}
}

// streamEnded ends the connection with its Mux (already forgotten).
func (c *MuxConn) streamEnded(err error) {
	c.mu.Lock()
	if c.peerEnd == nil {
		c.peerEnd = err
	}
	c.sentClose = true
	c.cond.Broadcast()
	start := c.pushStartLocked()
	c.mu.Unlock()
	if start {
		c.m.opts.Workers.Go(c.push)
	}
}

// Close ends the connection: queued bytes are dropped, the peer gets a
// close frame. It is idempotent and does not wait for the peer.
func (c *MuxConn) Close() error {
	c.closeWith("")
	return nil
}

func (c *MuxConn) closeWith(reason string) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.queue.Free()
	c.queue, c.queued, c.spare = nil, 0, nil
	send := !c.sentClose
	c.sentClose = true
	forget := c.peerEnd != nil
	c.cond.Broadcast()
	start := c.pushStartLocked()
	c.mu.Unlock()
	if send {
		// A proto string must be UTF-8; a reason may quote an address.
		c.m.sendControl(&agentpb.Frame{Conn: c.id, Close: true, Error: strings.ToValidUTF8(reason, "\uFFFD")})
	}
	if forget {
		c.m.forget(c)
	}
	if start {
		c.m.opts.Workers.Go(c.push) // to report the end: never from Close's own goroutine
	}
}

// endLocked is the error of a read that finds the queue empty, or nil
// while bytes may still come.
func (c *MuxConn) endLocked() error {
	switch {
	case c.closed:
		return ErrClosed
	case c.queued == 0 && c.peerEnd != nil:
		return c.peerEnd
	}
	return nil
}

// take waits for received bytes and hands the whole queue to the caller.
func (c *MuxConn) take() (mem.BufferSlice, int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.queued == 0 && c.endLocked() == nil {
		c.cond.Wait()
	}
	if err := c.endLocked(); err != nil {
		return nil, 0, err
	}
	bufs, n := c.queue, c.queued
	c.queue, c.queued = nil, 0
	return bufs, n, nil
}

// consumed records that n received bytes left the connection and grants
// them back to the peer in batches.
func (c *MuxConn) consumed(n int) {
	c.mu.Lock()
	c.acked += n
	grant := 0
	if c.acked >= creditBatch && !c.sentClose {
		grant = c.acked
		c.held -= grant
		c.acked = 0
	}
	c.mu.Unlock()
	if grant > 0 {
		c.m.sendControl(&agentpb.Frame{Conn: c.id, Credit: uint32(grant)})
	}
}

// Read returns received bytes; io.EOF once the peer closed the connection
// and everything it sent was read.
func (c *MuxConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	for c.queued == 0 && c.endLocked() == nil {
		c.cond.Wait()
	}
	if err := c.endLocked(); err != nil {
		c.mu.Unlock()
		return 0, err
	}
	n := 0
	for n < len(p) && len(c.queue) > 0 {
		b := c.queue[0]
		k := copy(p[n:], b.ReadOnlyData())
		n += k
		if k == b.Len() {
			b.Free()
			c.queue = c.queue[1:]
		} else {
			_, c.queue[0] = mem.SplitUnsafe(b, k)
			b.Free()
		}
	}
	c.queued -= n
	c.mu.Unlock()
	c.consumed(n)
	return n, nil
}

// WriteChunksTo writes received bytes to w until the peer closes the
// connection (not an error): to a BufferWriter as gRPC's buffers
// themselves, to anything else with vectored writes.
func (c *MuxConn) WriteChunksTo(w io.Writer) (int64, error) {
	var total int64
	for {
		bufs, n, err := c.take()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		c.consumed(n)
		k, err := writeBufs(w, bufs, &c.views)
		total += k
		if err != nil {
			return total, err
		}
		c.recycle(w, bufs)
	}
}

// Pusher is a connection that can hand its received bytes to w without a
// goroutine waiting for them: PushTo returns at once, and done runs (once,
// on a goroutine of its own) when the peer closed the connection and
// everything was written, when a write failed, or when the connection was
// closed. false means it cannot; the caller copies as usual.
type Pusher interface {
	PushTo(w io.Writer, done func(n int64, err error)) bool
}

// PushTo implements Pusher: while bytes are queued a goroutine writes them
// to w; while none are, none waits. This is what makes an idle tunneled
// connection cost one goroutine (the one reading its socket) instead of
// two.
func (c *MuxConn) PushTo(w io.Writer, done func(n int64, err error)) bool {
	c.mu.Lock()
	if c.pushW != nil {
		c.mu.Unlock()
		return false
	}
	c.pushW, c.pushDone = w, done
	start := c.pushStartLocked()
	c.mu.Unlock()
	if start {
		c.m.opts.Workers.Go(c.push)
	}
	return true
}

// pushStartLocked reports whether a push goroutine must start (and marks
// it started): there is a push to run, none runs, and there are bytes or
// an end to hand on.
func (c *MuxConn) pushStartLocked() bool {
	if c.pushDone == nil || c.pushing || (c.queued == 0 && c.endLocked() == nil) {
		return false
	}
	c.pushing = true
	return true
}

// push writes the queue to the push writer until it is empty, then ends;
// at the connection's end it reports to done.
func (c *MuxConn) push() {
	for {
		c.mu.Lock()
		if c.queued == 0 || c.closed {
			end := c.endLocked()
			if end == nil {
				c.pushing = false
				c.mu.Unlock()
				return
			}
			c.finishPushLocked(end)
			return
		}
		bufs, n := c.queue, c.queued
		c.queue, c.queued = nil, 0
		w := c.pushW
		c.mu.Unlock()
		c.consumed(n)
		k, err := writeBufs(w, bufs, &c.views)
		c.mu.Lock()
		c.pushN += k
		if err != nil {
			c.finishPushLocked(err)
			return
		}
		c.mu.Unlock()
		c.recycle(w, bufs)
	}
}

// finishPushLocked reports the push's end (end: io.EOF or ErrClosed for a
// normal one) and unlocks.
func (c *MuxConn) finishPushLocked(end error) {
	done, n := c.pushDone, c.pushN
	c.pushDone, c.pushing = nil, false
	c.mu.Unlock()
	if errors.Is(end, io.EOF) || errors.Is(end, ErrClosed) {
		end = nil
	}
	done(n, end)
}

// reserve waits until this side may send and takes up to max bytes of
// credit, which the caller sends or gives back (refund). Taking it under
// the lock keeps writers that share the connection within the window.
func (c *MuxConn) reserve(max int) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for c.credit <= 0 && !c.closed && c.peerEnd == nil {
		c.cond.Wait()
	}
	switch {
	case c.closed:
		return 0, ErrClosed
	case c.peerEnd != nil:
		return 0, io.ErrClosedPipe // no half-close: the connection is over
	}
	n := min(max, c.credit)
	c.credit -= n
	return n, nil
}

// refund gives back reserved credit that was not sent.
func (c *MuxConn) refund(n int) {
	if n > 0 {
		c.addCredit(n)
	}
}

// Write sends p in data frames as credit allows. p is not retained.
func (c *MuxConn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		avail, err := c.reserve(min(len(p)-written, ChunkSize))
		if err != nil {
			return written, err
		}
		k := avail
		bp := GRPCBufferPool.Get(k)
		copy(*bp, p[written:written+k])
		if err := c.m.sendData(c.id, mem.BufferSlice{mem.NewBuffer(bp, GRPCBufferPool)}, k); err != nil {
			return written, err
		}
		written += k
	}
	return written, nil
}

// ReadChunksFrom sends what r yields until r ends (io.EOF is not an
// error), each read in the buffer gRPC then sends (sendReads), as credit
// allows.
func (c *MuxConn) ReadChunksFrom(r io.Reader) (int64, error) {
	return sendReads(r, c, func(payload mem.BufferSlice, n int) error {
		return c.m.sendData(c.id, payload, n)
	})
}

// SendBuffers sends bufs as data frames without copying them, as credit
// allows. It owns bufs from the call on.
func (c *MuxConn) SendBuffers(bufs mem.BufferSlice) error {
	for len(bufs) > 0 {
		avail, err := c.reserve(min(bufs.Len(), maxForward))
		if err != nil {
			bufs.Free()
			return err
		}
		var part mem.BufferSlice
		part, bufs = splitAt(bufs, avail)
		n := part.Len()
		if err := c.m.sendData(c.id, part, n); err != nil {
			bufs.Free()
			return err
		}
	}
	return nil
}

// writeBufs writes bufs (owned, freed) to w: to a BufferWriter as they
// are, to anything else in one vectored write (writev on a net.Conn),
// with views as scratch.
func writeBufs(w io.Writer, bufs mem.BufferSlice, views *net.Buffers) (int64, error) {
	if bw, ok := w.(BufferWriter); ok {
		n := int64(bufs.Len())
		if err := bw.WriteBuffers(bufs); err != nil {
			return 0, err
		}
		return n, nil
	}
	for _, b := range bufs {
		*views = append(*views, b.ReadOnlyData())
	}
	unwritten := *views
	var n int64
	var err error
	if vw, ok := w.(VectorWriter); ok {
		n, err = vw.WriteVectors(&unwritten)
	} else {
		n, err = unwritten.WriteTo(w)
	}
	clear(*views) // drop references into buffers about to be freed
	*views = (*views)[:0]
	bufs.Free()
	return n, err
}
