package tunnel

import (
	"fmt"
	"io"
	"sync"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// DefaultQueueLimit is how many unread bytes a PacketConn holds before the
// connection counts as stalled. Without per-connection flow control the peer
// sends as fast as it can, so even a healthy reader that is slower than the
// target falls behind by a good part of a transfer: the limit must absorb
// that for ordinary responses (logs, metrics, exec output), while bounding
// what a reader that stopped can pin in memory.
const DefaultQueueLimit = 16 << 20

// PacketConn is one tunneled connection multiplexed with others on a shared
// packet stream: the plain konnectivity protocol, spoken with upstream agents
// and servers. The shared stream has no flow control per connection, so
// incoming DATA is queued here without ever blocking the stream's reader; a
// connection whose reader falls more than the queue limit behind is closed
// (Deliver says so) instead of being allowed to stall every other connection.
type PacketConn struct {
	id    int64
	send  func(*client.Packet) error
	limit int

	mu      sync.Mutex
	cond    sync.Cond
	queue   [][]byte // DATA payloads not yet read, oldest first
	queued  int      // bytes in queue
	eof     bool     // the peer closed: Read returns io.EOF once drained
	err     error    // local close or abort: Read returns it at once
	onClose func()
	closed  bool

	wmsg client.Packet
	wdat client.Data
}

// NewPacketConn makes the connection with the given connectID. send writes a
// packet to the shared stream and must be safe for concurrent use. onClose
// runs once, on the first local Close, and sends the closing packet of the
// caller's role (CLOSE_REQ from the dialing side, CLOSE_RSP from the dialed
// side) and forgets the connection.
func NewPacketConn(id int64, limit int, send func(*client.Packet) error, onClose func()) *PacketConn {
	c := &PacketConn{id: id, limit: limit, send: send, onClose: onClose}
	c.cond.L = &c.mu
	c.wmsg.Type = client.PacketType_DATA
	c.wmsg.Payload = &client.Packet_Data{Data: &c.wdat}
	c.wdat.ConnectID = id
	return c
}

// ID is the connectID.
func (c *PacketConn) ID() int64 { return c.id }

// Deliver queues a DATA payload from the shared stream. It never blocks. It
// returns false, and queues nothing, when the connection is over its limit:
// the caller then aborts the connection with Abort.
func (c *PacketConn) Deliver(data []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil || c.eof {
		return true // already ending; the data has nowhere to go
	}
	if c.queued+len(data) > c.limit {
		return false
	}
	c.queue = append(c.queue, data)
	c.queued += len(data)
	c.cond.Signal()
	return true
}

// RemoteClosed records that the peer closed the connection; Read returns
// io.EOF after the queued data.
func (c *PacketConn) RemoteClosed() {
	c.mu.Lock()
	c.eof = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

// Abort fails the connection with err (Read returns it at once, queued data
// is dropped) and closes it.
func (c *PacketConn) Abort(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.queue, c.queued = nil, 0
	c.cond.Broadcast()
	c.mu.Unlock()
	c.Close()
}

// Read returns queued bytes, blocking until there are some.
func (c *PacketConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.queue) == 0 {
		if c.err != nil {
			return 0, c.err
		}
		if c.eof {
			return 0, io.EOF
		}
		c.cond.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	head := c.queue[0]
	n := copy(p, head)
	if n == len(head) {
		c.queue[0] = nil
		c.queue = c.queue[1:]
	} else {
		c.queue[0] = head[n:]
	}
	c.queued -= n
	return n, nil
}

// Write sends p as DATA packets of at most ChunkSize. p is not retained.
func (c *PacketConn) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		if err != nil {
			return written, err
		}
		end := min(written+ChunkSize, len(p))
		c.wdat.Data = p[written:end]
		err = c.send(&c.wmsg)
		c.wdat.Data = nil
		if err != nil {
			return written, fmt.Errorf("send DATA for connection %d: %w", c.id, err)
		}
		written = end
	}
	return written, nil
}

// Close closes the connection locally: pending and later Reads and Writes
// fail, and onClose runs once.
func (c *PacketConn) Close() error {
	c.mu.Lock()
	if c.err == nil {
		c.err = ErrClosed
	}
	c.queue, c.queued = nil, 0
	c.cond.Broadcast()
	first := !c.closed
	c.closed = true
	c.mu.Unlock()
	if first && c.onClose != nil {
		c.onClose()
	}
	return nil
}
