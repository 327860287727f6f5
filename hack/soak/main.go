// Command soak runs edge-tunnel-server and a few edge-tunnel-agents as real
// processes on loopback with mutual TLS (started by e2e/harness, as the
// end-to-end tests start them) and drives sustained mixed load through all
// four frontend paths: gRPC with konnectivity-client and HTTP CONNECT, each
// over the UNIX socket and TCP. The load mixes short echoes, large
// downloads and uploads, dials abandoned mid-dial, and dials to ports the
// tunnel must refuse; every transfer is verified byte for byte.
//
// Every -interval it prints throughput, dials per second, unexpected errors,
// and the RSS and goroutines of the server and each agent (from their
// /metrics). It exits 1 on any unexpected error, when a process's memory
// keeps growing (see keepsGrowing for the rule), or when the open
// connections and goroutines do not come back once the load stops.
//
//	go run ./hack/soak -duration 5m    # make soak DURATION=5m
//
// All traffic stays on loopback: the agents claim 127.0.0.1, 127.0.0.2, ...
// as their node addresses and the targets listen there.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

type config struct {
	duration, interval time.Duration
	agents             int
	concurrency        int
	seed               uint64
}

func main() {
	var cfg config
	flag.DurationVar(&cfg.duration, "duration", 5*time.Minute, "how long to drive load")
	flag.DurationVar(&cfg.interval, "interval", 10*time.Second, "how often to print a line of figures")
	flag.IntVar(&cfg.agents, "agents", 3, "edge-tunnel-agents to start (every third speaks the single-stream protocol)")
	flag.IntVar(&cfg.concurrency, "concurrency", 16, "operations in flight at a time")
	flag.Uint64Var(&cfg.seed, "seed", 0, "seed of each worker's sequence of operations (0: a random one, printed)")
	flag.Parse()
	if err := cfg.check(); err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(2)
	}
	if cfg.seed == 0 {
		cfg.seed = rand.Uint64()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := newRunner(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(1)
	}
	code := run(ctx, r, cfg)
	if code != 0 {
		r.Fail()
	}
	r.finish()
	os.Exit(code)
}

func (c config) check() error {
	switch {
	case c.duration <= 0:
		return fmt.Errorf("-duration must be positive, got %s", c.duration)
	case c.interval <= 0 || c.interval > c.duration:
		return fmt.Errorf("-interval must be positive and at most -duration (%s), got %s", c.duration, c.interval)
	case c.agents < 1 || c.agents > 50:
		return fmt.Errorf("-agents must be 1..50 (each takes a 127.0.0.x address), got %d", c.agents)
	case c.concurrency < 1:
		return fmt.Errorf("-concurrency must be at least 1, got %d", c.concurrency)
	}
	return nil
}

// proc is a process the soak watches.
type proc struct {
	name      string
	healthURL string
	process   *harness.Process
	metric    string // its open-connections gauge
	baseline  reading
	samples   []reading
}

// run sets up, drives the load and judges the run; it returns the exit code.
func run(ctx context.Context, r *runner, cfg config) int {
	quietKlog()
	bins := harness.Build(r)
	pki := harness.NewPKI(r)
	srv := harness.StartServer(r, bins, pki, harness.ServerOptions{ID: "soak"})
	procs := []*proc{{name: "server", healthURL: srv.HealthURL, process: srv.Process, metric: "edge_tunnel_server_open_connections"}}
	var nodes []harness.NodeTargets
	for i := range cfg.agents {
		host := fmt.Sprintf("127.0.0.%d", i+1)
		a := harness.StartAgent(r, bins, pki, srv, harness.AgentOptions{
			Name: fmt.Sprintf("edge-soak-%d", i+1), IPv4: host, SingleStream: i%3 == 2,
		})
		procs = append(procs, &proc{name: a.Name, healthURL: a.HealthURL, process: a.Process, metric: "edge_tunnel_agent_open_connections"})
		nodes = append(nodes, harness.StartNodeTargets(r, host))
	}
	srv.WaitAgents(r, cfg.agents)
	client, err := harness.NewLoadClient(srv, pki.FrontendClientTLS(r))
	if err != nil {
		r.Fatal(err)
	}

	// Warm up with every kind of operation on every path and node.
	for _, fe := range harness.Frontends {
		for _, n := range nodes {
			for _, m := range mix {
				op := harness.Op{Kind: m.kind, Frontend: fe, Node: n, Size: 64 << 10, Seed: 1}
				opCtx, cancel := context.WithTimeout(ctx, opTimeout)
				res := client.Run(opCtx, op)
				cancel()
				if res.Err != nil {
					fmt.Fprintf(os.Stderr, "soak: warm-up: %v\n", res.Err)
					return 1
				}
			}
		}
	}
	if problems := settle(procs, nil, 10*time.Second); problems != "" {
		fmt.Fprintf(os.Stderr, "soak: after the warm-up: %s\n", problems)
		return 1
	}
	for _, p := range procs {
		b, err := read(p.healthURL)
		if err != nil {
			fmt.Fprintf(os.Stderr, "soak: %s: %v\n", p.name, err)
			return 1
		}
		p.baseline = b
	}

	fmt.Printf("soak: %s of load, %d in flight, %d agents, seed %d (-seed %d draws the same operations)\n",
		cfg.duration, cfg.concurrency, cfg.agents, cfg.seed, cfg.seed)
	fmt.Printf("soak: mix %s; frontends %v\n", mixString(), harness.Frontends)
	header := fmt.Sprintf("%8s %9s %8s %7s", "elapsed", "MiB/s", "dials/s", "errors")
	for _, p := range procs {
		header += fmt.Sprintf("  %-22s", p.name)
	}
	fmt.Println(header + "   (per process: RSS, goroutines)")

	var (
		c          counters
		errMu      sync.Mutex
		errPrinted int
	)
	report := func(err error) {
		errMu.Lock()
		defer errMu.Unlock()
		if errPrinted < 20 {
			fmt.Printf("soak: unexpected error: %v\n", err)
		} else if errPrinted == 20 {
			fmt.Println("soak: further unexpected errors are only counted")
		}
		errPrinted++
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	start := time.Now()
	wait := drive(loadCtx, client, nodes, cfg.concurrency, cfg.seed, &c, report)

	ticker := time.NewTicker(cfg.interval)
	defer ticker.Stop()
	var lastOps, lastBytes int64
	lastTick := start
	interrupted := false
	for done := false; !done; {
		select {
		case <-ctx.Done():
			interrupted, done = true, true
			continue
		case now := <-ticker.C:
			ops, bytes := c.ops.Load(), c.bytes.Load()
			secs := now.Sub(lastTick).Seconds()
			line := fmt.Sprintf("%8s %9.1f %8.0f %7d", now.Sub(start).Round(time.Second),
				float64(bytes-lastBytes)/(1<<20)/secs, float64(ops-lastOps)/secs, c.unexpected.Load())
			lastOps, lastBytes, lastTick = ops, bytes, now
			for _, p := range procs {
				rd, err := read(p.healthURL)
				if err != nil {
					report(fmt.Errorf("%s: %w (exited: %v)", p.name, err, p.process.Exited()))
					c.unexpected.Add(1)
					line += fmt.Sprintf("  %-22s", "unreadable")
					continue
				}
				p.samples = append(p.samples, rd)
				line += fmt.Sprintf("  %-22s", fmt.Sprintf("%s, %.0f", mib(rd.rss), rd.goroutines))
			}
			fmt.Println(strings.TrimRight(line, " "))
			done = now.Sub(start) >= cfg.duration-cfg.interval/2
		}
	}
	stopLoad()
	if interrupted {
		// The signal reached the server and agents too (one process
		// group): there is nothing left to judge.
		fmt.Printf("soak: interrupted after %s, before the end of -duration\n", time.Since(start).Round(time.Second))
		return 1
	}
	wait()
	elapsed := time.Since(start)

	failed := false
	fmt.Printf("soak: %d operations in %s (%.0f dials/s), %.1f GiB moved, %d unexpected errors\n",
		c.ops.Load(), elapsed.Round(time.Second), float64(c.ops.Load())/elapsed.Seconds(),
		float64(c.bytes.Load())/(1<<30), c.unexpected.Load())
	if c.unexpected.Load() > 0 {
		failed = true
	}
	if problems := settle(procs, baselines(procs), 15*time.Second); problems != "" {
		fmt.Printf("soak: FAIL: 15 s after the load stopped: %s\n", problems)
		failed = true
	} else {
		fmt.Printf("soak: after the load: no open connections, goroutines within %d of their count before it\n", goroutineSlack)
	}
	for _, p := range procs {
		rss := make([]float64, len(p.samples))
		for i, s := range p.samples {
			rss[i] = s.rss
		}
		grows, why := keepsGrowing(rss)
		verdict := "ok"
		if grows {
			verdict, failed = "FAIL: memory keeps growing", true
		}
		fmt.Printf("soak: %s: %s: %s\n", p.name, verdict, why)
	}
	if failed {
		fmt.Println("soak: FAILED")
		return 1
	}
	fmt.Println("soak: PASSED")
	return 0
}

func baselines(procs []*proc) []reading {
	b := make([]reading, len(procs))
	for i, p := range procs {
		b[i] = p.baseline
	}
	return b
}

// goroutineSlack is how many goroutines above its baseline a process may
// keep once the load has stopped (timers, idle gRPC transports winding
// down).
const goroutineSlack = 16

// settle waits until every process's open-connections gauge is 0 and, with
// baseline, its goroutines are within goroutineSlack of it; it returns what
// did not come back within timeout ("" when all did).
func settle(procs []*proc, baseline []reading, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for {
		var problems []string
		for i, p := range procs {
			open, err := harness.Metric(p.healthURL, p.metric)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", p.name, err))
				continue
			}
			if open != 0 {
				problems = append(problems, fmt.Sprintf("%s %s %v, want 0", p.name, p.metric, open))
			}
			if baseline == nil {
				continue
			}
			rd, err := read(p.healthURL)
			if err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", p.name, err))
				continue
			}
			if rd.goroutines > baseline[i].goroutines+goroutineSlack {
				problems = append(problems, fmt.Sprintf("%s goroutines %.0f, %.0f before the load", p.name, rd.goroutines, baseline[i].goroutines))
			}
		}
		if len(problems) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return strings.Join(problems, "; ")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func mixString() string {
	var parts []string
	for _, m := range mix {
		s := fmt.Sprintf("%d%% %s", m.percent, m.kind)
		if m.maxSize > 0 {
			s += fmt.Sprintf(" (0..%d KiB)", m.maxSize>>10)
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// quietKlog discards konnectivity-client's log lines (a cancelled dial
// logs a dropped DIAL_RSP), which would bury the soak's figures.
func quietKlog() {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("logtostderr", "false")
	_ = fs.Set("stderrthreshold", "FATAL")
	klog.SetOutput(io.Discard)
}
