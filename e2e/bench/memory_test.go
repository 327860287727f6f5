package bench

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// Both benchmarks measure once per b.Loop iteration and are meant for
// -benchtime 1x (see the package doc). Figures are per unit of scale:
// B/conn and B/agent are the growth of the resident set (or Go heap in use)
// from before the connections or agents were opened to after, divided by
// how many.

// warmupDials run before the "before" sample so that what the first
// tunnels initialise once (pools, the router's caches, code pages) is not
// charged to the connections.
const warmupDials = 20

// BenchmarkIdleConns holds BENCH_IDLE_CONNS (default 10,000) idle tunneled
// connections to an echo target behind one agent process and reports what
// each costs the server and the agent: server-B/conn, agent-B/conn
// (resident memory) and server-heap-B/conn, agent-heap-B/conn (Go heap in
// use). Sub-benchmarks by frontend, each with a server and agent of its
// own: connect (HTTP CONNECT over the server's unix socket) and grpc (the
// konnectivity client over the same socket, a gRPC connection per tunnel,
// as kube-apiserver holds them).
func BenchmarkIdleConns(b *testing.B) {
	skipUnlessLinux(b)
	n := envInt(b, "BENCH_IDLE_CONNS", 10000)
	// This process holds the client ends, the server and the agent one
	// file per connection each, the echo process the target ends.
	raiseNoFile(b, uint64(n+1024))
	bins := harness.Build(b)
	for _, fe := range []harness.Frontend{harness.ConnectUnix, harness.GRPCUnix} {
		b.Run(strings.SplitN(string(fe), "/", 2)[0], func(b *testing.B) { benchIdleConns(b, bins, fe, n) })
	}
}

func benchIdleConns(b *testing.B, bins harness.Binaries, fe harness.Frontend, n int) {
	p := harness.NewPKI(b)
	srv := harness.StartServer(b, bins, p, harness.ServerOptions{})
	ag := harness.StartAgent(b, bins, p, srv, harness.AgentOptions{Name: "bench-node", IPv4: "127.0.0.1"})
	srv.WaitAgents(b, 1)
	echo := startEchoProcess(b)
	lc, err := harness.NewLoadClient(srv, p.FrontendClientTLS(b))
	if err != nil {
		b.Fatal(err)
	}
	open := func(ctx context.Context, size int) (net.Conn, error) { return openTunnel(ctx, lc, fe, echo.Addr, size) }
	server := proc{"server", srv.PID(), srv.HealthURL, srv.AdminURL}
	agent := proc{"agent", ag.PID(), ag.HealthURL, ag.AdminURL}
	dialLatency(b, open, warmupDials)

	var srvB, agB, srvHeap, agHeap float64
	for b.Loop() {
		// The baselines are taken once the warm-up dials' connections
		// have had time to close at every hop.
		time.Sleep(settleTime)
		srvG, agG, echoFDs := server.goroutines(b), agent.goroutines(b), echo.FDs(b)
		server.collect(b)
		agent.collect(b)
		srv0, ag0 := server.memory(b), agent.memory(b)

		start := time.Now()
		conns := openIdle(b, open, n)
		opened := time.Since(start)
		// Closed below; this only covers a failure on the way there.
		b.Cleanup(func() { closeAll(conns) })
		if got := echo.FDs(b) - echoFDs; got != n {
			b.Fatalf("the echo process holds %d more files than before, want one per connection (%d)", got, n)
		}
		time.Sleep(settleTime)
		server.collect(b)
		agent.collect(b)
		time.Sleep(settleTime) // let the scavenger return freed pages
		srv1, ag1 := server.memory(b), agent.memory(b)
		srvB, agB = perUnit(srv0.rss, srv1.rss, n), perUnit(ag0.rss, ag1.rss, n)
		srvHeap, agHeap = perUnit(srv0.heap, srv1.heap, n), perUnit(ag0.heap, ag1.heap, n)
		srvG1, agG1 := server.goroutines(b), agent.goroutines(b)
		b.Logf("%d idle connections (%s) opened in %s", n, fe, opened.Round(time.Millisecond))
		b.Logf("server: %s -> %s; goroutines %d -> %d (%.1f per connection)", srv0, srv1, srvG, srvG1, perUnit(int64(srvG), int64(srvG1), n))
		b.Logf("agent:  %s -> %s; goroutines %d -> %d (%.1f per connection)", ag0, ag1, agG, agG1, perUnit(int64(agG), int64(agG1), n))
		name := strings.ReplaceAll(string(fe), "/", "-")
		server.saveProfiles(b, fmt.Sprintf("idle-conns-%s-%d-server", name, n))
		agent.saveProfiles(b, fmt.Sprintf("idle-conns-%s-%d-agent", name, n))

		closeAll(conns)
		waitFor(b, 30*time.Second, "the echo process's connections to close", func() bool { return echo.FDs(b) <= echoFDs })
		server.waitGoroutines(b, srvG+goroutineSlack, 30*time.Second)
		agent.waitGoroutines(b, agG+goroutineSlack, 30*time.Second)
	}
	b.ReportMetric(srvB, "server-B/conn")
	b.ReportMetric(agB, "agent-B/conn")
	b.ReportMetric(srvHeap, "server-heap-B/conn")
	b.ReportMetric(agHeap, "agent-heap-B/conn")
}

// openIdleWorkers bounds how many tunnels are being opened at a time.
const openIdleWorkers = 32

// openIdle opens n tunnels to addr, each established by a 16-byte echo, and
// returns them open and idle. The first failure fails the benchmark.
func openIdle(b *testing.B, open func(context.Context, int) (net.Conn, error), n int) []net.Conn {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conns := make([]net.Conn, n)
	next := make(chan int)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range openIdleWorkers {
		wg.Go(func() {
			for i := range next {
				c, err := open(ctx, 16)
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("connection %d of %d: %w", i+1, n, err)
					}
					mu.Unlock()
					cancel()
					continue
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		if ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		closeAll(conns)
		b.Fatalf("open idle tunnels: %v", firstErr)
	}
	return conns
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// BenchmarkManyAgents connects BENCH_AGENTS (default 10,000) agents to one
// server beside one agent process that serves an echo target, and reports
// what each agent costs the server (server-B/agent, server-heap-B/agent)
// and how a dial through the server slows down with that many agents
// connected: dial-p50-ms-1agent, dial-p50-ms-manyagents and their
// dial-ratio. A dial is a new tunnel by HTTP CONNECT over the unix socket,
// a 64-byte echo and the close.
//
// The many agents are the real agent code run inside this process, sharing
// one client certificate; the server runs --agent-identity=none so that one
// certificate may claim them all.
func BenchmarkManyAgents(b *testing.B) {
	skipUnlessLinux(b)
	count := envInt(b, "BENCH_AGENTS", 10000)
	// One agent connection each in this process and in the server.
	raiseNoFile(b, uint64(count+1024))

	bins := harness.Build(b)
	p := harness.NewPKI(b)
	srv := harness.StartServer(b, bins, p, harness.ServerOptions{ExtraArgs: []string{"--agent-identity=none"}})
	harness.StartAgent(b, bins, p, srv, harness.AgentOptions{Name: "bench-node", IPv4: "127.0.0.1"})
	srv.WaitAgents(b, 1)
	echo := harness.StartEcho(b, "127.0.0.1")
	server := proc{"server", srv.PID(), srv.HealthURL, srv.AdminURL}
	lc, err := harness.NewLoadClient(srv, p.FrontendClientTLS(b))
	if err != nil {
		b.Fatal(err)
	}
	open := func(ctx context.Context, size int) (net.Conn, error) {
		return openTunnel(ctx, lc, harness.ConnectUnix, echo.Addr, size)
	}

	certFile, keyFile := p.AgentCert(b, "bench-fleet", "system:node:bench-fleet")
	host, _, err := net.SplitHostPort(srv.AgentAddr)
	if err != nil {
		b.Fatalf("server agent address %q: %v", srv.AgentAddr, err)
	}
	tlsCfg, err := tlsutil.ClientConfig(p.ClusterCA, certFile, keyFile, host)
	if err != nil {
		b.Fatalf("TLS for the in-process agents: %v", err)
	}
	quietKlog(b)
	dialLatency(b, open, warmupDials)

	const samples = 200
	var perAgent, heapPerAgent float64
	var p50One, p50Many time.Duration
	for b.Loop() {
		srvG := server.goroutines(b)
		time.Sleep(settleTime)
		before := server.memory(b)
		var p90One time.Duration
		p50One, p90One = dialLatency(b, open, samples)

		start := time.Now()
		f, err := startFleet(srv.AgentAddr, tlsCfg, count, 200, 3*time.Minute)
		if err != nil {
			b.Fatalf("connect %d agents: %v", count, err)
		}
		// Stopped below; this only covers a failure on the way there,
		// and runs before the server is stopped.
		b.Cleanup(func() { f.stop(time.Minute) })
		waitFor(b, time.Minute, fmt.Sprintf("the server to count %d connected agents", count+1), func() bool {
			v, err := srv.Metric(harness.ConnectedAgentsMetric)
			return err == nil && v == float64(count+1)
		})
		connected := time.Since(start)
		time.Sleep(settleTime)
		after, srvG1 := server.memory(b), server.goroutines(b)
		perAgent, heapPerAgent = perUnit(before.rss, after.rss, count), perUnit(before.heap, after.heap, count)
		server.saveProfiles(b, fmt.Sprintf("many-agents-%d-server", count))

		var p90Many time.Duration
		p50Many, p90Many = dialLatency(b, open, samples)
		c50, c99, cMax := f.connectQuantiles()
		b.Logf("%d agents connected in %s, 200 at a time; each took p50 %s, p99 %s, max %s", count, connected.Round(time.Millisecond),
			c50.Round(time.Millisecond), c99.Round(time.Millisecond), cMax.Round(time.Millisecond))
		b.Logf("server: %s -> %s; goroutines %d -> %d (%.1f per agent)", before, after, srvG, srvG1, perUnit(int64(srvG), int64(srvG1), count))
		b.Logf("dial p50 %.3f -> %.3f ms, p90 %.3f -> %.3f ms", ms(p50One), ms(p50Many), ms(p90One), ms(p90Many))

		if err := f.stop(time.Minute); err != nil {
			b.Fatal(err)
		}
		waitFor(b, time.Minute, "the server to count only the agent process", func() bool {
			v, err := srv.Metric(harness.ConnectedAgentsMetric)
			return err == nil && v == 1
		})
		server.waitGoroutines(b, srvG+goroutineSlack, 30*time.Second)
	}
	b.ReportMetric(perAgent, "server-B/agent")
	b.ReportMetric(heapPerAgent, "server-heap-B/agent")
	b.ReportMetric(ms(p50One), "dial-p50-ms-1agent")
	b.ReportMetric(ms(p50Many), "dial-p50-ms-manyagents")
	b.ReportMetric(float64(p50Many)/float64(p50One), "dial-ratio")
}

// waitFor polls cond until it holds, failing the benchmark after timeout.
func waitFor(b *testing.B, timeout time.Duration, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
