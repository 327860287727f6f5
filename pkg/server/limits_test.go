package server_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/httpproxy"
	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
	"github.com/edge-tunnel/edge-tunnel/pkg/router"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

const refusals = "edge_tunnel_server_refusals_total"

// connectOver sends CONNECT target on c and returns the answer's status.
func connectOver(t *testing.T, c net.Conn, target, extra string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n"+extra+"\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("CONNECT %s: %v", target, err)
	}
	return resp
}

func TestDirectDialAllowList(t *testing.T) {
	target := echoServer(t)
	reg := prometheus.NewRegistry()
	allow, err := router.ParseAllow([]string{"10.0.0.0/8", ".svc"})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{directDial: true, registry: reg, configure: func(c *server.Config) {
		c.DirectDialAllow = allow
		c.ProxyAddr = "127.0.0.1:0"
	}})
	for _, fe := range []string{"unix", "proxy"} {
		var c net.Conn
		if fe == "unix" {
			c, err = net.Dial("unix", e.uds)
		} else {
			c, err = net.Dial("tcp", e.srv.Addr("proxy").String())
		}
		if err != nil {
			t.Fatal(err)
		}
		resp := connectOver(t, c, target, "")
		c.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(resp.Status, "--direct-dial-allow=10.0.0.0/8,.svc") {
			t.Errorf("%s: CONNECT %s outside --direct-dial-allow: %s; want 403 naming the flag", fe, target, resp.Status)
		}
	}
	if v := metricValue(t, reg, refusals, "reason", "direct_dial_not_allowed"); v != 2 {
		t.Errorf("direct dial refusals counted: %v, want 2", v)
	}
	// Through the gRPC frontend the client gets the same reason.
	p := openProxy(t, e)
	if rsp := p.dial(t, 1, target); !strings.Contains(rsp.Error, "refused: 127.0.0.1 is outside --direct-dial-allow") {
		t.Errorf("gRPC dial outside --direct-dial-allow: %+v", rsp)
	}

	// Loopback allowed: the same dial goes through.
	allow, _ = router.ParseAllow([]string{"127.0.0.0/8"})
	e2 := newEnv(t, envOptions{directDial: true, configure: func(c *server.Config) { c.DirectDialAllow = allow }})
	c, err := net.Dial("unix", e2.uds)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp := connectOver(t, c, target, ""); resp.StatusCode != 200 {
		t.Errorf("CONNECT inside --direct-dial-allow: %s", resp.Status)
	}
}

func TestPendingDialsPerAgent(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{registry: reg, configure: func(c *server.Config) { c.MaxPendingDialsPerAgent = 2 }})
	a := startUpstreamAgent(t, e, "edge-1")
	release := a.hold("edge-1:81")
	p := openProxy(t, e)
	for r := int64(1); r <= 3; r++ {
		p.send(t, dialReq(r, "tcp", "edge-1:81"))
	}
	// Two dials wait at the agent; the one over the limit is answered at
	// once, whichever of the three it is.
	first := p.await(t, "the refusal", func(pkt *client.Packet) bool { return pkt.Type == client.PacketType_DIAL_RSP }).GetDialResponse()
	if first == nil || !strings.Contains(first.Error, "--max-pending-dials-per-agent") {
		t.Fatalf("first answer %+v; want a refusal naming --max-pending-dials-per-agent", first)
	}
	release()
	for i := 0; i < 2; i++ {
		rsp := p.await(t, "the held dials' answers", func(pkt *client.Packet) bool { return pkt.Type == client.PacketType_DIAL_RSP }).GetDialResponse()
		if rsp.Random == first.Random || rsp.Error != "" || rsp.ConnectID == 0 {
			t.Errorf("dial within the limit: %+v", rsp)
		}
	}
	if n := a.dialsFor("edge-1:81"); n != 2 {
		t.Errorf("the agent got %d dials, want 2", n)
	}
	if v := metricValue(t, reg, refusals, "reason", "agent_pending_dials"); v != 1 {
		t.Errorf("refusals counted: %v, want 1", v)
	}
}

func TestPendingDialsPerStream(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{registry: reg, configure: func(c *server.Config) { c.MaxPendingDialsPerStream = 2 }})
	a := startUpstreamAgent(t, e, "edge-1")
	release := a.hold("edge-1:81")
	p := openProxy(t, e)
	p.send(t, dialReq(1, "tcp", "edge-1:81"), dialReq(2, "tcp", "edge-1:81"), dialReq(3, "tcp", "edge-1:81"))
	if rsp := p.dialRsp(t, 3); !strings.Contains(rsp.Error, "2 dials are already waiting") || !strings.Contains(rsp.Error, "--max-pending-dials-per-stream") {
		t.Errorf("third dial on the stream: %+v; want a refusal naming --max-pending-dials-per-stream", rsp)
	}
	// The limit is per stream: another stream still dials.
	other := openProxy(t, e)
	if rsp := other.dial(t, 1, "edge-1:10250"); rsp.Error != "" {
		t.Errorf("dial on another stream: %+v", rsp)
	}
	release()
	for i := 0; i < 2; i++ {
		rsp := p.await(t, "the held dials' answers", func(pkt *client.Packet) bool { return pkt.Type == client.PacketType_DIAL_RSP }).GetDialResponse()
		if rsp.Random == 3 || rsp.Error != "" {
			t.Errorf("dial within the limit: %+v", rsp)
		}
	}
	if v := metricValue(t, reg, refusals, "reason", "client_pending_dials"); v != 1 {
		t.Errorf("refusals counted: %v, want 1", v)
	}
}

func TestConnectionsPerClient(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{registry: reg, configure: func(c *server.Config) { c.MaxConnectionsPerClient = 2 }})
	addr := e.srv.Addr("frontend").String()
	handshake := func() (*tls.Conn, error) {
		raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil, err
		}
		c := tls.Client(raw, e.clientTL)
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.Handshake(); err != nil {
			raw.Close()
			return nil, err
		}
		return c, nil
	}
	var held []*tls.Conn
	for i := 0; i < 2; i++ {
		c, err := handshake()
		if err != nil {
			t.Fatalf("connection %d within the limit: %v", i+1, err)
		}
		held = append(held, c)
	}
	if c, err := handshake(); err == nil {
		c.Close()
		t.Fatal("a third connection from the same client was accepted")
	}
	if v := metricValue(t, reg, refusals, "reason", "client_connections"); v != 1 {
		t.Errorf("refusals counted: %v, want 1", v)
	}
	// A closed connection gives its slot back.
	held[0].Close()
	waitFor(t, "a freed slot", func() bool {
		c, err := handshake()
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	held[1].Close()
}

func TestProxyToken(t *testing.T) {
	reg := prometheus.NewRegistry()
	target := echoServer(t)
	e := newEnv(t, envOptions{directDial: true, registry: reg, configure: func(c *server.Config) {
		c.ProxyAddr = "127.0.0.1:0"
		c.ProxyToken = "t0ken"
	}})
	for _, h := range []string{"", "Proxy-Authorization: Bearer t0ken\r\n"} {
		c, err := net.Dial("tcp", e.srv.Addr("proxy").String())
		if err != nil {
			t.Fatal(err)
		}
		resp := connectOver(t, c, target, h)
		c.Close()
		want := http.StatusProxyAuthRequired
		if h != "" {
			want = 200
		}
		if resp.StatusCode != want {
			t.Errorf("CONNECT with %q: %s, want %d", h, resp.Status, want)
		}
	}
	if v := metricValue(t, reg, refusals, "reason", "proxy_unauthenticated"); v != 1 {
		t.Errorf("refusals counted: %v, want 1", v)
	}
}

func TestFrontendHeadLimits(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{directDial: true, registry: reg, configure: func(c *server.Config) {
		c.FrontendMaxHeadBytes = 1024
		c.FrontendReadHeaderTimeout = 300 * time.Millisecond
	}})
	// A head over the configured size (far below the 16 KiB default).
	c, err := net.Dial("unix", e.uds)
	if err != nil {
		t.Fatal(err)
	}
	resp := connectOver(t, c, "127.0.0.1:1", "X-Big: "+strings.Repeat("a", 2048)+"\r\n")
	c.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge || !strings.Contains(resp.Status, "larger than 1024 bytes") {
		t.Errorf("CONNECT head over --frontend-max-header-bytes: %s, want 431 naming 1024 bytes", resp.Status)
	}
	if v := metricValue(t, reg, refusals, "reason", "header_too_large"); v != 1 {
		t.Errorf("refusals counted for a head too large: %v, want 1", v)
	}
	// A client that never finishes its head is closed after the configured
	// time: on the socket before its first byte and in the middle of its
	// CONNECT head (told so with a 408), and on the TCP frontend in the TLS
	// handshake. Each is counted once.
	stalls := []struct {
		name, network, send, answer string
	}{
		{"socket, nothing sent", "unix", "", ""},
		{"socket, half a head", "unix", "CONNECT 127.0.0.1:1 HTTP/1.1\r\n", "HTTP/1.1 408 Request Timeout: edge-tunnel-server: request head not complete within 300ms"},
		{"TCP, no TLS handshake", "tcp", "", ""},
	}
	for _, s := range stalls {
		addr := e.uds
		if s.network == "tcp" {
			addr = e.srv.Addr("frontend").String()
		}
		c, err := net.Dial(s.network, addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, s.send)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		got, _ := io.ReadAll(c)
		c.Close()
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("%s: a stalled client was held for %s; want it closed after 300ms", s.name, d)
		}
		if first, _, _ := strings.Cut(string(got), "\r\n"); first != s.answer {
			t.Errorf("%s: answered %q, want %q", s.name, first, s.answer)
		}
	}
	if v := metricValue(t, reg, refusals, "reason", "header_timeout"); v != float64(len(stalls)) {
		t.Errorf("refusals counted for stalled heads: %v, want %d", v, len(stalls))
	}
	if v := metricValue(t, reg, refusals, "reason", "header_too_large"); v != 1 {
		t.Errorf("refusals counted for a head too large after the stalls: %v, want still 1", v)
	}
}

// TestProxyHeadTimeouts checks that the HTTP proxy, plain and with TLS,
// counts the connections net/http closes for a request head not received
// within --proxy-read-header-timeout, and only those: a kept-alive
// connection closed by --proxy-idle-timeout without a byte of a next
// request is not a refusal.
func TestProxyHeadTimeouts(t *testing.T) {
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(target.Close)
	get := "GET " + target.URL + "/ HTTP/1.1\r\nHost: " + strings.TrimPrefix(target.URL, "http://") + "\r\n"
	cases := []struct {
		name      string
		handshake bool   // complete the TLS handshake (with TLS)
		keepAlive bool   // one whole request and its answer first
		send      string // then this, and nothing more
		counted   bool
	}{
		{"new connection, nothing sent", false, false, "", true},
		{"new connection, half a head", true, false, get, true},
		{"kept-alive connection, idle", true, true, "", false},
		{"kept-alive connection, half the next head", true, true, get, true},
	}
	for _, withTLS := range []bool{false, true} {
		t.Run(fmt.Sprintf("tls=%v", withTLS), func(t *testing.T) {
			reg := prometheus.NewRegistry()
			var serverTLS, clientTLS *tls.Config
			if withTLS {
				serverTLS, clientTLS = proxyTLS(t)
			}
			e := newEnv(t, envOptions{directDial: true, registry: reg, configure: func(c *server.Config) {
				c.ProxyAddr = "127.0.0.1:0"
				c.ProxyTLS = serverTLS
				c.ProxyLimits = httpproxy.Limits{ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}
			}})
			want := 0.0
			for _, tc := range cases {
				c, err := net.Dial("tcp", e.srv.Addr("proxy").String())
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if withTLS && tc.handshake {
					tconn := tls.Client(c, clientTLS)
					if err := tconn.Handshake(); err != nil {
						t.Fatalf("TLS handshake with the proxy: %v", err)
					}
					c = tconn
				}
				br := bufio.NewReader(c)
				if tc.keepAlive {
					io.WriteString(c, get+"\r\n")
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						t.Fatalf("%s: first request: %v", tc.name, err)
					}
					body, _ := io.ReadAll(resp.Body)
					if resp.StatusCode != http.StatusOK || string(body) != "ok" {
						t.Fatalf("%s: first request answered %s %q", tc.name, resp.Status, body)
					}
				}
				io.WriteString(c, tc.send)
				start := time.Now()
				rest, _ := io.ReadAll(br)
				c.Close()
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("%s: held for %s; want it closed after 300ms", tc.name, d)
				}
				if len(rest) != 0 {
					t.Errorf("%s: answered %q; net/http closes without an answer", tc.name, rest)
				}
				if tc.counted {
					want++
				}
				// The count happens in the read that fails, before
				// net/http closes: no wait is needed.
				if v := metricValue(t, reg, refusals, "reason", "header_timeout"); v != want {
					t.Errorf("%s: header_timeout refusals %v, want %v", tc.name, v, want)
				}
			}
		})
	}
}

// proxyTLS returns a server config for the HTTP proxy (no client
// certificates) and a client config that trusts it.
func proxyTLS(t *testing.T) (serverCfg, clientCfg *tls.Config) {
	t.Helper()
	ca, err := pki.NewCA("edge-tunnel-proxy-test")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("proxy", []string{"127.0.0.1"}, pki.UsageServer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"proxy": pair}); err != nil {
		t.Fatal(err)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	if serverCfg, err = tlsutil.ServerConfig(f("proxy.crt"), f("proxy.key"), ""); err != nil {
		t.Fatal(err)
	}
	if clientCfg, err = tlsutil.ClientConfig(f("ca.crt"), "", "", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	return serverCfg, clientCfg
}
