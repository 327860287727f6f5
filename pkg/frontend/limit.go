package frontend

import (
	"net"
	"sync"

	"k8s.io/klog/v2"
)

// LimitListener caps the connections one remote address holds open on ln at
// max (0: no cap). kube-apiserver opens a connection per dial on both
// protocols, so the cap is per client host, not per request: it keeps one
// misbehaving or compromised client from taking every file descriptor of
// the server. A connection over the cap is closed at once, before the TLS
// handshake, and refused is called to count it.
//
// The check is a map lookup per accepted connection and nothing per byte.
func LimitListener(ln net.Listener, max int, refused func(), log klog.Logger) net.Listener {
	if max <= 0 {
		return ln
	}
	return &limitListener{Listener: ln, max: max, refused: refused, log: log, open: map[string]int{}}
}

type limitListener struct {
	net.Listener
	max     int
	refused func()
	log     klog.Logger

	mu   sync.Mutex
	open map[string]int // connections open per remote host
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		key := remoteHost(c.RemoteAddr())
		l.mu.Lock()
		n := l.open[key]
		ok := n < l.max
		if ok {
			l.open[key] = n + 1
		}
		l.mu.Unlock()
		if ok {
			return &limitedConn{Conn: c, l: l, key: key}, nil
		}
		if l.refused != nil {
			l.refused()
		}
		l.log.V(1).Info("Refused a frontend connection: the client holds too many open (--max-connections-per-client)",
			"remote", c.RemoteAddr(), "open", n, "limit", l.max)
		c.Close()
	}
}

func (l *limitListener) release(key string) {
	l.mu.Lock()
	if l.open[key]--; l.open[key] <= 0 {
		delete(l.open, key)
	}
	l.mu.Unlock()
}

// remoteHost is the address without its port: one client host.
func remoteHost(a net.Addr) string {
	if a == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(a.String()); err == nil {
		return host
	}
	return a.String()
}

// limitedConn gives its slot back when it is closed, once.
type limitedConn struct {
	net.Conn
	l    *limitListener
	key  string
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}
