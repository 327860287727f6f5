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

func TestPoolRunsEveryTask(t *testing.T) {
	for _, p := range []*Pool{New(time.Second), nil} {
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
	p := New(time.Minute)
	ids := make(chan int, 1)
	p.Go(func() { ids <- goid() })
	first := <-ids
	// The worker goes idle just after the task returns; a task handed over
	// before that starts a second worker, after which either may take the
	// next one. Some task soon runs on the first.
	for range 100 {
		time.Sleep(2 * time.Millisecond)
		p.Go(func() { ids <- goid() })
		if <-ids == first {
			return
		}
	}
	t.Fatalf("no task ran on the first worker (goroutine %d) again", first)
}

// TestPoolWorkersEnd: Go never waits for a busy worker (every task here
// blocks until all have started); after the burst at most GOMAXPROCS
// workers stay, and they end once idle.
func TestPoolWorkersEnd(t *testing.T) {
	before := runtime.NumGoroutine()
	const idle = 2 * time.Second
	p := New(idle)
	const n = 20
	var started sync.WaitGroup
	release := make(chan struct{})
	started.Add(n)
	for range n {
		p.Go(func() { started.Done(); <-release })
	}
	started.Wait()
	if g := runtime.NumGoroutine(); g < before+n {
		t.Fatalf("%d goroutines with %d tasks running, want at least %d", g, n, before+n)
	}
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
