// Package bench holds the memory and scale benchmarks of edge-tunnel: the
// real edge-tunnel-server and edge-tunnel-agent processes, built and
// started by e2e/harness with mutual TLS on loopback, measured from outside
// (VmRSS in /proc, the Go heap from their /metrics).
//
// Each benchmark is one measurement, not a loop to average, so run it once:
//
//	go test -run '^$' -bench . -benchtime 1x ./e2e/bench/
//
// BENCH_IDLE_CONNS and BENCH_AGENTS set the scale (default 10,000 each);
// BENCH_PROFILE_DIR, when set, receives heap profiles of the server (and
// agent) taken at the measured point, for `go tool pprof -top`.
package bench
