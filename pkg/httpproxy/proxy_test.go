package httpproxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// testDialer dials loopback for real and refuses what the test says, the way
// the server's router would.
type testDialer struct {
	dials  atomic.Int64
	refuse func(address string) error
	mu     sync.Mutex
	labels []string
}

func (d *testDialer) Dial(ctx context.Context, frontend, address string) (io.ReadWriteCloser, error) {
	d.dials.Add(1)
	d.mu.Lock()
	d.labels = append(d.labels, frontend)
	d.mu.Unlock()
	if d.refuse != nil {
		if err := d.refuse(address); err != nil {
			return nil, err
		}
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, tunnel.Errorf(tunnel.KindFailed, "test dialer: %v", err)
	}
	// Hide net.Conn, as the server's metered connections do, so the
	// Transport gets the adapter.
	return struct{ io.ReadWriteCloser }{c}, nil
}

// startProxy serves a Proxy on loopback and returns it with its address.
func startProxy(t *testing.T, d Dialer, policy Policy) (*Proxy, string) {
	t.Helper()
	return serveProxy(t, newProxy(t, d, policy))
}

func newProxy(t *testing.T, d Dialer, policy Policy) *Proxy {
	t.Helper()
	p, err := New(Options{Dialer: d, Policy: policy, DialTimeout: 2 * time.Second, Name: "test-proxy"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func serveProxy(t *testing.T, p *Proxy) (*Proxy, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return p, ln.Addr().String()
}

// client is a Go HTTP client that uses the proxy for every URL, loopback
// included (http.ProxyFromEnvironment would skip loopback).
func client(proxyAddr string, tlsConfig *tls.Config) *http.Client {
	u := &url.URL{Scheme: "http", Host: proxyAddr}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(u), TLSClientConfig: tlsConfig}}
}

// countingServer is an HTTP target that counts the connections it accepted.
type countingServer struct {
	*httptest.Server
	conns atomic.Int64
}

func startTarget(t *testing.T, h http.HandlerFunc) *countingServer {
	t.Helper()
	s := &countingServer{}
	s.Server = httptest.NewUnstartedServer(h)
	s.Server.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.Start()
	t.Cleanup(s.Close)
	return s
}

func hostPort(t *testing.T, rawURL string) (string, int) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(u.Port())
	return u.Hostname(), port
}

// rawRequest writes req on a new connection to addr and returns the status
// line and the body of the answer.
func rawRequest(t *testing.T, addr, req string) (statusLine, body string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", req, err)
	}
	b, _ := io.ReadAll(resp.Body)
	return resp.Proto + " " + resp.Status, string(b)
}

func TestConnectKeepsTLSEndToEnd(t *testing.T) {
	target := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls=%v", r.TLS != nil)
	}))
	defer target.Close()
	d := &testDialer{}
	_, proxy := startProxy(t, d, nil)

	// The client trusts only the target's own certificate: if anything in
	// between terminated TLS, verification would fail.
	tc := &tls.Config{RootCAs: target.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	resp, err := client(proxy, tc).Get(target.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "tls=true" {
		t.Fatalf("got %s %q", resp.Status, b)
	}
	if got := d.labels[0]; got != Frontend {
		t.Errorf("dial labelled %q, want %q", got, Frontend)
	}
}

func TestConnectHeadThenOnlyTunnelBytes(t *testing.T) {
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	_, proxy := startProxy(t, &testDialer{}, nil)
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// Tunnel data in the same write as the head, as eager TLS clients do.
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\nearly bytes", echo.Addr(), echo.Addr())
	head := "HTTP/1.1 200 Connection established\r\n\r\n"
	want := head + "early bytes"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read %q: %v", got, err)
	}
	if string(got) != want {
		t.Fatalf("got %q, want %q: the head must be followed by nothing but the target's bytes", got, want)
	}
}

func TestConnectRefusalsCarryTheReason(t *testing.T) {
	d := &testDialer{refuse: func(address string) error {
		switch {
		case strings.HasSuffix(address, ":9999"):
			return tunnel.Errorf(tunnel.KindForbidden, "edge-tunnel-server: port 9999 of edge node %q is not forwarded: add it", "n1")
		case strings.HasPrefix(address, "gone"):
			return tunnel.Errorf(tunnel.KindNoRoute, "edge-tunnel-server: no edge-tunnel-agent is connected for host \"gone\"")
		case strings.HasPrefix(address, "slow"):
			return tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-server: dial timed out")
		}
		return nil
	}}
	_, proxy := startProxy(t, d, nil)
	for _, tc := range []struct {
		target, status, reason string
	}{
		{"127.0.0.1:9999", "403 Forbidden: edge-tunnel-server: port 9999", "is not forwarded"},
		{"gone:10250", "503 Service Unavailable: edge-tunnel-server: no edge-tunnel-agent", "no edge-tunnel-agent"},
		{"slow:10250", "504 Gateway Timeout", "timed out"},
		{"no-port", "400 Bad Request: test-proxy: CONNECT target", "is not host:port"},
	} {
		status, body := rawRequest(t, proxy, fmt.Sprintf("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", tc.target, tc.target))
		if !strings.HasPrefix(status, "HTTP/1.1 "+tc.status) || !strings.Contains(status, tc.reason) {
			t.Errorf("CONNECT %s: status %q, want %q with %q", tc.target, status, tc.status, tc.reason)
		}
		if !strings.Contains(body, tc.reason) || strings.Count(body, "\n") != 1 {
			t.Errorf("CONNECT %s: body %q, want one line with %q", tc.target, body, tc.reason)
		}
	}

	// Go's CONNECT client turns the status line into its error, which is
	// what metrics-server and client-go report.
	_, err := client(proxy, nil).Get("https://127.0.0.1:9999/")
	if err == nil || !strings.Contains(err.Error(), "is not forwarded") {
		t.Fatalf("Go client error = %v, want the reason", err)
	}
}

func TestForwardReusesConnections(t *testing.T) {
	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "path=%s host=%s", r.URL.Path, r.Host)
	})
	d := &testDialer{}
	_, proxy := startProxy(t, d, nil)
	c := client(proxy, nil)
	for i := range 3 {
		resp, err := c.Get(target.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		want := "path=/metrics host=" + strings.TrimPrefix(target.URL, "http://")
		if string(b) != want {
			t.Fatalf("request %d: %q, want %q", i, b, want)
		}
	}
	if n := target.conns.Load(); n != 1 {
		t.Errorf("target accepted %d connections for 3 requests, want 1 (keep-alive through the tunnel)", n)
	}
	if n := d.dials.Load(); n != 1 {
		t.Errorf("%d dials for 3 requests, want 1", n)
	}
}

func TestForwardStreams(t *testing.T) {
	second := make(chan struct{})
	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		select {
		case <-second:
			io.WriteString(w, "second\n")
		case <-time.After(3 * time.Second):
			io.WriteString(w, "the client never saw the first line\n")
		}
	})
	_, proxy := startProxy(t, &testDialer{}, nil)
	resp, err := client(proxy, nil).Get(target.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first line %q, %v: the proxy held back a flushed part of the response", line, err)
	}
	close(second)
	rest, _ := io.ReadAll(br)
	if string(rest) != "second\n" {
		t.Fatalf("rest %q", rest)
	}
}

func TestForwardDropsHopByHopHeaders(t *testing.T) {
	seen := make(chan http.Header, 1)
	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		w.Header().Set("Connection", "X-Secret-Hop")
		w.Header().Set("X-Secret-Hop", "1")
		w.Header().Set("X-End-To-End", "kept")
	})
	_, proxy := startProxy(t, &testDialer{}, nil)
	addr := strings.TrimPrefix(target.URL, "http://")
	// Written raw, so that the proxy surely receives every header (an h2c
	// upgrade attempt among them).
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET http://%s/ HTTP/1.1\r\nHost: %s\r\nConnection: X-Hop, Upgrade, HTTP2-Settings\r\nX-Hop: 1\r\n"+
		"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n"+
		"Keep-Alive: timeout=5\r\nX-End-To-End: kept\r\n\r\n", addr, addr)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ProtoMajor != 1 {
		t.Fatalf("got %s %s, want HTTP/1.1 200 (no protocol switch)", resp.Proto, resp.Status)
	}
	got := <-seen
	for _, h := range []string{"X-Hop", "Upgrade", "Http2-Settings", "Proxy-Authorization", "Connection", "Keep-Alive"} {
		if v := got.Get(h); v != "" {
			t.Errorf("target got %s: %q", h, v)
		}
	}
	if got.Get("X-End-To-End") != "kept" || !strings.Contains(got.Get("Via"), "test-proxy") {
		t.Errorf("target headers %v: want X-End-To-End and Via", got)
	}
	if resp.Header.Get("X-Secret-Hop") != "" || resp.Header.Get("X-End-To-End") != "kept" {
		t.Errorf("response headers %v", resp.Header)
	}
}

func TestForwardPolicy(t *testing.T) {
	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "edge says hi") })
	host, port := hostPort(t, target.URL)
	tlsPort := port + 1
	policy := func(h string, p int) Verdict {
		switch {
		case h == "127.0.0.9":
			return Verdict{Refused: tunnel.Errorf(tunnel.KindNoRoute, "edge-tunnel-server: no edge-tunnel-agent is connected for host %q", h)}
		case h == host && p == port:
			return Verdict{PlainHTTP: true, Edge: true}
		case h == host && p == tlsPort:
			return Verdict{Edge: true}
		case h == host:
			return Verdict{Edge: true, Refused: tunnel.Errorf(tunnel.KindForbidden, "edge-tunnel-server: port %d of edge node %q is not forwarded", p, h)}
		}
		return Verdict{PlainHTTP: true} // a cloud host, dialed directly
	}
	d := &testDialer{}
	_, proxy := startProxy(t, d, policy)
	hp := func(p int) string { return net.JoinHostPort(host, strconv.Itoa(p)) }
	for _, tc := range []struct {
		name, req, status, reason string
	}{
		{"absolute-form to the TLS port", "GET http://" + hp(tlsPort) + "/ HTTP/1.1\r\nHost: " + hp(tlsPort) + "\r\n\r\n",
			"403 Forbidden", "not a plain-HTTP port: request an https:// URL"},
		{"absolute-form to a refused port", "GET http://" + hp(9) + "/ HTTP/1.1\r\nHost: " + hp(9) + "\r\n\r\n",
			"403 Forbidden", "is not forwarded"},
		{"absolute-form to a host without agent", "GET http://127.0.0.9:80/ HTTP/1.1\r\nHost: 127.0.0.9\r\n\r\n",
			"503 Service Unavailable", "no edge-tunnel-agent"},
		{"https absolute-form", "GET https://" + hp(tlsPort) + "/ HTTP/1.1\r\nHost: " + hp(tlsPort) + "\r\n\r\n",
			"400 Bad Request", "CONNECT host:port"},
		{"origin-form, Host not an edge node", "GET /metrics HTTP/1.1\r\nHost: cloud.example:80\r\n\r\n",
			"400 Bad Request", "this is an HTTP proxy"},
		{"origin-form, no Host", "GET /metrics HTTP/1.0\r\n\r\n",
			"400 Bad Request", "this is an HTTP proxy"},
		{"origin-form to an edge TLS port", "GET /metrics HTTP/1.1\r\nHost: " + hp(tlsPort) + "\r\n\r\n",
			"403 Forbidden", "not a plain-HTTP port"},
		{"bad port", "GET http://" + host + ":0/ HTTP/1.1\r\nHost: x\r\n\r\n",
			"400 Bad Request", "is not 1-65535"},
	} {
		status, body := rawRequest(t, proxy, tc.req)
		if !strings.HasPrefix(status, "HTTP/1.1 "+tc.status+": ") || !strings.Contains(status, tc.reason) || !strings.Contains(body, tc.reason) {
			t.Errorf("%s: got %q / %q, want %s with %q on the status line and in the body", tc.name, status, body, tc.status, tc.reason)
		}
	}
	if n := d.dials.Load(); n != 0 {
		t.Errorf("%d dials for refused requests, want 0", n)
	}

	// Origin-form naming an edge node's HTTP port: the legacy DNAT path.
	status, body := rawRequest(t, proxy, "GET /metrics HTTP/1.1\r\nHost: "+hp(port)+"\r\n\r\n")
	if status != "HTTP/1.1 200 OK" || body != "edge says hi" {
		t.Errorf("origin-form to the edge HTTP port: %q %q", status, body)
	}
}

func TestForwardTruncatedBodyIsAnError(t *testing.T) {
	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		io.WriteString(w, "only half")
		w.(http.Flusher).Flush()
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close()
	})
	_, proxy := startProxy(t, &testDialer{}, nil)
	resp, err := client(proxy, nil).Get(target.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil {
		t.Fatal("a truncated response reached the client as complete")
	}
}

func TestListenerLimits(t *testing.T) {
	_, proxy := startProxy(t, &testDialer{}, nil)

	// Header size.
	status, _ := rawRequest(t, proxy, "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", MaxHeaderBytes+8192)+"\r\n\r\n")
	if !strings.Contains(status, "431") {
		t.Errorf("oversized head: %q, want 431", status)
	}

	// HTTP/2 with prior knowledge is not spoken here.
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
	b, _ := io.ReadAll(c)
	c.Close()
	if !strings.HasPrefix(string(b), "HTTP/1.1 ") || strings.HasPrefix(string(b), "HTTP/1.1 2") {
		t.Errorf("HTTP/2 preface answered with %q, want an HTTP/1.1 error", b)
	}

	// A client that never finishes its head is cut off.
	p := newProxy(t, &testDialer{}, nil)
	p.srv.ReadHeaderTimeout = 200 * time.Millisecond
	_, proxy = serveProxy(t, p)
	c, err = net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET http://127.0.0.1:1/ HTTP/1.1\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	io.ReadAll(c)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("a stalled head held the connection for %s", d)
	}
}

func TestLoopIsDetected(t *testing.T) {
	d := &testDialer{}
	_, proxy := startProxy(t, d, nil)
	// The proxy forwarding to itself: the second hop carries its own Via.
	status, body := rawRequest(t, proxy, "GET http://"+proxy+"/ HTTP/1.1\r\nHost: "+proxy+"\r\n\r\n")
	if !strings.Contains(status, "508 Loop Detected") {
		t.Fatalf("status %q", status)
	}
	if !strings.Contains(body, "request loop") {
		t.Errorf("body %q, want the loop reason", body)
	}
	if n := d.dials.Load(); n != 1 {
		t.Errorf("%d dials, want 1 (the loop stops at the second hop)", n)
	}
}

func TestShutdownClosesTunnels(t *testing.T) {
	hold, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	go func() {
		c, err := hold.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	p, err := New(Options{Dialer: &testDialer{}, Name: "test-proxy"})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: x\r\n\r\n", hold.Addr())
	br := bufio.NewReader(c)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	p.Shutdown(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Shutdown took %s with a 300ms grace", d)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Error("the tunnel is still open after Shutdown")
	}
}
