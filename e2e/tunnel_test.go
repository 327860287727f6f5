package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// These tests run edge-tunnel-server and edge-tunnel-agent as separate
// processes built from cmd/, and drive them with the real
// konnectivity-client in the version kube-apiserver 1.35 links (v0.31.2) and
// the newest (v0.37.0), and with HTTP CONNECT written exactly as
// kube-apiserver writes it. All traffic stays on loopback: agents claim
// 127.0.0.1 and 127.0.0.2 as their node addresses, and the targets listen
// there.

func TestMain(m *testing.M) { harness.Main(m) }

const (
	mib = 1 << 20
	// opTimeout is konnclient's hard limit for one operation.
	opTimeout = 30 * time.Second
	// errorBudget is how fast a failure must reach the client.
	errorBudget = time.Second
)

// env is one server with the PKI and binaries it was started from.
type env struct {
	bins   harness.Binaries
	pki    *harness.PKI
	srv    *harness.Server
	agents int
}

func newEnv(t *testing.T, serverArgs ...string) *env {
	t.Helper()
	bins := harness.Build(t)
	p := harness.NewPKI(t)
	srv := harness.StartServer(t, bins, p, harness.ServerOptions{ExtraArgs: serverArgs})
	return &env{bins: bins, pki: p, srv: srv}
}

// addAgent starts an agent and waits until the server counts it.
func (e *env) addAgent(t *testing.T, opts harness.AgentOptions) *harness.Agent {
	t.Helper()
	a := harness.StartAgent(t, e.bins, e.pki, e.srv, opts)
	e.agents++
	e.srv.WaitAgents(t, e.agents)
	return a
}

// targets are the services on one agent's node address.
type targets struct {
	echo   *harness.Echo
	stream *harness.Streamer
	sink   *harness.Sink
	http   string
	closed string
}

func startTargets(t *testing.T, host string) targets {
	t.Helper()
	return targets{
		echo:   harness.StartEcho(t, host),
		stream: harness.StartStreamer(t, host),
		sink:   harness.StartSink(t, host),
		http:   harness.StartHTTP(t, host),
		closed: harness.ClosedPort(t, host),
	}
}

type konnClient struct {
	version string
	bin     string
}

func konnClients(b harness.Binaries) []konnClient {
	return []konnClient{{"v0.31.2", b.KonnV031}, {"v0.37.0", b.KonnV037}}
}

// node is an agent with its targets.
type node struct {
	name    string
	agent   *harness.Agent
	targets targets
}

// twoNodes starts the two kinds of agent: one with the defaults, which
// speaks the mux extension (every connection on one stream, each with its
// own window), and an "upstream-style" one with --conn-streams=false that
// speaks only the single-stream konnectivity protocol. (The third, one
// gRPC stream per connection, is covered in pkg/server's tests.)
func twoNodes(t *testing.T, e *env) []node {
	t.Helper()
	streams := e.addAgent(t, harness.AgentOptions{Name: "edge-streams", IPv4: "127.0.0.1"})
	single := e.addAgent(t, harness.AgentOptions{Name: "edge-single", IPv4: "127.0.0.2", SingleStream: true})
	return []node{
		{"mux agent", streams, startTargets(t, "127.0.0.1")},
		{"upstream-style agent", single, startTargets(t, "127.0.0.2")},
	}
}

func metric(t *testing.T, get func(string, ...string) (float64, error), name string, labels ...string) float64 {
	t.Helper()
	v, err := get(name, labels...)
	if err != nil {
		t.Fatalf("read metric: %v", err)
	}
	return v
}

func checkKonn(t *testing.T, r harness.KonnResult, wantClient string) {
	t.Helper()
	if r.Client != wantClient {
		t.Errorf("konnclient linked konnectivity-client %s, want %s", r.Client, wantClient)
	}
	if !r.OK {
		t.Fatalf("operation failed: %s (after %.0f ms)\nkonnclient stderr:\n%s", r.Error, r.Millis, lastLines(r.Stderr, 20))
	}
	if r.CloseErrors > 0 || r.MaxCloseMillis > 1000 {
		t.Errorf("close: %d errors, slowest %.0f ms; want CLOSE_RSP promptly", r.CloseErrors, r.MaxCloseMillis)
	}
}

// TestKonnectivityClient moves data through the gRPC frontend on the unix
// socket with both konnectivity-client versions and both kinds of agent.
func TestKonnectivityClient(t *testing.T) {
	e := newEnv(t)
	nodes := twoNodes(t, e)

	if v := metric(t, e.srv.Metric, "edge_tunnel_server_agent_connections", `mode="mux"`); v != 1 {
		t.Errorf("server counts %v mux agent connections, want 1", v)
	}
	if v := metric(t, e.srv.Metric, "edge_tunnel_server_agent_connections", `mode="single-stream"`); v != 1 {
		t.Errorf("server counts %v single-stream agent connections, want 1 (the --conn-streams=false agent)", v)
	}

	const size = 8 * mib
	for _, n := range nodes {
		dialsBefore := metric(t, n.agent.Metric, "edge_tunnel_agent_dials_total", `result="ok"`)
		ops := 0
		for _, c := range konnClients(e.bins) {
			t.Run(n.name+"/"+c.version+"/echo", func(t *testing.T) {
				ops++
				r := harness.RunKonn(t, c.bin, e.srv, "echo", n.targets.echo.Addr, opTimeout, "-size", fmt.Sprint(256<<10))
				checkKonn(t, r, c.version)
				if r.Bytes != 256<<10 {
					t.Errorf("echoed %d bytes, want %d", r.Bytes, 256<<10)
				}
			})
			t.Run(n.name+"/"+c.version+"/http", func(t *testing.T) {
				ops++
				r := harness.RunKonn(t, c.bin, e.srv, "http", n.targets.http, opTimeout, "-path", "/containerLogs/ns/pod/c")
				checkKonn(t, r, c.version)
				if r.Status != http.StatusOK || r.Body != harness.HTTPBody+"/containerLogs/ns/pod/c" {
					t.Errorf("GET through the tunnel: status %d body %q", r.Status, r.Body)
				}
			})
			t.Run(n.name+"/"+c.version+"/download", func(t *testing.T) {
				ops++
				r := harness.RunKonn(t, c.bin, e.srv, "download", n.targets.stream.Addr, opTimeout, "-size", fmt.Sprint(size))
				checkKonn(t, r, c.version)
				if r.Bytes != size {
					t.Errorf("downloaded %d bytes, want %d", r.Bytes, size)
				}
				t.Logf("8 MiB download in %.0f ms", r.Millis)
			})
			t.Run(n.name+"/"+c.version+"/upload", func(t *testing.T) {
				ops++
				before := n.targets.sink.Received.Load()
				r := harness.RunKonn(t, c.bin, e.srv, "upload", n.targets.sink.Addr, opTimeout, "-size", fmt.Sprint(size))
				checkKonn(t, r, c.version)
				if got := n.targets.sink.Received.Load() - before; got != size {
					t.Errorf("sink received %d matching bytes, want %d", got, size)
				}
				t.Logf("8 MiB upload in %.0f ms", r.Millis)
			})
		}
		// The traffic must really have gone through this node's agent,
		// not been dialed directly by the server.
		if got := metric(t, n.agent.Metric, "edge_tunnel_agent_dials_total", `result="ok"`) - dialsBefore; got < float64(ops) {
			t.Errorf("%s counted %v successful dials for %d operations; the server did not route them through it", n.name, got, ops)
		}
	}
}

// connectVia opens a frontend connection: "uds" or "tcp" (TLS with the
// kube-apiserver client certificate from the frontend CA).
func connectVia(t *testing.T, e *env, via string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var c net.Conn
	var err error
	switch via {
	case "uds":
		c, err = e.srv.DialUDS(ctx)
	case "tcp":
		c, err = e.srv.DialFrontendTLS(ctx, e.pki.FrontendClientTLS(t))
	default:
		t.Fatalf("unknown frontend %q", via)
	}
	if err != nil {
		t.Fatalf("open frontend connection over %s: %v", via, err)
	}
	t.Cleanup(func() { c.Close() })
	// Unix and TLS conns support deadlines: nothing below can hang.
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	return c
}

// TestHTTPConnect tunnels through the HTTP CONNECT frontend on the unix
// socket and on TCP with mutual TLS, with kube-apiserver's exact request and
// its checks on the response.
func TestHTTPConnect(t *testing.T) {
	e := newEnv(t)
	nodes := twoNodes(t, e)

	for _, via := range []string{"uds", "tcp"} {
		for _, n := range nodes {
			t.Run(via+"/"+n.name+"/echo", func(t *testing.T) {
				c := connectVia(t, e, via)
				res, err := harness.Connect(c, n.targets.echo.Addr)
				if err != nil {
					t.Fatalf("CONNECT: %v (status %d, %d bytes buffered)", err, res.Status, res.Buffered)
				}
				if err := harness.CheckEcho(c, mib); err != nil {
					t.Fatal(err)
				}
			})
			t.Run(via+"/"+n.name+"/http", func(t *testing.T) {
				c := connectVia(t, e, via)
				if res, err := harness.Connect(c, n.targets.http); err != nil {
					t.Fatalf("CONNECT: %v (status %d, %d bytes buffered)", err, res.Status, res.Buffered)
				}
				fmt.Fprintf(c, "GET /stats/summary HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", n.targets.http)
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatalf("read HTTP response through the tunnel: %v", err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK || string(body) != harness.HTTPBody+"/stats/summary" {
					t.Fatalf("GET through the tunnel: status %d body %q err %v", resp.StatusCode, body, err)
				}
			})
			t.Run(via+"/"+n.name+"/download", func(t *testing.T) {
				c := connectVia(t, e, via)
				if res, err := harness.Connect(c, n.targets.stream.Addr); err != nil {
					t.Fatalf("CONNECT: %v (status %d, %d bytes buffered)", err, res.Status, res.Buffered)
				}
				var hdr [8]byte
				binary.BigEndian.PutUint64(hdr[:], 8*mib)
				if _, err := c.Write(hdr[:]); err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(c)
				if err != nil {
					t.Fatalf("download after %d bytes: %v", len(got), err)
				}
				want := make([]byte, 8*mib)
				harness.FillPattern(want, 0)
				if len(got) != len(want) {
					t.Fatalf("the tunnel ended with a clean EOF after %d of %d bytes: the download was silently truncated", len(got), len(want))
				}
				if !bytes.Equal(got, want) {
					t.Fatal("downloaded bytes differ from the pattern sent")
				}
			})
		}
	}

	t.Run("tcp/no client certificate is rejected", func(t *testing.T) {
		expectFrontendRejects(t, e, e.pki.FrontendTLSWithoutClientCert(t), nodes[0].targets.echo.Addr)
	})
	t.Run("tcp/client certificate from the cluster CA is rejected", func(t *testing.T) {
		cfg := e.pki.FrontendTLSWithoutClientCert(t)
		certPath, keyPath := e.pki.AgentCert(t, "intruder", "system:node:edge-streams")
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = append(cfg.Certificates, cert)
		expectFrontendRejects(t, e, cfg, nodes[0].targets.echo.Addr)
	})
}

// expectFrontendRejects requires that a TLS client configured with cfg gets
// no tunnel from the TCP frontend. With TLS 1.3 the client's handshake may
// succeed and the server's rejection arrives with the first read, so the
// CONNECT exchange is attempted too.
func expectFrontendRejects(t *testing.T, e *env, cfg *tls.Config, target string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.srv.DialFrontendTLS(ctx, cfg)
	if err != nil {
		t.Logf("rejected at the handshake: %v", err)
		return
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	res, err := harness.Connect(c, target)
	if err == nil || res.Status == http.StatusOK {
		t.Fatalf("the TCP frontend gave a tunnel (status %d) to a client without a certificate from the frontend CA", res.Status)
	}
	t.Logf("rejected: %v", err)
}

// TestErrorsReachTheClient checks that failed dials come back within a
// second with a message that names the problem, through both frontends.
// The server runs with --direct-dial=false, so a host no agent serves is
// refused instead of dialed from the server.
func TestErrorsReachTheClient(t *testing.T) {
	e := newEnv(t, "--direct-dial=false")
	e.addAgent(t, harness.AgentOptions{Name: "edge-errors", IPv4: "127.0.0.1"})
	closed := harness.ClosedPort(t, "127.0.0.1")
	const unknown = "node-unknown:10250"

	cases := []struct {
		name, addr string
		// want is a substring the error text must contain.
		want string
	}{
		{"no agent for the host", unknown, "node-unknown"},
		{"refused on the edge", closed, "refused"},
	}
	for _, tc := range cases {
		for _, c := range konnClients(e.bins) {
			t.Run("grpc/"+c.version+"/"+tc.name, func(t *testing.T) {
				r := harness.RunKonn(t, c.bin, e.srv, "dial-error", tc.addr, opTimeout)
				if !r.OK {
					t.Fatalf("dial of %s: %s", tc.addr, r.Error)
				}
				if !strings.Contains(strings.ToLower(r.Error), tc.want) {
					t.Errorf("dial error %q does not mention %q", r.Error, tc.want)
				}
				if d := r.MaxDialMillis(); d > float64(errorBudget.Milliseconds()) {
					t.Errorf("the error took %.0f ms to reach the client, want < %s", d, errorBudget)
				}
				t.Logf("client saw: %s", r.Error)
			})
		}
		for _, via := range []string{"uds", "tcp"} {
			t.Run("connect/"+via+"/"+tc.name, func(t *testing.T) {
				c := connectVia(t, e, via)
				start := time.Now()
				res, err := harness.Connect(c, tc.addr)
				took := time.Since(start)
				if err == nil {
					t.Fatalf("CONNECT %s succeeded, want an error status", tc.addr)
				}
				switch res.Status {
				case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
				default:
					t.Fatalf("CONNECT %s: status %d (%v), want 502, 503 or 504", tc.addr, res.Status, err)
				}
				if !strings.Contains(strings.ToLower(res.Reason), tc.want) {
					t.Errorf("CONNECT reason %q does not mention %q", res.Reason, tc.want)
				}
				if took > errorBudget {
					t.Errorf("the error took %s to reach the client, want < %s", took, errorBudget)
				}
				t.Logf("client saw: %s", res.Reason)
			})
		}
	}
}

// TestAgentKilledMidStream kills the agent (SIGKILL, no goodbye) during a
// download; the client must see the end of its connection within a second
// rather than hang.
func TestAgentKilledMidStream(t *testing.T) {
	bins := harness.Build(t)
	// An endless download: far more than can move before the kill.
	const endless = 1 << 40

	for _, c := range konnClients(bins) {
		t.Run("grpc/"+c.version, func(t *testing.T) {
			e := newEnv(t)
			a := e.addAgent(t, harness.AgentOptions{Name: "edge-doomed", IPv4: "127.0.0.1"})
			stream := harness.StartStreamer(t, "127.0.0.1")
			done := harness.StartKonn(c.bin, e.srv, "download", stream.Addr, opTimeout, "-size", fmt.Sprint(endless))
			waitFlowing(t, stream, done)
			killed := time.Now()
			a.Kill()
			select {
			case r := <-done:
				took := time.Since(killed)
				if r.OK {
					t.Fatalf("download reported success after the agent was killed")
				}
				if took > errorBudget {
					t.Errorf("client saw the end %s after the agent died, want < %s", took, errorBudget)
				}
				t.Logf("after %s and %d bytes the client saw: %s", took.Round(time.Millisecond), r.Bytes, r.Error)
			case <-time.After(10 * time.Second):
				t.Fatalf("client still downloading 10 s after the agent was killed")
			}
		})
	}
	for _, via := range []string{"uds", "tcp"} {
		t.Run("connect/"+via, func(t *testing.T) {
			e := newEnv(t)
			a := e.addAgent(t, harness.AgentOptions{Name: "edge-doomed", IPv4: "127.0.0.1"})
			stream := harness.StartStreamer(t, "127.0.0.1")
			c := connectVia(t, e, via)
			if res, err := harness.Connect(c, stream.Addr); err != nil {
				t.Fatalf("CONNECT: %v (status %d)", err, res.Status)
			}
			var hdr [8]byte
			binary.BigEndian.PutUint64(hdr[:], endless)
			if _, err := c.Write(hdr[:]); err != nil {
				t.Fatal(err)
			}
			ended := make(chan error, 1)
			go func() {
				_, err := io.Copy(io.Discard, c)
				ended <- err
			}()
			waitFlowing(t, stream, nil)
			killed := time.Now()
			a.Kill()
			select {
			case err := <-ended:
				took := time.Since(killed)
				if took > errorBudget {
					t.Errorf("client saw the end %s after the agent died, want < %s", took, errorBudget)
				}
				t.Logf("after %s the client saw: %v (nil is EOF)", took.Round(time.Millisecond), err)
			case <-time.After(10 * time.Second):
				t.Fatalf("client still reading 10 s after the agent was killed")
			}
		})
	}
}

// waitFlowing waits until the streamer has sent a few MiB, so the kill
// lands mid-stream.
func waitFlowing(t *testing.T, s *harness.Streamer, done <-chan harness.KonnResult) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.Sent.Load() < 4*mib {
		select {
		case r := <-done:
			t.Fatalf("download ended before the kill: ok=%v error=%s", r.OK, r.Error)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d bytes streamed within 10 s", s.Sent.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// usage is a leak probe of one process.
type usage struct {
	name       string
	goroutines func() (int, error)
	fds        func() (int, error)
}

type snapshot struct{ goroutines, fds int }

func (u usage) take(t *testing.T) snapshot {
	t.Helper()
	g, err := u.goroutines()
	if err != nil {
		t.Fatalf("%s: %v", u.name, err)
	}
	f, err := u.fds()
	if err != nil {
		t.Fatalf("%s: %v", u.name, err)
	}
	return snapshot{g, f}
}

// TestDialCloseCyclesDoNotLeak runs 1,000 dial/echo/close cycles and 200
// dials cancelled while racing the DIAL_RSP (the client then sends
// DIAL_CLS) against each kind of agent, and requires that afterwards the
// server's and the agents' goroutines and file descriptors are back where
// they were, the open-connection gauges are 0, and the targets hold no
// connection (a DIAL_RSP that loses the race must not leave the agent's
// connection open, upstream's leak).
func TestDialCloseCyclesDoNotLeak(t *testing.T) {
	e := newEnv(t)
	nodes := twoNodes(t, e)

	probes := []usage{{"server", e.srv.Goroutines, e.srv.FDs}}
	for _, n := range nodes {
		probes = append(probes, usage{n.name, n.agent.Goroutines, n.agent.FDs})
	}
	clients := konnClients(e.bins)

	// Warm up, so lazily started goroutines and pooled buffers exist
	// before the baseline.
	for _, n := range nodes {
		checkKonn(t, harness.RunKonn(t, clients[0].bin, e.srv, "cycles", n.targets.echo.Addr, opTimeout, "-n", "20"), clients[0].version)
	}
	time.Sleep(200 * time.Millisecond)
	before := make([]snapshot, len(probes))
	for i, p := range probes {
		before[i] = p.take(t)
	}

	for _, n := range nodes {
		for _, c := range clients {
			r := harness.RunKonn(t, c.bin, e.srv, "cycles", n.targets.echo.Addr, 2*opTimeout, "-n", "500")
			checkKonn(t, r, c.version)
			t.Logf("%s, %s: 500 cycles in %.0f ms, slowest dial %.1f ms, slowest close %.1f ms",
				n.name, c.version, r.Millis, r.MaxDialMillis(), r.MaxCloseMillis)
			r = harness.RunKonn(t, c.bin, e.srv, "cancel", n.targets.echo.Addr, opTimeout, "-n", "100", "-cancel-spread", "2ms")
			checkKonn(t, r, c.version)
			t.Logf("%s, %s: 100 cancelled dials: %d cancelled before DIAL_RSP, %d connected first",
				n.name, c.version, r.Cancelled, r.Connected)
			if r.Cancelled == 0 {
				t.Errorf("%s, %s: no dial was cancelled, so DIAL_CLS was not exercised", n.name, c.version)
			}
		}
	}

	// Give the processes a moment to wind down what the clients closed.
	const tolerance = 8
	deadline := time.Now().Add(5 * time.Second)
	for {
		var problems []string
		for i, p := range probes {
			now := p.take(t)
			if now.goroutines > before[i].goroutines+tolerance {
				problems = append(problems, fmt.Sprintf("%s goroutines %d -> %d", p.name, before[i].goroutines, now.goroutines))
			}
			if now.fds > before[i].fds+tolerance {
				problems = append(problems, fmt.Sprintf("%s fds %d -> %d", p.name, before[i].fds, now.fds))
			}
		}
		if v := metric(t, e.srv.Metric, "edge_tunnel_server_open_connections"); v != 0 {
			problems = append(problems, fmt.Sprintf("server open_connections %v", v))
		}
		for _, n := range nodes {
			if v := metric(t, n.agent.Metric, "edge_tunnel_agent_open_connections"); v != 0 {
				problems = append(problems, fmt.Sprintf("%s open_connections %v", n.name, v))
			}
			if open := n.targets.echo.Open(); open != 0 {
				problems = append(problems, fmt.Sprintf("echo target behind the %s still holds %d connections", n.name, open))
			}
		}
		if len(problems) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("5 s after the cycles: %s", strings.Join(problems, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for i, p := range probes {
		now := p.take(t)
		t.Logf("%s: goroutines %d -> %d, fds %d -> %d", p.name, before[i].goroutines, now.goroutines, before[i].fds, now.fds)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
