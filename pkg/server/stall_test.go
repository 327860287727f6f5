package server_test

import (
	"testing"
	"time"
)

// stallAndDownload opens a connection that asks for a large download and
// never reads it, then runs a download on a second connection through the
// same agent. It returns how long the second download took.
func stallAndDownload(t testing.TB, dial dialFunc, size int64) time.Duration {
	t.Helper()
	stalled, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	// The konnectivity client's Close of a stalled connection waits up to
	// 10 s for a CLOSE_RSP its own blocked reader cannot take; do not wait.
	defer func() { go stalled.Close() }()
	if err := request(stalled, 1<<30, 'd'); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the stalled connection fill every buffer on its path
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- download(c, size, make([]byte, 256<<10)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("download beside a stalled reader: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("download beside a stalled reader froze")
	}
	return time.Since(start)
}

// TestStalledReaderDoesNotStallOthers: a connection whose client reads
// nothing must not hold up another connection through the same agent, in
// every frontend and in every agent protocol. (The throughput ratio is
// measured by BenchmarkStalledReader; this test checks that it completes.)
func TestStalledReaderDoesNotStallOthers(t *testing.T) {
	for _, mode := range []struct {
		name       string
		ext, noMux bool
	}{{"node-mux", true, false}, {"node-conn-streams", true, true}, {"node-single-stream", false, false}} {
		e := newEnv(t, envOptions{connStreams: true, noMux: mode.noMux})
		name := mode.name
		e.addAgent(t, name, mode.ext, "127.0.0.1")
		dialers := benchDialers(t, e, byteServer(t))
		for _, fe := range []string{"grpc", "connect"} {
			t.Run(name+"/"+fe, func(t *testing.T) {
				d := stallAndDownload(t, dialers[fe], 32<<20)
				t.Logf("32 MiB beside a stalled reader in %v", d)
			})
		}
	}
}

// BenchmarkStalledReader measures a download alone and beside a stalled
// reader on the same agent; `make bench` prints their ratio.
func BenchmarkStalledReader(b *testing.B) {
	e := newEnv(b, envOptions{connStreams: true})
	e.addAgent(b, "node-a", true, "127.0.0.1")
	dialers := benchDialers(b, e, byteServer(b))
	for _, fe := range []string{"grpc", "connect"} {
		dial := dialers[fe]
		b.Run(fe+"/alone", func(b *testing.B) {
			b.SetBytes(transferSize())
			for b.Loop() {
				c, err := dial()
				if err != nil {
					b.Fatal(err)
				}
				if err := download(c, transferSize(), make([]byte, 256<<10)); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
		b.Run(fe+"/beside-stalled", func(b *testing.B) {
			b.SetBytes(transferSize())
			stalled, err := dial()
			if err != nil {
				b.Fatal(err)
			}
			defer func() { go stalled.Close() }()
			if err := request(stalled, 1<<40, 'd'); err != nil {
				b.Fatal(err)
			}
			time.Sleep(200 * time.Millisecond)
			b.ResetTimer()
			for b.Loop() {
				c, err := dial()
				if err != nil {
					b.Fatal(err)
				}
				if err := download(c, transferSize(), make([]byte, 256<<10)); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
