// Package httpproxy is the HTTP forward proxy in front of the tunnel, for
// cloud components that are configured with HTTPS_PROXY/HTTP_PROXY or a
// Prometheus proxy_url (metrics-server, Prometheus): CONNECT host:port for
// TLS ports, absolute-form requests (GET http://NODE_IP:9051/metrics) for
// plain-HTTP ports, and origin-form requests whose Host names an edge node's
// plain-HTTP port (traffic redirected to the proxy by the legacy DNAT setup).
//
// The same handler runs inside edge-tunnel-server (its dialer is the
// router) and in the edge-tunnel-proxy sidecar (its dialer is the server's
// gRPC frontend). Every refusal answers with a status whose reason is on the
// status line, where Go's CONNECT client puts it into its error, and in a
// text/plain body, where curl users read it.
package httpproxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/pkg/frontend"
)

// Frontend labels the proxy's dials in the server's metrics.
const Frontend = "http-proxy"

// Default limits of the listener. A proxy request head is a request line
// and a few headers (a bearer token at most); a client that takes longer
// than ReadHeaderTimeout to send one is holding a connection for nothing,
// and a kept-alive connection idle for IdleTimeout is closed.
const (
	MaxHeaderBytes    = 32 << 10
	ReadHeaderTimeout = 10 * time.Second
	IdleTimeout       = 2 * time.Minute
)

// Limits bound what one client connection may hold; zero fields take the
// defaults above.
type Limits struct {
	// MaxHeaderBytes bounds a request head; a larger one gets 431.
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds the wait for a request head, on a new
	// connection and between requests on a kept-alive one.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a kept-alive connection that sends no request.
	IdleTimeout time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = MaxHeaderBytes
	}
	if l.ReadHeaderTimeout <= 0 {
		l.ReadHeaderTimeout = ReadHeaderTimeout
	}
	if l.IdleTimeout <= 0 {
		l.IdleTimeout = IdleTimeout
	}
	return l
}

// Dialer opens tunneled connections; frontend.Dialer, repeated here so that
// the sidecar does not need the server's packages to satisfy it.
type Dialer interface {
	Dial(ctx context.Context, frontend, address string) (io.ReadWriteCloser, error)
}

// Verdict is what the policy knows about a destination before any dial.
type Verdict struct {
	// PlainHTTP: the port speaks plain HTTP, so absolute-form requests may
	// be forwarded to it. TLS ports are reached with CONNECT only: a plain
	// request to them fails in confusing ways.
	PlainHTTP bool
	// Edge: an edge node serves the host. Origin-form requests are
	// forwarded only to edge nodes: forwarding them anywhere else would
	// make the proxy an open relay for any Host header, including its own.
	Edge bool
	// Refused, when set, is why nothing may reach the destination (a
	// *tunnel.DialError: port not forwarded, no agent for the host).
	Refused error
}

// Policy judges host:port. Nil means every destination may take plain
// HTTP and none is an edge node: the sidecar, which cannot know the
// server's configuration and leaves refusals to the server.
type Policy func(host string, port int) Verdict

// Options configure a Proxy.
type Options struct {
	// Dialer opens the connections; required.
	Dialer Dialer
	// Policy judges destinations; see Policy for nil.
	Policy Policy
	// DialTimeout bounds one dial (default 10 s).
	DialTimeout time.Duration
	// Name prefixes the reasons the proxy itself gives
	// ("edge-tunnel-server", "edge-tunnel-proxy").
	Name string
	// TLS, when set, makes Serve speak HTTPS (HTTP/1.1 only). Its
	// ClientAuth decides whether clients need certificates.
	TLS *tls.Config
	// Log receives the proxy's logs.
	Log klog.Logger
	// Limits bound request heads and idle connections.
	Limits Limits
	// Token, when set, is the bearer token every request must carry in
	// Proxy-Authorization (Bearer TOKEN, or Basic with TOKEN as the
	// password); others get 407.
	Token string
	// Refused, when set, counts requests refused by the proxy's own
	// checks, by reason: metrics.RefusedProxyAuth, and
	// metrics.RefusedHeaderTimeout for a connection closed because its
	// request head did not arrive within Limits.ReadHeaderTimeout. A head
	// over Limits.MaxHeaderBytes is answered 431 by net/http itself, which
	// offers no hook to count it.
	Refused func(reason string)
}

// Proxy is the HTTP proxy: an http.Handler and the http.Server that serves
// it with the limits above.
type Proxy struct {
	dialer      Dialer
	policy      Policy
	dialTimeout time.Duration
	name        string
	via         string // our pseudonym in Via headers, to detect loops
	log         klog.Logger
	transport   *http.Transport
	srv         *http.Server
	tlsConfig   *tls.Config
	auth        *tokenAuth // nil: no token required
	refused     func(reason string)

	tunnelsMu sync.Mutex
	tunnels   map[io.Closer]struct{} // hijacked CONNECT connections, both ends
	tunnelsWG sync.WaitGroup
	closing   bool
}

// New returns a Proxy.
func New(o Options) (*Proxy, error) {
	if o.Dialer == nil {
		return nil, errors.New("httpproxy: no Dialer")
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.Name == "" {
		o.Name = "edge-tunnel"
	}
	var id [4]byte
	rand.Read(id[:])
	p := &Proxy{
		dialer:      o.Dialer,
		policy:      o.Policy,
		dialTimeout: o.DialTimeout,
		name:        o.Name,
		via:         o.Name + "-" + hex.EncodeToString(id[:]),
		log:         o.Log,
		tunnels:     map[io.Closer]struct{}{},
		auth:        newTokenAuth(o.Token),
		refused:     o.Refused,
	}
	lim := o.Limits.withDefaults()
	p.transport = p.newTransport()
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: lim.ReadHeaderTimeout,
		IdleTimeout:       lim.IdleTimeout,
		MaxHeaderBytes:    lim.MaxHeaderBytes,
		// HTTP/1.1 only: CONNECT and absolute-form are HTTP/1 proxy
		// semantics, and neither TLS ALPN nor prior knowledge may switch
		// a client into HTTP/2 here.
		Protocols:    &protocols,
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(logWriter{o.Log}, "", 0),
	}
	if p.refused != nil {
		p.srv.ConnState = trackHeadState // see headtimeout.go
	}
	if o.TLS != nil {
		p.tlsConfig = o.TLS.Clone()
		p.tlsConfig.NextProtos = []string{"http/1.1"}
	}
	return p, nil
}

// Serve accepts on ln until Shutdown. It returns nil after Shutdown.
func (p *Proxy) Serve(ln net.Listener) error {
	if p.refused != nil {
		ln = headWatchListener{Listener: ln, refused: p.refused}
	}
	if p.tlsConfig != nil {
		ln = tls.NewListener(ln, p.tlsConfig)
	}
	if err := p.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving the HTTP proxy on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Shutdown stops accepting, lets requests and CONNECT tunnels in flight
// finish until ctx ends, then closes whatever is left. It returns once
// every handler has returned.
func (p *Proxy) Shutdown(ctx context.Context) {
	p.tunnelsMu.Lock()
	p.closing = true
	p.tunnelsMu.Unlock()
	_ = p.srv.Shutdown(ctx) // returns at ctx's end with requests still running
	done := make(chan struct{})
	go func() { p.tunnelsWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	p.srv.Close()
	p.tunnelsMu.Lock()
	for c := range p.tunnels {
		c.Close()
	}
	p.tunnelsMu.Unlock()
	<-done
	p.transport.CloseIdleConnections()
}

// ServeHTTP dispatches by request form.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.auth != nil && !p.auth.ok(r.Header.Get("Proxy-Authorization")) {
		p.unauthenticated(w, r)
		return
	}
	if r.Method == http.MethodConnect {
		p.serveConnect(w, r)
		return
	}
	p.serveForward(w, r)
}

// refuse answers with code and a one-line reason and closes the connection.
// The reason goes on the status line, which net/http cannot write, so the
// connection is hijacked and the response written raw; without a hijacker
// (tests with a recorder) the standard status text has to do.
func (p *Proxy) refuse(w http.ResponseWriter, r *http.Request, code int, reason string) {
	p.log.V(2).Info("Refused", "method", r.Method, "target", r.RequestURI, "remote", r.RemoteAddr, "status", code, "reason", reason)
	// Read a small request body first, so that closing the connection
	// with unread data does not reset it before the client reads the answer.
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(r.Body, 64<<10))
	}
	if hj, ok := w.(http.Hijacker); ok {
		if c, brw, err := hj.Hijack(); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			frontend.WriteStatus(brw, code, reason)
			brw.Flush()
			closeLingering(c)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Connection", "close")
	w.WriteHeader(code)
	io.WriteString(w, reason+"\n")
}

// closeLingering closes c after half-closing it and reading what the client
// still sends for a moment: an immediate close with unread bytes makes the
// kernel send RST, and the client may lose the response it has not read yet.
func closeLingering(c net.Conn) {
	defer c.Close()
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return
	}
	if cw.CloseWrite() != nil {
		return
	}
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 256<<10))
}

// track registers the ends of a CONNECT tunnel so that Shutdown can close
// them; it reports false once Shutdown has begun.
func (p *Proxy) track(cs ...io.Closer) bool {
	p.tunnelsMu.Lock()
	defer p.tunnelsMu.Unlock()
	if p.closing {
		return false
	}
	for _, c := range cs {
		p.tunnels[c] = struct{}{}
	}
	p.tunnelsWG.Add(1)
	return true
}

func (p *Proxy) untrack(cs ...io.Closer) {
	p.tunnelsMu.Lock()
	for _, c := range cs {
		delete(p.tunnels, c)
	}
	p.tunnelsMu.Unlock()
	p.tunnelsWG.Done()
}

// logWriter sends net/http's own messages (TLS handshake errors, panics)
// to klog at V(2): they are about single misbehaving clients.
type logWriter struct{ log klog.Logger }

func (l logWriter) Write(b []byte) (int, error) {
	l.log.V(2).Info(strings.TrimSpace(string(b)))
	return len(b), nil
}
