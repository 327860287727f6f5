package server_test

import (
	"context"
	"crypto/tls"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// The benchmarks measure the whole data path in one process: client ->
// frontend -> server -> mTLS gRPC -> agent -> loopback target. Each has a
// "direct" case (plain TCP to the same target) measured in the same run, so
// `make bench` (hack/bench) can print ratios that do not depend on the
// machine. Memory per connection and per agent, which needs processes of
// their own, is measured by e2e/bench.

// transferSize is what one transfer benchmark op moves: 256 MiB, or 16 MiB
// with -short, which CI uses to keep the benchmarks from rotting.
func transferSize() int64 {
	if testing.Short() {
		return 16 << 20
	}
	return 256 << 20
}

type dialFunc func() (net.Conn, error)

func benchDialers(b testing.TB, e *env, target string) map[string]dialFunc {
	return map[string]dialFunc{
		"direct": func() (net.Conn, error) { return net.Dial("tcp", target) },
		"grpc":   func() (net.Conn, error) { return e.dialGRPC(context.Background(), target) },
		"connect": func() (net.Conn, error) {
			c, err := net.Dial("unix", e.uds)
			if err != nil {
				return nil, err
			}
			if res, err := connectDial(b, c, target); err != nil || res.StatusCode != 200 {
				c.Close()
				b.Fatalf("CONNECT: %v %v", res, err)
			}
			return c, nil
		},
		"connect-mtls": func() (net.Conn, error) {
			c, err := tls.Dial("tcp", e.srv.Addr("frontend").String(), e.clientTL)
			if err != nil {
				return nil, err
			}
			if res, err := connectDial(b, c, target); err != nil || res.StatusCode != 200 {
				c.Close()
				b.Fatalf("CONNECT: %v %v", res, err)
			}
			return c, nil
		},
	}
}

// frontends are the paths the transfer and dial benchmarks compare;
// "grpc-floor" is the konnectivity client alone (floor_test.go), the bound
// on what any server could reach with it.
var frontends = []string{"direct", "grpc", "connect", "connect-mtls", "grpc-floor"}

func benchTransfer(b *testing.B, op func(net.Conn, int64, []byte) error) {
	e := newEnv(b, envOptions{connStreams: true})
	e.addAgent(b, "node-a", true, "127.0.0.1")
	target := byteServer(b)
	dialers := benchDialers(b, e, target)
	dialers["grpc-floor"] = startFloor(b, floorBytes)
	for _, name := range frontends {
		b.Run(name, func(b *testing.B) {
			buf := make([]byte, 256<<10)
			b.SetBytes(transferSize())
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				c, err := dialers[name]()
				if err != nil {
					b.Fatal(err)
				}
				if err := op(c, transferSize(), buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			reportCPU(b, processCPU()-cpu0, transferSize())
		})
	}
}

// BenchmarkDownload: one 256 MiB download per op.
func BenchmarkDownload(b *testing.B) { benchTransfer(b, download) }

// BenchmarkUpload: one 256 MiB upload per op.
func BenchmarkUpload(b *testing.B) { benchTransfer(b, upload) }

// BenchmarkDial: a new tunnel, a dial, a 64-byte echo and close, as
// kube-apiserver does for every request it sends through the egress (a new
// gRPC connection per dial over the UNIX socket, or a new CONNECT). Besides
// the mean (ns/op) it reports the 50th, 90th and 99th percentile.
func BenchmarkDial(b *testing.B) {
	e := newEnv(b, envOptions{connStreams: true})
	e.addAgent(b, "node-a", true, "127.0.0.1")
	target := echoServer(b)
	dialers := benchDialers(b, e, target)
	dialers["grpc-floor"] = startFloor(b, floorEcho)
	for _, name := range frontends {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			var samples []time.Duration
			for b.Loop() {
				start := time.Now()
				c, err := dialers[name]()
				if err != nil {
					b.Fatal(err)
				}
				echoRoundTrip(b, c, 64)
				samples = append(samples, time.Since(start))
				c.Close()
			}
			reportPercentiles(b, samples)
		})
	}
}

// reportCPU adds cpu-ms/MiB: the process's CPU time per MiB moved, from
// client to target and back, whichever cores it ran on. Where a transfer is
// limited by CPU (on 2 cores, all of the tunneled ones), this is what sets
// its speed, and the figures of two paths add up like their parts do.
func reportCPU(b *testing.B, cpu time.Duration, size int64) {
	if cpu <= 0 || b.N == 0 {
		return
	}
	b.ReportMetric(float64(cpu)/1e6/(float64(size)/(1<<20))/float64(b.N), "cpu-ms/MiB")
}

// reportPercentiles adds p50, p90 and p99 of samples, in milliseconds.
func reportPercentiles(b *testing.B, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	at := func(q float64) float64 {
		return float64(samples[int(q*float64(len(samples)-1))]) / 1e6
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.90), "p90-ms")
	b.ReportMetric(at(0.99), "p99-ms")
}

// parallelDownloads is how many downloads BenchmarkParallelDownload runs at
// once, each of parallelSize bytes.
const parallelDownloads = 16

// parallelSize is the size of each parallel download (2 MiB with -short).
func parallelSize() int64 {
	if testing.Short() {
		return 2 << 20
	}
	return 32 << 20
}

// BenchmarkParallelDownload: 16 downloads at once through one agent; the
// MB/s figure is their aggregate.
func BenchmarkParallelDownload(b *testing.B) {
	e := newEnv(b, envOptions{connStreams: true})
	e.addAgent(b, "node-a", true, "127.0.0.1")
	dialers := benchDialers(b, e, byteServer(b))
	for _, name := range []string{"direct", "grpc", "connect"} {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(parallelDownloads * parallelSize())
			b.ReportAllocs()
			for b.Loop() {
				var wg sync.WaitGroup
				errs := make(chan error, parallelDownloads)
				for range parallelDownloads {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c, err := dialers[name]()
						if err != nil {
							errs <- err
							return
						}
						defer c.Close()
						errs <- download(c, parallelSize(), make([]byte, 256<<10))
					}()
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
