package tunnel

import (
	"io"
	"net"
	"syscall"
)

// ReadWaiter is a reader that can wait until a read would return at once,
// without a buffer: an idle connection then blocks holding no memory for
// the bytes that have not come. Wrappers implement it by delegating.
type ReadWaiter interface {
	// WaitReadable returns once bytes, an end of stream or an error are
	// ready to be read. false means it cannot tell; the caller just reads.
	WaitReadable() bool
}

// WaitReadable waits on r if it is a TCP or UNIX socket or a ReadWaiter,
// and reports false at once for anything else.
func WaitReadable(r io.Reader) bool {
	switch t := r.(type) {
	case ReadWaiter:
		return t.WaitReadable()
	case *net.TCPConn:
		return waitSocket(t)
	case *net.UnixConn:
		return waitSocket(t)
	}
	return false
}

// waitSocket waits until c, a TCP or UNIX stream socket, has bytes (or its
// end, or an error) to read, through the runtime's poller. It holds no
// buffer while it waits: it peeks one byte into a stack variable.
func waitSocket(c syscall.Conn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return false
	}
	var ready bool
	err = rc.Read(func(fd uintptr) bool {
		ready = peek(fd)
		return ready
	})
	return err == nil || ready
}
