// Command bench runs edge-tunnel's benchmarks and prints one table of
// figures that compare across machines: every tunnel path as a ratio of
// direct TCP to the same target measured in the same run, latencies as
// percentiles, memory per connection and per agent, and allocations per
// MiB moved. Each row names its goal (docs/performance.md). All traffic
// stays on loopback.
//
//	go run ./hack/bench [-count 3] [-benchtime 3x] [-dials 2000] [-memory=true]
//
// The throughput and latency figures come from pkg/server's benchmarks
// (client, server, agent and target in one process); the memory figures
// from e2e/bench, which runs the server and agent as processes of their own.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
)

func main() {
	count := flag.Int("count", 5, "rounds of the throughput benchmarks; a ratio is the median of the rounds' ratios")
	benchtime := flag.String("benchtime", "3x", "go test -benchtime of the throughput benchmarks")
	dials := flag.Int("dials", 2000, "dials per path for the latency percentiles")
	memory := flag.Bool("memory", true, "also run the memory benchmarks of e2e/bench (10,000 connections, 10,000 agents; about 3 minutes)")
	flag.Parse()

	res := map[string]*result{}
	run := func(args ...string) {
		fmt.Fprintf(os.Stderr, "==> go %s\n", strings.Join(args, " "))
		cmd := exec.Command("go", args...)
		var out bytes.Buffer
		cmd.Stdout = io.MultiWriter(&out, progress{})
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			os.Stdout.Write(out.Bytes())
			fmt.Fprintf(os.Stderr, "bench: go test failed: %v\n", err)
			os.Exit(1)
		}
		parse(out.Bytes(), res)
	}
	// Rounds rather than -count: go test runs a sub-benchmark's -count runs
	// back to back, so the paths of one round (direct TCP and each tunnel)
	// are measured seconds apart instead of minutes, and pairedRatio
	// compares them within a round.
	for range *count {
		run("test", "-run", "^$", "-bench", "^Benchmark(Download|Upload|ParallelDownload)$",
			"-benchmem", "-count", "1", "-benchtime", *benchtime, "./pkg/server/")
	}
	// A process of its own, so the memory the transfers left behind does
	// not weigh on one side of the ratio.
	run("test", "-run", "^$", "-bench", "^BenchmarkStalledReader$",
		"-count", strconv.Itoa(*count), "-benchtime", *benchtime, "./pkg/server/")
	// Three runs of the dials, for the median of their percentiles: one
	// run's median moves with whatever else the machine is doing.
	run("test", "-run", "^$", "-bench", "^BenchmarkDial$", "-benchmem", "-count", "3",
		"-benchtime", strconv.Itoa(*dials)+"x", "./pkg/server/")
	if *memory {
		run("test", "-run", "^$", "-bench", ".", "-benchtime", "1x", "-count", "1", "-timeout", "20m", "./e2e/bench/")
	}
	if len(res) == 0 {
		fmt.Fprintln(os.Stderr, "bench: no benchmark results in the output")
		os.Exit(1)
	}
	report(res)
}

// progress shows benchmark result lines on stderr as they arrive, so a
// long run is visibly alive.
type progress struct{}

func (progress) Write(p []byte) (int, error) {
	for _, l := range strings.Split(string(p), "\n") {
		if strings.HasPrefix(l, "Benchmark") {
			fmt.Fprintln(os.Stderr, "   ", l)
		}
	}
	return len(p), nil
}

// result holds every value reported under one benchmark name, by unit.
type result map[string][]float64

var line = regexp.MustCompile(`^Benchmark(\S+?)(-\d+)?\s+\d+\s+(.*)$`)

func parse(out []byte, res map[string]*result) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		r := res[m[1]]
		if r == nil {
			r = &result{}
			res[m[1]] = r
		}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				(*r)[f[i+1]] = append((*r)[f[i+1]], v)
			}
		}
	}
}

// get returns the median of unit under name, and whether there was one.
func get(res map[string]*result, name, unit string) (float64, bool) {
	r := res[name]
	if r == nil || len((*r)[unit]) == 0 {
		return 0, false
	}
	s := append([]float64(nil), (*r)[unit]...)
	sort.Float64s(s)
	return s[len(s)/2], true
}

// floorLabel names the "grpc-floor" rows: the real konnectivity client
// against an in-memory ProxyService that answers at once (pkg/server's
// floor_test.go). What the client alone costs bounds every gRPC row.
const floorLabel = "konnectivity client alone (in-memory server, no tunnel)"

// pairedRatio is the median over rounds of name's value divided by base's
// in the same round (the k-th value of each). A round measures every path
// within seconds, so the drift of a shared machine over a whole run (its
// figures move by tens of percent) weighs on both sides of each ratio alike.
func pairedRatio(res map[string]*result, name, base, unit string) (float64, bool) {
	a, b := res[name], res[base]
	if a == nil || b == nil || len((*a)[unit]) == 0 || len((*a)[unit]) != len((*b)[unit]) {
		return 0, false
	}
	var rs []float64
	for i, v := range (*a)[unit] {
		if d := (*b)[unit][i]; d > 0 {
			rs = append(rs, v/d)
		}
	}
	if len(rs) == 0 {
		return 0, false
	}
	sort.Float64s(rs)
	return rs[len(rs)/2], true
}

// row is one line of the table.
type row struct {
	figure, value, goal, upstream string
}

func report(res map[string]*result) {
	var rows []row
	add := func(figure, value, goal, upstream string) { rows = append(rows, row{figure, value, goal, upstream}) }
	ratio := func(name, direct string) (string, bool) {
		v, ok1 := get(res, name, "MB/s")
		d, ok2 := get(res, direct, "MB/s")
		r, ok3 := pairedRatio(res, name, direct, "MB/s")
		if !ok1 || !ok2 || !ok3 {
			return "", false
		}
		return fmt.Sprintf("%.2f (%.0f / %.0f MB/s)", r, v, d), true
	}
	const mib = 256 // the transfer benchmarks move 256 MiB per op
	for _, kind := range []string{"Download", "Upload"} {
		for _, p := range []struct{ path, label, goal, up string }{
			{"grpc", "gRPC frontend", ">= 0.33", map[string]string{"Download": "0.06", "Upload": "0.10-0.13"}[kind]},
			{"connect", "HTTP CONNECT (UDS)", ">= 0.33", map[string]string{"Download": "0.08", "Upload": "0.10-0.13"}[kind]},
			{"connect-mtls", "HTTP CONNECT (TCP+mTLS)", "", ""},
			{"grpc-floor", floorLabel, "(bound)", ""},
		} {
			if v, ok := ratio(kind+"/"+p.path, kind+"/direct"); ok {
				add(fmt.Sprintf("%s 256 MiB, %s / direct", strings.ToLower(kind), p.label), v, p.goal, p.up)
			}
		}
	}
	for _, p := range []struct{ path, label, goal, up string }{
		{"grpc", "gRPC, new connection per dial", "<= 0.5 ms", "1.5 ms"},
		{"connect", "HTTP CONNECT (UDS)", "<= 0.3 ms", "0.9 ms"},
		{"connect-mtls", "HTTP CONNECT (TCP+mTLS, new TLS per dial)", "", ""},
		{"grpc-floor", floorLabel, "(bound)", ""},
		{"direct", "direct TCP", "", "0.09 ms"},
	} {
		p50, ok := get(res, "Dial/"+p.path, "p50-ms")
		if !ok {
			continue
		}
		p90, _ := get(res, "Dial/"+p.path, "p90-ms")
		p99, _ := get(res, "Dial/"+p.path, "p99-ms")
		add("new tunnel + dial + 64-byte echo, "+p.label+": p50 / p90 / p99",
			fmt.Sprintf("%.3f / %.3f / %.3f ms", p50, p90, p99), p.goal, p.up)
	}
	for _, p := range []string{"grpc", "connect"} {
		if v, ok := ratio("ParallelDownload/"+p, "ParallelDownload/direct"); ok {
			add(fmt.Sprintf("16 parallel downloads, %s / direct (aggregate)", p), v, "", "")
		}
	}
	for _, fe := range []string{"grpc", "connect"} {
		r, ok := get(res, "StalledReader/"+fe, "beside/alone")
		a, _ := get(res, "StalledReader/"+fe, "alone-MB/s")
		b, _ := get(res, "StalledReader/"+fe, "beside-MB/s")
		if ok {
			add("download beside a stalled reader / alone (in turns), "+fe, fmt.Sprintf("%.2f (%.0f / %.0f MB/s)", r, b, a), ">= 0.9", "0.03 (frozen)")
		}
	}
	for _, p := range []struct{ path, label, up string }{
		{"connect", "HTTP CONNECT (UDS)", "~19 / ~12 KB"},
		{"grpc", "gRPC, a connection per tunnel", ""},
	} {
		name := "IdleConns/" + p.path
		if s, ok := get(res, name, "server-B/conn"); ok {
			a, _ := get(res, name, "agent-B/conn")
			sh, _ := get(res, name, "server-heap-B/conn")
			ah, _ := get(res, name, "agent-heap-B/conn")
			add("memory per idle tunneled connection (10,000 open), "+p.label+", RSS server / agent",
				fmt.Sprintf("%.1f / %.1f KB (heap %.1f / %.1f)", s/1000, a/1000, sh/1000, ah/1000), "<= 10 KB each", p.up)
		}
	}
	if s, ok := get(res, "ManyAgents", "server-B/agent"); ok {
		r, _ := get(res, "ManyAgents", "dial-ratio")
		one, _ := get(res, "ManyAgents", "dial-p50-ms-1agent")
		many, _ := get(res, "ManyAgents", "dial-p50-ms-manyagents")
		add("server memory per connected agent (10,000 agents, TLS)", fmt.Sprintf("%.1f KB", s/1000), "<= 64 KB", "not measured")
		add("dial p50 with 10,000 agents / with one", fmt.Sprintf("%.2f (%.3f / %.3f ms)", r, many, one), "<= 2", "")
	}
	for _, kind := range []string{"Download", "Upload"} {
		var vals []string
		for _, p := range []string{"direct", "connect", "grpc", "grpc-floor"} {
			if v, ok := get(res, kind+"/"+p, "cpu-ms/MiB"); ok {
				vals = append(vals, fmt.Sprintf("%.2f", v))
			}
		}
		if len(vals) == 4 {
			add(fmt.Sprintf("CPU per MiB moved (whole process), %s: direct / HTTP CONNECT / gRPC / client alone", strings.ToLower(kind)),
				strings.Join(vals, " / ")+" ms", "", "")
		}
	}
	for _, p := range []struct{ path, label, goal, up string }{
		{"grpc", "gRPC frontend", "<= 64", "thousands"},
		{"connect", "HTTP CONNECT (UDS)", "<= 64", "thousands"},
		{"grpc-floor", floorLabel, "(bound)", ""},
	} {
		for _, kind := range []string{"Download", "Upload"} {
			if v, ok := get(res, kind+"/"+p.path, "allocs/op"); ok {
				add(fmt.Sprintf("allocations per MiB moved (whole process, client included), %s, %s", strings.ToLower(kind), p.label),
					fmt.Sprintf("%.0f", v/mib), p.goal, p.up)
			}
		}
	}

	fmt.Printf("\nedge-tunnel bench: %d cores (GOMAXPROCS %d), %s/%s, %s; loopback only\n\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	w := []int{len("figure"), len("measured"), len("goal"), len("upstream v0.36")}
	for _, r := range rows {
		w[0], w[1], w[2], w[3] = max(w[0], len(r.figure)), max(w[1], len(r.value)), max(w[2], len(r.goal)), max(w[3], len(r.upstream))
	}
	pr := func(a, b, c, d string) {
		fmt.Printf("| %-*s | %-*s | %-*s | %-*s |\n", w[0], a, w[1], b, w[2], c, w[3], d)
	}
	pr("figure", "measured", "goal", "upstream v0.36")
	pr(strings.Repeat("-", w[0]), strings.Repeat("-", w[1]), strings.Repeat("-", w[2]), strings.Repeat("-", w[3]))
	for _, r := range rows {
		pr(r.figure, r.value, r.goal, r.upstream)
	}
}
