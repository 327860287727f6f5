package workers

import (
	"bytes"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// goid is the running goroutine's number, from its stack header.
func goid() int {
	var buf [64]byte
	b := bytes.TrimPrefix(buf[:runtime.Stack(buf[:], false)], []byte("goroutine "))
	id, _ := strconv.Atoi(string(b[:bytes.IndexByte(b, ' ')]))
	return id
}

// newPool returns a Pool that is closed when the test ends, which then
// waits for its workers to be gone: no test counts another's goroutines.
func newPool(t *testing.T, idle time.Duration) *Pool {
	before := runtime.NumGoroutine()
	p := New(idle)
	t.Cleanup(func() {
		p.Close()
		waitGoroutines(t, before, "after the test's pool was closed")
	})
	return p
}

func TestPoolRunsEveryTask(t *testing.T) {
	for _, p := range []*Pool{newPool(t, time.Second), nil} {
		var wg sync.WaitGroup
		var mu sync.Mutex
		ran := 0
		for range 1000 {
			wg.Add(1)
			p.Go(func() {
				defer wg.Done()
				mu.Lock()
				ran++
				mu.Unlock()
			})
		}
		wg.Wait()
		if ran != 1000 {
			t.Fatalf("pool %v ran %d of 1000 tasks", p, ran)
		}
	}
}

// TestPoolReusesIdleWorker: a task handed over while a worker idles runs on
// that worker's goroutine, not a new one.
func TestPoolReusesIdleWorker(t *testing.T) {
	p := newPool(t, time.Minute)
	ids := make(chan int, 1)
	p.Go(func() { ids <- goid() })
	first := <-ids
	// The worker counts itself idle just before it waits for a task; a
	// task handed over in between starts a second worker, after which
	// either may take the next one. Some task soon runs on the first.
	var got []int
	for range 50 {
		for deadline := time.Now().Add(5 * time.Second); p.idlers.Load() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no worker idle 5 s after its task")
			}
		}
		time.Sleep(time.Millisecond)
		p.Go(func() { ids <- goid() })
		id := <-ids
		if id == first {
			return
		}
		got = append(got, id)
	}
	t.Fatalf("no later task ran on the first worker (goroutine %d) but on %v", first, got)
}

// TestPoolWorkersEnd: Go never waits for a busy worker (every task here
// blocks until all have started); after the burst at most GOMAXPROCS
// workers stay, and they end once idle.
func TestPoolWorkersEnd(t *testing.T) {
	before := runtime.NumGoroutine()
	const idle = 2 * time.Second
	p := New(idle) // not newPool: this test waits for the idle time itself
	const n = 20
	var started sync.WaitGroup
	release := make(chan struct{})
	started.Add(n)
	for range n {
		p.Go(func() { started.Done(); <-release })
	}
	started.Wait() // every task runs at once: Go never waited for a worker
	close(release)
	// Well within the idle time, only the workers allowed to wait are left.
	stay := before + runtime.GOMAXPROCS(0)
	for deadline := time.Now().Add(idle / 2); runtime.NumGoroutine() > stay; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the burst, want at most %d (%d before it, and GOMAXPROCS idle workers)", runtime.NumGoroutine(), stay, before)
		}
	}
	deadline := time.Now().Add(idle + 5*time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines %v after the tasks ended, %d before them", runtime.NumGoroutine(), idle+5*time.Second, before)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPoolCloseEndsWorkers: Close ends idle workers at once, not after
// their idle time, and a task handed over afterwards still runs and leaves
// no goroutine behind.
func TestPoolCloseEndsWorkers(t *testing.T) {
	before := runtime.NumGoroutine()
	p := New(time.Hour)
	done := make(chan struct{})
	for range 2 {
		p.Go(func() { done <- struct{}{} })
		<-done
	}
	p.Close()
	p.Close() // a second Close is harmless
	waitGoroutines(t, before, "after Close")
	p.Go(func() { done <- struct{}{} })
	<-done
	waitGoroutines(t, before, "after a task handed over after Close")
}

// waitGoroutines waits up to 5 s for the goroutine count to fall to max.
func waitGoroutines(t *testing.T, max int, when string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); runtime.NumGoroutine() > max; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d goroutines, want at most %d", when, runtime.NumGoroutine(), max)
		}
	}
}

// deep uses about n KiB of stack, as a TLS handshake or a request parse
// does.
//
//go:noinline
func deep(n int) byte {
	var pad [1024]byte
	pad[n%len(pad)] = byte(n)
	if n == 0 {
		return pad[0]
	}
	return deep(n-1) + pad[n%len(pad)]
}

// BenchmarkDeepTask: a task that needs 32 KiB of stack, on a new goroutine
// each time and on a pool's worker.
func BenchmarkDeepTask(b *testing.B) {
	for _, c := range []struct {
		name string
		p    *Pool
	}{{"goroutine", nil}, {"pool", New(time.Second)}} {
		b.Run(c.name, func(b *testing.B) {
			done := make(chan struct{})
			for b.Loop() {
				c.p.Go(func() { deep(32); done <- struct{}{} })
				<-done
			}
		})
	}
}
