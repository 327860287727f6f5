package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// settleTime lets a process reach the memory it keeps after a burst: the
// buffers of handshakes and first packets go back to pools.
const settleTime = 2 * time.Second

// collect runs two garbage collections in the process (through pprof's
// heap handler), before each measurement. Idle tunnels live for hours, and
// the Go runtime collects at least every two minutes even when nothing
// allocates; each collection halves goroutine stacks that grew during a
// burst and now use less than a quarter. Two collections stand for the
// first minutes of an idle connection's life, so the figures are what the
// process keeps, not what the burst of opening left behind.
func (p proc) collect(b *testing.B) {
	b.Helper()
	for range 2 {
		resp, err := http.Get(p.adminURL + "/debug/pprof/heap?gc=1")
		if err != nil {
			b.Fatalf("%s: forcing a collection: %v", p.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// goroutineSlack is how many goroutines more than before a round a process
// may still have once everything the round opened is closed (timers, a
// pooled connection of the metrics scrape).
const goroutineSlack = 10

func skipUnlessLinux(b *testing.B) {
	b.Helper()
	if runtime.GOOS != "linux" {
		b.Skipf("memory benchmarks read /proc/PID/status and need Linux (GOOS=%s)", runtime.GOOS)
	}
}

// envInt reads a positive integer from the environment variable name, or
// returns def when it is unset.
func envInt(b *testing.B, name string, def int) int {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("$%s=%q: want a positive integer", name, s)
	}
	return n
}

// raiseNoFile lets this process, and the server and agents it starts
// (children inherit the limit), open n files each. Raising the hard limit
// needs CAP_SYS_RESOURCE; without it a scale over the hard limit is
// skipped with a hint.
func raiseNoFile(b *testing.B, n uint64) {
	b.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatalf("read RLIMIT_NOFILE: %v", err)
	}
	if lim.Cur >= n {
		return
	}
	want := lim
	want.Cur = n
	want.Max = max(lim.Max, n)
	// syscall.Setrlimit also makes children inherit the new soft limit
	// instead of the one the Go runtime saw at start-up.
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		b.Skipf("need %d open files per process (RLIMIT_NOFILE is %d, hard %d) and cannot raise the limit: %v; run with CAP_SYS_RESOURCE or set a smaller scale", n, lim.Cur, lim.Max, err)
	}
}

// proc is a process whose memory the benchmarks read.
type proc struct {
	name      string
	pid       int
	healthURL string // serves /metrics
	adminURL  string // serves /debug/pprof/
}

// memSample is a process's memory at one moment.
type memSample struct {
	rss   int64 // VmRSS: what the kernel charges the process
	heap  int64 // go_memstats_heap_inuse_bytes: spans holding Go objects
	stack int64 // go_memstats_stack_inuse_bytes: goroutine stacks
}

func (m memSample) String() string {
	return fmt.Sprintf("RSS %d MiB, heap %d MiB, stacks %d MiB", m.rss>>20, m.heap>>20, m.stack>>20)
}

func (p proc) memory(b *testing.B) memSample {
	b.Helper()
	rss, err := vmRSS(p.pid)
	if err != nil {
		b.Fatalf("%s: %v", p.name, err)
	}
	heap, err := harness.Metric(p.healthURL, "go_memstats_heap_inuse_bytes")
	if err != nil {
		b.Fatalf("%s: %v", p.name, err)
	}
	stack, err := harness.Metric(p.healthURL, "go_memstats_stack_inuse_bytes")
	if err != nil {
		b.Fatalf("%s: %v", p.name, err)
	}
	return memSample{rss: rss, heap: int64(heap), stack: int64(stack)}
}

// vmRSS reads the resident set size of pid from /proc/PID/status.
func vmRSS(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read memory of pid %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest) // "123456 kB"
		if len(fields) != 2 || fields[1] != "kB" {
			return 0, fmt.Errorf("pid %d: unexpected VmRSS line %q", pid, sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("pid %d: VmRSS %q: %w", pid, fields[0], err)
		}
		return kb << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read /proc/%d/status: %w", pid, err)
	}
	return 0, fmt.Errorf("pid %d: no VmRSS in /proc/%d/status (a zombie?)", pid, pid)
}

func (p proc) goroutines(b *testing.B) int {
	b.Helper()
	n, err := harness.Goroutines(p.adminURL)
	if err != nil {
		b.Fatalf("%s: %v", p.name, err)
	}
	return n
}

// waitGoroutines fails the benchmark when p does not get back to at most
// want goroutines within timeout: something the round opened was not
// released.
func (p proc) waitGoroutines(b *testing.B, want int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := p.goroutines(b)
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s still runs %d goroutines %s after everything was closed, want at most %d: a leak", p.name, n, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// saveProfiles writes p's heap profile to $BENCH_PROFILE_DIR/name.heap.pb.gz
// and its goroutines, grouped by stack, to name.goroutines.txt when that
// variable is set. gc=1 makes the heap profile describe the heap at this
// moment rather than at the last collection; the profiles are taken after
// the figures are read, so they do not change them.
func (p proc) saveProfiles(b *testing.B, name string) {
	b.Helper()
	dir := os.Getenv("BENCH_PROFILE_DIR")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatalf("$BENCH_PROFILE_DIR: %v", err)
	}
	heap := filepath.Join(dir, name+".heap.pb.gz")
	p.fetch(b, "/debug/pprof/heap?gc=1", heap)
	p.fetch(b, "/debug/pprof/goroutine?debug=1", filepath.Join(dir, name+".goroutines.txt"))
	b.Logf("%s profiles in %s (go tool pprof -top -sample_index=inuse_space %s)", p.name, dir, heap)
}

func (p proc) fetch(b *testing.B, path, file string) {
	b.Helper()
	resp, err := http.Get(p.adminURL + path)
	if err != nil {
		b.Fatalf("%s: GET %s: %v", p.name, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("%s: GET %s: %s", p.name, path, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		b.Fatalf("$BENCH_PROFILE_DIR: %v", err)
	}
	_, err = io.Copy(f, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		b.Fatalf("write %s: %v", file, err)
	}
}

// perUnit is (after - before) / n.
func perUnit(before, after int64, n int) float64 { return float64(after-before) / float64(n) }

// openTunnel opens a tunnel to addr through frontend fe (a new gRPC
// connection or CONNECT over the server's unix socket), establishes it with
// a size-byte echo, and returns it.
func openTunnel(ctx context.Context, lc *harness.LoadClient, fe harness.Frontend, addr string, size int) (net.Conn, error) {
	c, err := lc.Dial(ctx, fe, addr)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if err := harness.CheckEcho(c, size); err != nil {
		c.Close()
		return nil, fmt.Errorf("through the tunnel to %s: %w", addr, err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// dialLatency measures n times, one after another, a new tunnel to addr,
// a 64-byte echo through it and its close (the Dial benchmark's unit in
// pkg/server), and returns the median and 90th percentile.
func dialLatency(b *testing.B, open func(context.Context, int) (net.Conn, error), n int) (p50, p90 time.Duration) {
	b.Helper()
	ds := make([]time.Duration, 0, n)
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		start := time.Now()
		c, err := open(ctx, 64)
		if err == nil {
			err = harness.CloseConn(c)
		}
		ds = append(ds, time.Since(start))
		cancel()
		if err != nil {
			b.Fatalf("dial %d of %d: %v", len(ds), n, err)
		}
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)*9/10]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quietKlog sends klog's output (the in-process agents log every connect
// and disconnect) to a file in the benchmark's temp dir until it ends.
func quietKlog(b *testing.B) {
	b.Helper()
	path := filepath.Join(b.TempDir(), "in-process-agents.log")
	f, err := os.Create(path)
	if err != nil {
		b.Fatalf("create the in-process agents' log: %v", err)
	}
	klog.LogToStderr(false)
	klog.SetOutput(f)
	b.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
		f.Close()
	})
}
