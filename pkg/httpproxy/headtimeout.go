package httpproxy

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
)

// net/http enforces ReadHeaderTimeout by setting a read deadline and, when a
// read hits it, closes the connection without an answer and without telling
// anyone. To count those refusals, the listener's connections are wrapped
// below TLS, where a read failing on its deadline is visible, and the
// server's ConnState hook says whether the connection was waiting for a
// request head at that moment:
//
//   - StateNew: the TLS handshake and the first request head, both bounded
//     by ReadHeaderTimeout (net/http takes the handshake timeout from it);
//   - StateIdle with part of the next head received: a kept-alive connection
//     that started a request and stalled. One that sends nothing is closed
//     by IdleTimeout, which is housekeeping, not a refusal.
//
// Once a handler runs (StateActive) net/http's own deadlines abort its
// background reads, and a hijacked connection's deadlines are the proxy's;
// neither counts.

// headWatchListener wraps each accepted connection in a headWatchConn.
type headWatchListener struct {
	net.Listener
	refused func(reason string)
}

func (l headWatchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &headWatchConn{Conn: c, refused: l.refused}, nil
}

// headWatchConn counts one header timeout at most.
type headWatchConn struct {
	net.Conn
	refused func(reason string)

	mu        sync.Mutex
	state     http.ConnState
	sinceIdle int // bytes read since the state became StateIdle
	counted   bool
}

func (c *headWatchConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.sinceIdle += n
	waiting := c.state == http.StateNew || (c.state == http.StateIdle && c.sinceIdle > 0)
	count := err != nil && errors.Is(err, os.ErrDeadlineExceeded) && waiting && !c.counted
	if count {
		c.counted = true
	}
	c.mu.Unlock()
	if count {
		c.refused(metrics.RefusedHeaderTimeout)
	}
	return n, err
}

// CloseWrite keeps the half-close net/http and closeLingering use to let a
// client read a refusal before the connection closes.
func (c *headWatchConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

func (c *headWatchConn) setState(s http.ConnState) {
	c.mu.Lock()
	c.state = s
	if s == http.StateIdle {
		c.sinceIdle = 0
	}
	c.mu.Unlock()
}

// trackHeadState is the http.Server's ConnState hook.
func trackHeadState(c net.Conn, s http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if hc, ok := c.(*headWatchConn); ok {
		hc.setState(s)
	}
}

// unwatch returns the connection a headWatchConn wraps: a hijacked CONNECT
// connection is spliced as the plain socket, which keeps the tunnel's
// writev fast path.
func unwatch(c net.Conn) net.Conn {
	if hc, ok := c.(*headWatchConn); ok {
		return hc.Conn
	}
	return c
}
