package e2e_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// churnSeedEnv replays a churn run: the test logs the seed it drew.
const churnSeedEnv = "EDGE_TUNNEL_CHURN_SEED"

const (
	churnDials       = 10_000
	churnShortDials  = 2_000
	churnConcurrency = 32
	churnMaxSize     = 256 << 10
	// churnSettle bounds how long the processes may take to give back
	// what the dials used once the last one has ended.
	churnSettle = 10 * time.Second
)

// TestChurn runs 10,000 dials (2,000 with -short) at 32 at a time through
// all four frontend paths (gRPC with konnectivity-client and HTTP CONNECT,
// each over the UNIX socket and TCP with mutual TLS) to three agents, two
// speaking the per-connection stream extension and one the single-stream
// protocol. Of the dials, 10% are abandoned mid-dial, 5% go to a port the
// server does not forward and 5% to a forwarded port nothing listens on;
// the rest echo, download or upload a random size up to 256 KiB. Every
// transfer must move exactly its bytes (checked byte for byte or by
// SHA-256), every refused dial must fail with the error its cause calls
// for, and afterwards the goroutines, file descriptors and open-connection
// gauges of the server and of every agent must be back at their starting
// values within 10 s.
func TestChurn(t *testing.T) {
	seed := churnSeed(t)
	dials := churnDials
	if testing.Short() {
		dials = churnShortDials
	}
	t.Logf("seed %d (replay with %s=%d), %d dials, %d at a time", seed, churnSeedEnv, seed, dials, churnConcurrency)
	quietKlog(t)

	e := newEnv(t)
	hosts := []string{"127.0.0.1", "127.0.0.2", "127.0.0.3"}
	var agents []*harness.Agent
	var nodes []harness.NodeTargets
	for i, host := range hosts {
		agents = append(agents, e.addAgent(t, harness.AgentOptions{
			Name: fmt.Sprintf("edge-churn-%d", i+1), IPv4: host, SingleStream: i == 2,
		}))
		nodes = append(nodes, harness.StartNodeTargets(t, host))
	}
	client, err := harness.NewLoadClient(e.srv, e.pki.FrontendClientTLS(t))
	if err != nil {
		t.Fatal(err)
	}

	probes := []usage{{"server", e.srv.Goroutines, e.srv.FDs}}
	gauges := []gauge{
		{"server", e.srv.Metric, "edge_tunnel_server_open_connections"},
		{"server", e.srv.Metric, "edge_tunnel_server_connected_agents"},
		{"server", e.srv.Metric, "edge_tunnel_server_agent_connections"},
	}
	for _, a := range agents {
		probes = append(probes, usage{a.Name, a.Goroutines, a.FDs})
		gauges = append(gauges,
			gauge{a.Name, a.Metric, "edge_tunnel_agent_open_connections"},
			gauge{a.Name, a.Metric, "edge_tunnel_agent_server_connections"})
	}
	// Nothing has been dialed yet: no open connections, every agent
	// connected.
	startGauges := readGauges(t, gauges)

	// Warm up with every kind of operation on every path, so lazily
	// started goroutines and pooled buffers exist before the baseline.
	var warm []harness.Op
	for _, fe := range harness.Frontends {
		for _, n := range nodes {
			for _, k := range []harness.OpKind{harness.OpEcho, harness.OpDownload, harness.OpUpload, harness.OpUnforwarded, harness.OpClosed} {
				warm = append(warm, harness.Op{Kind: k, Frontend: fe, Node: n, Size: 64 << 10, Seed: 1})
			}
		}
	}
	if s := runOps(client, warm, churnConcurrency); s.unexpected > 0 {
		t.Fatalf("warm-up: %d unexpected errors: %s", s.unexpected, strings.Join(s.firstErrors, "\n"))
	}
	waitSettled(t, probes, nil, gauges, startGauges, nodes, churnSettle)
	before := make([]snapshot, len(probes))
	for i, p := range probes {
		before[i] = p.take(t)
	}
	okBefore := make([]float64, len(agents))
	for i, a := range agents {
		okBefore[i] = metric(t, a.Metric, "edge_tunnel_agent_dials_total", `result="ok"`)
	}

	ops, perNode := churnOps(seed, dials, nodes)
	start := time.Now()
	s := runOps(client, ops, churnConcurrency)
	took := time.Since(start)
	t.Logf("%d dials in %s (%.0f dials/s), %.1f MiB moved: %s",
		dials, took.Round(time.Millisecond), float64(dials)/took.Seconds(), float64(s.bytes)/mib, s)

	if s.unexpected > 0 {
		t.Errorf("%d of %d operations failed unexpectedly; the first:\n%s", s.unexpected, dials, strings.Join(s.firstErrors, "\n"))
	}
	if s.cancelled == 0 {
		t.Errorf("no dial was abandoned before it completed (%d completed first), so mid-dial cancellation was not exercised", s.connected)
	}
	// Every transfer to a node went through that node's agent rather
	// than a direct dial (cancelled dials that won their race add more).
	for i, a := range agents {
		got := metric(t, a.Metric, "edge_tunnel_agent_dials_total", `result="ok"`) - okBefore[i]
		if got < float64(perNode[i]) {
			t.Errorf("%s counted %v successful dials for %d transfers to its node; the server did not route them through it", a.Name, got, perNode[i])
		}
	}

	waitSettled(t, probes, before, gauges, startGauges, nodes, churnSettle)
	for i, p := range probes {
		now := p.take(t)
		t.Logf("%s: goroutines %d -> %d, fds %d -> %d", p.name, before[i].goroutines, now.goroutines, before[i].fds, now.fds)
	}
}

// churnSeed is the seed from the environment, or a new one.
func churnSeed(t *testing.T) uint64 {
	t.Helper()
	if v := os.Getenv(churnSeedEnv); v != "" {
		seed, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer (the seed a churn run logged)", churnSeedEnv, v)
		}
		return seed
	}
	return rand.Uint64()
}

// quietKlog discards konnectivity-client's log lines (a cancelled dial
// logs a dropped DIAL_RSP): at this volume they would bury the test's own
// output.
func quietKlog(t *testing.T) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("logtostderr", "false")
	_ = fs.Set("alsologtostderr", "false")
	_ = fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
	t.Cleanup(func() {
		_ = fs.Set("logtostderr", "true")
		_ = fs.Set("stderrthreshold", "ERROR")
	})
}

// churnOps draws the operations: exact shares of cancelled and refused
// dials, the rest transfers, in a shuffled order. perNode counts the
// transfers to each node.
func churnOps(seed uint64, dials int, nodes []harness.NodeTargets) (ops []harness.Op, perNode []int) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	kinds := make([]harness.OpKind, dials)
	for i := range kinds {
		switch {
		case i < dials/10:
			kinds[i] = harness.OpCancel
		case i < dials/10+dials/20:
			kinds[i] = harness.OpUnforwarded
		case i < dials/5:
			kinds[i] = harness.OpClosed
		default:
			kinds[i] = []harness.OpKind{harness.OpEcho, harness.OpDownload, harness.OpUpload}[rng.IntN(3)]
		}
	}
	rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
	perNode = make([]int, len(nodes))
	for _, k := range kinds {
		n := rng.IntN(len(nodes))
		op := harness.Op{
			Kind:     k,
			Frontend: harness.Frontends[rng.IntN(len(harness.Frontends))],
			Node:     nodes[n],
			Seed:     rng.Uint64(),
		}
		switch k {
		case harness.OpEcho, harness.OpDownload, harness.OpUpload:
			op.Size = harness.LogUniformSize(rng, churnMaxSize)
			perNode[n]++
		case harness.OpCancel:
			// A dial here takes one to several milliseconds, more on
			// a busy machine: spread the cancels before, around and
			// after the DIAL_RSP.
			op.CancelAfter = time.Duration(rng.Int64N(int64(10 * time.Millisecond)))
		}
		ops = append(ops, op)
	}
	return ops, perNode
}

// opStats counts what a batch of operations did.
type opStats struct {
	verified, refused, cancelled, connected, unexpected int
	bytes                                               int64
	firstErrors                                         []string
}

func (s opStats) String() string {
	return fmt.Sprintf("%d transfers verified, %d dials refused as expected, %d cancelled mid-dial, %d completed before their cancel, %d unexpected errors",
		s.verified, s.refused, s.cancelled, s.connected, s.unexpected)
}

// runOps runs ops with at most concurrency at a time, each bounded by
// opTimeout.
func runOps(c *harness.LoadClient, ops []harness.Op, concurrency int) opStats {
	var (
		mu sync.Mutex
		s  opStats
		wg sync.WaitGroup
	)
	next := make(chan harness.Op)
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for op := range next {
				ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				r := c.Run(ctx, op)
				cancel()
				mu.Lock()
				s.bytes += r.Bytes
				switch {
				case r.Err != nil:
					s.unexpected++
					if len(s.firstErrors) < 10 {
						s.firstErrors = append(s.firstErrors, r.Err.Error())
					}
				case r.Outcome == harness.Verified:
					s.verified++
				case r.Outcome == harness.Refused:
					s.refused++
				case r.Outcome == harness.Cancelled:
					s.cancelled++
				case r.Outcome == harness.Connected:
					s.connected++
				}
				mu.Unlock()
			}
		}()
	}
	for _, op := range ops {
		next <- op
	}
	close(next)
	wg.Wait()
	return s
}

// gauge is an open-connection gauge of one process.
type gauge struct {
	name string
	get  func(string, ...string) (float64, error)
	// metric is summed over its label sets.
	metric string
}

func readGauges(t *testing.T, gs []gauge) []float64 {
	t.Helper()
	vs := make([]float64, len(gs))
	for i, g := range gs {
		vs[i] = metric(t, g.get, g.metric)
	}
	return vs
}

// waitSettled waits until every probe is within a small tolerance of its
// baseline snapshot (skipped when baseline is nil), every gauge is back at
// its value in want and no target holds a connection, or fails the test
// after timeout naming what did not come back.
func waitSettled(t *testing.T, probes []usage, baseline []snapshot, gauges []gauge, want []float64, nodes []harness.NodeTargets, timeout time.Duration) {
	t.Helper()
	const tolerance = 8
	deadline := time.Now().Add(timeout)
	for {
		var problems []string
		if baseline != nil {
			for i, p := range probes {
				now := p.take(t)
				if now.goroutines > baseline[i].goroutines+tolerance {
					problems = append(problems, fmt.Sprintf("%s goroutines %d -> %d", p.name, baseline[i].goroutines, now.goroutines))
				}
				if now.fds > baseline[i].fds+tolerance {
					problems = append(problems, fmt.Sprintf("%s fds %d -> %d", p.name, baseline[i].fds, now.fds))
				}
			}
		}
		for i, v := range readGauges(t, gauges) {
			if v != want[i] {
				problems = append(problems, fmt.Sprintf("%s %s %v, want %v", gauges[i].name, gauges[i].metric, v, want[i]))
			}
		}
		for i, n := range nodes {
			if open := n.Open(); open != 0 {
				problems = append(problems, fmt.Sprintf("targets on node %d still hold %d connections", i+1, open))
			}
		}
		if len(problems) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after the dials ended: %s", timeout, strings.Join(problems, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
