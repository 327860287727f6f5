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

// BenchmarkStalledReader measures a download alone and one beside a
// stalled reader on the same agent, in turns within each op (so that the
// machine's drift during a run weighs on both alike), and reports the
// speed of each and their ratio, which `make bench` prints.
func BenchmarkStalledReader(b *testing.B) {
	e := newEnv(b, envOptions{connStreams: true})
	e.addAgent(b, "node-a", true, "127.0.0.1")
	dialers := benchDialers(b, e, byteServer(b))
	for _, fe := range []string{"grpc", "connect"} {
		dial := dialers[fe]
		b.Run(fe, func(b *testing.B) {
			var alone, beside time.Duration
			for b.Loop() {
				alone += timedDownload(b, dial, transferSize())
				beside += stallAndDownload(b, dial, transferSize())
			}
			mb := float64(transferSize()) * float64(b.N) / 1e6
			b.ReportMetric(mb/alone.Seconds(), "alone-MB/s")
			b.ReportMetric(mb/beside.Seconds(), "beside-MB/s")
			b.ReportMetric(alone.Seconds()/beside.Seconds(), "beside/alone")
		})
	}
}

// timedDownload runs one download of size bytes on a new connection and
// returns how long it took.
func timedDownload(t testing.TB, dial dialFunc, size int64) time.Duration {
	t.Helper()
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if err := download(c, size, make([]byte, 256<<10)); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}
