package httpproxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/frontend"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// serveConnect opens a tunnel to the CONNECT target. The client gets 200
// only once the target is connected, and nothing after the response head
// but the target's bytes: kube-apiserver's CONNECT client refuses a tunnel
// with anything buffered after the head, and TLS clients would choke on it.
// The tunnel never looks into the bytes, so the client's TLS session is with
// the target itself.
func (p *Proxy) serveConnect(w http.ResponseWriter, r *http.Request) {
	address := r.URL.Host
	host, portStr, err := net.SplitHostPort(address)
	if err != nil || host == "" {
		p.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("%s: CONNECT target %q is not host:port", p.name, r.RequestURI))
		return
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		p.refuse(w, r, http.StatusBadRequest, fmt.Sprintf("%s: CONNECT target %q: port %q is not 1-65535", p.name, address, portStr))
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		p.refuse(w, r, http.StatusInternalServerError, p.name+": this connection cannot carry a CONNECT tunnel (not HTTP/1.1)")
		return
	}

	// The request's context ends when the client goes away while the dial
	// is still running.
	ctx, cancel := context.WithTimeout(r.Context(), p.dialTimeout)
	backend, err := p.dialer.Dial(ctx, Frontend, address)
	cancel()
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left; nobody to answer
		}
		p.refuse(w, r, frontend.StatusFor(err), err.Error())
		return
	}
	c, brw, err := hj.Hijack()
	if err != nil {
		backend.Close()
		p.log.V(2).Info("Hijacking the CONNECT connection failed", "target", address, "err", err)
		return
	}
	c = unwatch(c)
	// net/http may have left its header deadlines on the connection.
	c.SetDeadline(time.Time{})
	client := io.ReadWriteCloser(c)
	if n := brw.Reader.Buffered(); n > 0 {
		// The client sent tunnel data right after its head (TLS clients
		// may); those bytes are in net/http's buffer.
		early, _ := brw.Reader.Peek(n)
		client = &prefixConn{Conn: c, r: io.MultiReader(bytes.NewReader(bytes.Clone(early)), c)}
	}
	if !p.track(client, backend) {
		frontend.WriteStatus(c, http.StatusServiceUnavailable, p.name+": shutting down; retry")
		c.Close()
		backend.Close()
		return
	}
	defer p.untrack(client, backend)
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		c.Close()
		backend.Close()
		return
	}
	toTarget, fromTarget, err := tunnel.Splice(client, backend)
	p.log.V(4).Info("CONNECT tunnel ended", "target", address, "sent", toTarget, "received", fromTarget, "err", err)
}

// prefixConn is a connection whose first reads return bytes already taken
// from it.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(b []byte) (int, error) { return c.r.Read(b) }
