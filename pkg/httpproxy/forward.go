package httpproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/frontend"
	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// serveForward forwards an absolute-form request (GET http://host:port/...)
// or an origin-form one whose Host names an edge node's plain-HTTP port,
// through a Transport whose connections are tunneled, so that scrapes reuse
// one tunnel per target instead of dialing for every request.
func (p *Proxy) serveForward(w http.ResponseWriter, r *http.Request) {
	origin := !r.URL.IsAbs()
	target := r.URL.Host
	if origin {
		target = r.Host
	} else if r.URL.Scheme != "http" {
		p.refuse(w, r, http.StatusBadRequest, fmt.Sprintf(
			"%s: only http:// URLs are forwarded as requests; for a %s:// URL the client must open a tunnel with CONNECT host:port (Go, curl and Prometheus do that for https:// URLs through a proxy)",
			p.name, r.URL.Scheme))
		return
	}
	if strings.Contains(strings.Join(r.Header.Values("Via"), ","), p.via) {
		p.refuse(w, r, http.StatusLoopDetected, fmt.Sprintf("%s: request loop: %s %s came back to this proxy; the target is the proxy itself", p.name, r.Method, r.RequestURI))
		return
	}
	host, port, err := splitTarget(target)
	if err != nil {
		if origin {
			p.refuse(w, r, http.StatusBadRequest, p.notAProxyRequest(target))
			return
		}
		p.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("%s: %s %s: %v", p.name, r.Method, r.RequestURI, err))
		return
	}
	v := Verdict{PlainHTTP: true}
	if p.policy != nil {
		v = p.policy(host, port)
	}
	switch {
	case origin && !v.Edge:
		p.refuse(w, r, http.StatusBadRequest, p.notAProxyRequest(target))
		return
	case v.Refused != nil:
		p.refuse(w, r, frontend.StatusFor(v.Refused), v.Refused.Error())
		return
	case !v.PlainHTTP:
		p.refuse(w, r, http.StatusForbidden, fmt.Sprintf(
			"%s: port %d of %q is not a plain-HTTP port: request an https:// URL through the proxy, so that the client sends CONNECT %s and speaks TLS with the target itself; if the port really serves plain HTTP, add %d to %q in ConfigMap kube-system/edge-tunnel-server-cfg",
			p.name, port, host, net.JoinHostPort(host, strconv.Itoa(port)), port, ports.KeyHTTP))
		return
	}

	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme = "http"
	out.URL.Host = net.JoinHostPort(host, strconv.Itoa(port))
	out.Close = false
	removeHopHeaders(out.Header)
	out.Header.Add("Via", fmt.Sprintf("%d.%d %s", r.ProtoMajor, r.ProtoMinor, p.via))
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // not Go's default: the client sent none
	}
	if r.ContentLength == 0 {
		out.Body = nil // a non-nil empty body would be sent chunked
	}
	resp, err := p.transport.RoundTrip(out)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left
		}
		var de *tunnel.DialError
		if errors.As(err, &de) {
			p.refuse(w, r, frontend.StatusFor(de), de.Error())
			return
		}
		p.refuse(w, r, http.StatusBadGateway, fmt.Sprintf("%s: %s %s: %v", p.name, r.Method, out.URL, err))
		return
	}
	defer resp.Body.Close()

	removeHopHeaders(resp.Header)
	h := w.Header()
	for k, vs := range resp.Header {
		h[k] = vs
	}
	h.Add("Via", fmt.Sprintf("%d.%d %s", resp.ProtoMajor, resp.ProtoMinor, p.via))
	w.WriteHeader(resp.StatusCode)
	if err := copyFlushing(w, resp.Body); err != nil {
		if r.Context().Err() == nil {
			p.log.V(2).Info("Forwarded response broke off", "method", r.Method, "url", out.URL.String(), "err", err)
		}
		// The only way to tell the client that the body is incomplete
		// (a chunked body would otherwise end cleanly): net/http recovers
		// this value and drops the connection without logging.
		panic(http.ErrAbortHandler)
	}
	for k, vs := range resp.Trailer {
		h[http.TrailerPrefix+k] = vs
	}
}

func (p *Proxy) notAProxyRequest(host string) string {
	return fmt.Sprintf("%s: this is an HTTP proxy: send CONNECT host:port or an absolute-form request (GET http://host:port/path); a request without a host in its URL is forwarded only when its Host header names a plain-HTTP port of an edge node, and %q does not",
		p.name, host)
}

// splitTarget splits host[:port], 80 when the port is absent (http://).
func splitTarget(target string) (host string, port int, err error) {
	u := url.URL{Host: target}
	host = u.Hostname()
	if host == "" {
		return "", 0, fmt.Errorf("no host in %q", target)
	}
	ps := u.Port()
	if ps == "" {
		if strings.HasSuffix(target, ":") {
			return "", 0, fmt.Errorf("empty port in %q", target)
		}
		return host, 80, nil
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("port %q in %q is not 1-65535", ps, target)
	}
	return host, port, nil
}

// hopHeaders describe one connection, not the message (RFC 9110 7.6.1), and
// are not forwarded. Upgrade and HTTP2-Settings go too: the proxy speaks
// HTTP/1.1 on both sides and never switches protocols (no h2c, no
// WebSocket).
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Http2-Settings",
}

func removeHopHeaders(h http.Header) {
	for _, v := range h.Values("Connection") {
		for f := range strings.SplitSeq(v, ",") {
			if f = textproto.TrimString(f); f != "" {
				h.Del(f)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyFlushing copies body to w and flushes after every read, so that a
// streaming response (a long poll, a log follow, a slow exporter) reaches the
// client as it comes instead of when a buffer fills. It returns the first
// error of either side.
func copyFlushing(w http.ResponseWriter, body io.Reader) error {
	rc := http.NewResponseController(w)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if ferr := rc.Flush(); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// newTransport is the client side of forwarded requests: HTTP/1.1 only,
// every connection dialed through the tunnel, idle ones kept for the next
// request to the same target (a scrape every 15-60 s finds its connection
// still open), and bodies passed through as they are (no gzip added).
func (p *Proxy) newTransport() *http.Transport {
	return &http.Transport{
		Proxy:                  nil, // never the environment's proxy: this is the proxy
		DialContext:            p.dialForward,
		MaxIdleConns:           512,
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        90 * time.Second,
		DisableCompression:     true,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 1 << 20,
		TLSNextProto:           map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
}

// dialForward dials a forwarded request's target through the Dialer.
func (p *Proxy) dialForward(ctx context.Context, _, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, p.dialTimeout)
	defer cancel()
	c, err := p.dialer.Dial(ctx, Frontend, address)
	if err != nil {
		return nil, err
	}
	if nc, ok := c.(net.Conn); ok {
		return nc, nil
	}
	return &tunnelConn{ReadWriteCloser: c, remote: tunnelAddr(address)}, nil
}

// tunnelConn is a tunneled connection as the net.Conn http.Transport wants.
// The Transport uses no deadlines; it ends a connection by closing it.
type tunnelConn struct {
	io.ReadWriteCloser
	remote tunnelAddr
}

var errNoDeadlines = errors.New("httpproxy: tunneled connections have no deadlines; close them instead")

func (c *tunnelConn) LocalAddr() net.Addr              { return tunnelAddr("tunnel") }
func (c *tunnelConn) RemoteAddr() net.Addr             { return c.remote }
func (c *tunnelConn) SetDeadline(time.Time) error      { return errNoDeadlines }
func (c *tunnelConn) SetReadDeadline(time.Time) error  { return errNoDeadlines }
func (c *tunnelConn) SetWriteDeadline(time.Time) error { return errNoDeadlines }

type tunnelAddr string

func (a tunnelAddr) Network() string { return "tunnel" }
func (a tunnelAddr) String() string  { return string(a) }
