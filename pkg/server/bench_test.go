package server_test

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
)

// The benchmarks measure the whole data path in one process: client ->
// frontend -> server -> mTLS gRPC -> agent -> loopback target. Each has a
// "direct" case (plain TCP to the same target) measured in the same run, so
// `make bench` can print ratios that do not depend on the machine.

const transferSize = 64 << 20

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

var frontends = []string{"direct", "grpc", "connect", "connect-mtls"}

func benchTransfer(b *testing.B, op func(net.Conn, int64, []byte) error) {
	e := newEnv(b, envOptions{connStreams: true})
	e.addAgent(b, "node-a", true, "127.0.0.1")
	target := byteServer(b)
	dialers := benchDialers(b, e, target)
	for _, name := range frontends {
		b.Run(name, func(b *testing.B) {
			buf := make([]byte, 256<<10)
			b.SetBytes(transferSize)
			b.ReportAllocs()
			for b.Loop() {
				c, err := dialers[name]()
				if err != nil {
					b.Fatal(err)
				}
				if err := op(c, transferSize, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

// BenchmarkDownload: one 64 MiB download per op.
func BenchmarkDownload(b *testing.B) { benchTransfer(b, download) }

// BenchmarkUpload: one 64 MiB upload per op.
func BenchmarkUpload(b *testing.B) { benchTransfer(b, upload) }

// BenchmarkDial: a new tunnel, a dial, a 64-byte echo and close, as
// kube-apiserver does for every request it sends through the egress.
func BenchmarkDial(b *testing.B) {
	e := newEnv(b, envOptions{connStreams: true})
	e.addAgent(b, "node-a", true, "127.0.0.1")
	target := echoServer(b)
	dialers := benchDialers(b, e, target)
	for _, name := range frontends {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				c, err := dialers[name]()
				if err != nil {
					b.Fatal(err)
				}
				echoRoundTrip(b, c, 64)
				c.Close()
			}
		})
	}
}
