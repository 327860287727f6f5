package harness

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// ConnectResult is what an HTTP CONNECT exchange produced.
type ConnectResult struct {
	// Status is the response status code (0 if no response was read).
	Status int
	// Reason is the status line's text (what kube-apiserver passes on) and,
	// for a failure whose body says more, the body's first line.
	Reason string
	// Buffered is how many bytes followed the response head in the same
	// read; kube-apiserver rejects a tunnel with any.
	Buffered int
}

// Connect speaks HTTP CONNECT on conn exactly as kube-apiserver's egress
// selector does (k8s.io/apiserver v0.35 pkg/server/egressselector): it
// writes "CONNECT target HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", reads the
// response with http.ReadResponse from a bufio.Reader limited to
// http.DefaultMaxHeaderBytes, and requires status 200 and no buffered
// bytes. On success conn is the tunnel. On failure conn is left open for
// the caller to close.
func Connect(conn net.Conn, target string) (ConnectResult, error) {
	var res ConnectResult
	if _, err := fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, "127.0.0.1"); err != nil {
		return res, fmt.Errorf("write CONNECT %s: %w", target, err)
	}
	br := bufio.NewReader(io.LimitReader(conn, http.DefaultMaxHeaderBytes))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return res, fmt.Errorf("read response to CONNECT %s: %w", target, err)
	}
	res.Status = resp.StatusCode
	res.Reason = resp.Status
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n"); line != "" && !strings.Contains(res.Reason, line) {
			res.Reason += ": " + line
		}
		return res, fmt.Errorf("CONNECT %s: %s", target, res.Reason)
	}
	res.Buffered = br.Buffered()
	if res.Buffered > 0 {
		return res, fmt.Errorf("CONNECT %s: %d unexpected bytes buffered after the response head", target, res.Buffered)
	}
	return res, nil
}

// DialUDS opens a connection to the server's unix socket.
func (s *Server) DialUDS(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", s.UDS)
	if err != nil {
		return nil, fmt.Errorf("dial unix socket %s: %w", s.UDS, err)
	}
	return c, nil
}

// DialFrontendTLS opens a TLS connection to the TCP frontend with cfg, as
// kube-apiserver's tls.Dialer does; the handshake is completed here so that
// a rejected client certificate surfaces as an error.
func (s *Server) DialFrontendTLS(ctx context.Context, cfg *tls.Config) (net.Conn, error) {
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", s.FrontendAddr)
	if err != nil {
		return nil, fmt.Errorf("TLS dial %s: %w", s.FrontendAddr, err)
	}
	return c, nil
}
