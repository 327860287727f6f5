// Package frontend serves the endpoints where cloud clients ask for tunneled
// connections: the konnectivity gRPC ProxyService and HTTP CONNECT, both on
// one listener (a UNIX socket for kube-apiserver, or TCP with mutual TLS),
// told apart by ALPN or by the first bytes a client sends.
package frontend

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	"github.com/edge-tunnel/edge-tunnel/pkg/workers"
)

// Dialer opens tunneled connections; the server implements it with its
// router. frontend names the caller for metrics ("grpc", "connect").
type Dialer interface {
	Dial(ctx context.Context, frontend, address string) (io.ReadWriteCloser, error)
}

// handshakeTimeout is the default of Mux.HandshakeTimeout.
const handshakeTimeout = 10 * time.Second

// http2Preface is what every HTTP/2 (and so gRPC) client sends first.
var http2Preface = []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

// Mux accepts connections and hands each to the gRPC server or the CONNECT
// handler.
type Mux struct {
	grpc    *chanListener
	connect *Connect
	log     klog.Logger

	// HandshakeTimeout bounds the TLS handshake and the first bytes (or
	// the CONNECT head) of a new connection, so idle or slow clients cannot
	// hold accept-side resources; 0 means 10 s. MaxHeadBytes bounds a
	// CONNECT request head (431 beyond it); 0 means 16 KiB. Set them
	// before Serve.
	HandshakeTimeout time.Duration
	MaxHeadBytes     int
	// Refused, when set, counts a connection turned away by one of those
	// two limits, by reason (metrics.RefusedHeaderTooLarge or
	// metrics.RefusedHeaderTimeout): at most once per connection.
	Refused func(reason string)
	// Workers runs each new connection's handshake and request: deep, and
	// over once the connection is handed to gRPC or its tunnel is open.
	// nil starts a goroutine for each.
	Workers *workers.Pool

	mu    sync.Mutex
	conns map[net.Conn]struct{} // accepted, not yet handed over
}

// NewMux returns a Mux. Connections it classifies as gRPC are served by
// whatever serves GRPCListener.
func NewMux(connect *Connect, log klog.Logger) *Mux {
	return &Mux{grpc: newChanListener(), connect: connect, log: log, conns: map[net.Conn]struct{}{}}
}

// GRPCListener yields the connections that speak HTTP/2; pass it to
// grpc.Server.Serve. Its Addr is the Mux's first listener's.
func (m *Mux) GRPCListener() net.Listener { return m.grpc }

// Serve accepts on ln until it is closed. With tlsConfig set, connections
// are TLS (its ClientAuth decides whether client certificates are required).
func (m *Mux) Serve(ln net.Listener, tlsConfig *tls.Config) error {
	m.grpc.setAddr(ln.Addr())
	var tempDelay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				time.Sleep(tempDelay)
				continue
			}
			return err
		}
		tempDelay = 0
		m.Workers.Go(func() { m.classify(c, tlsConfig) })
	}
}

// Close stops handing out gRPC connections and closes the connections that
// are still being classified or dialed. Open CONNECT tunnels are left alone:
// Connect.Wait waits for them.
func (m *Mux) Close() {
	m.grpc.Close()
	m.mu.Lock()
	for c := range m.conns {
		c.Close()
	}
	m.mu.Unlock()
}

func (m *Mux) track(c net.Conn, add bool) {
	m.mu.Lock()
	if add {
		m.conns[c] = struct{}{}
	} else {
		delete(m.conns, c)
	}
	m.mu.Unlock()
}

func (m *Mux) classify(raw net.Conn, tlsConfig *tls.Config) {
	m.track(raw, true)
	defer m.track(raw, false)
	c := raw
	raw.SetDeadline(time.Now().Add(m.handshakeTimeout()))
	if tlsConfig != nil {
		tc := tls.Server(raw, tlsConfig)
		if err := tc.Handshake(); err != nil {
			if isTimeout(err) {
				m.refused(metrics.RefusedHeaderTimeout)
			}
			m.log.V(2).Info("TLS handshake on the frontend failed", "remote", raw.RemoteAddr(), "err", err)
			raw.Close()
			return
		}
		c = tc
		if tc.ConnectionState().NegotiatedProtocol == "h2" {
			raw.SetDeadline(time.Time{})
			m.grpc.deliver(c)
			return
		}
	}
	lim := newHeadLimit(c, m.maxHeadBytes())
	br := bufio.NewReaderSize(lim, 4096)
	head, err := br.Peek(1)
	if err == nil && head[0] == http2Preface[0] {
		// Only now wait for the whole preface: a short HTTP/1 request must
		// not wait for bytes it will never send.
		head, err = br.Peek(len(http2Preface))
	}
	if err != nil && len(head) == 0 {
		if isTimeout(err) {
			m.refused(metrics.RefusedHeaderTimeout)
		}
		m.log.V(2).Info("Frontend connection closed before sending a request", "remote", raw.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	raw.SetDeadline(time.Time{})
	pc := &bufferedConn{Conn: c, r: br}
	if bytes.Equal(head, http2Preface) {
		lim.off()
		m.grpc.deliver(pc)
		return
	}
	raw.SetReadDeadline(time.Now().Add(m.handshakeTimeout()))
	m.connect.serveConn(pc, lim, m.handshakeTimeout(), m.refused, func() { m.track(raw, false) })
}

func (m *Mux) refused(reason string) {
	if m.Refused != nil {
		m.Refused(reason)
	}
}

// isTimeout reports whether err is a connection's deadline passing: the
// client took longer than the handshake timeout, not a broken connection.
func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func (m *Mux) handshakeTimeout() time.Duration {
	if m.HandshakeTimeout > 0 {
		return m.HandshakeTimeout
	}
	return handshakeTimeout
}

func (m *Mux) maxHeadBytes() int {
	if m.MaxHeadBytes > 0 {
		return m.MaxHeadBytes
	}
	return maxHeadBytes
}

// bufferedConn is a net.Conn whose reads first drain a bufio.Reader that
// holds bytes already taken from the connection. Once it is drained the
// reader is dropped: a tunnel can stay open for hours, and its 4 KiB would
// be most of what an idle one costs.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader // nil once drained; used by one reader at a time
}

// WaitReadable lets the tunnel wait for the client's next bytes without
// holding a buffer (tunnel.ReadWaiter).
func (c *bufferedConn) WaitReadable() bool {
	if c.r != nil && c.r.Buffered() > 0 {
		return true
	}
	return tunnel.WaitReadable(c.Conn) // false for TLS, whose own buffer may hold bytes
}

func (c *bufferedConn) Read(p []byte) (int, error) {
	if c.r != nil {
		if c.r.Buffered() > 0 {
			return c.r.Read(p)
		}
		c.r = nil
	}
	return c.Conn.Read(p)
}

// WriteVectors writes v in one writev when the connection is a plain socket
// (tunnel data from the agent arrives in several buffers).
func (c *bufferedConn) WriteVectors(v *net.Buffers) (int64, error) { return v.WriteTo(c.Conn) }

// chanListener is a net.Listener fed by the Mux.
type chanListener struct {
	ch     chan net.Conn
	done   chan struct{}
	once   sync.Once
	addrMu sync.Mutex
	addr   net.Addr
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), done: make(chan struct{})}
}

func (l *chanListener) deliver(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) setAddr(a net.Addr) {
	l.addrMu.Lock()
	if l.addr == nil {
		l.addr = a
	}
	l.addrMu.Unlock()
}

func (l *chanListener) Addr() net.Addr {
	l.addrMu.Lock()
	defer l.addrMu.Unlock()
	if l.addr == nil {
		return &net.UnixAddr{Name: "frontend", Net: "unix"}
	}
	return l.addr
}
