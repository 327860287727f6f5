package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// echoServer accepts on loopback and echoes every connection.
func echoServer(t testing.TB) string { return echoServerOn(t, "127.0.0.1:0") }

// echoServerOn is echoServer on a given address.
func echoServerOn(t testing.TB, addr string) string {
	t.Helper()
	return serveTCP(t, addr, func(c net.Conn) { io.Copy(c, c); c.Close() })
}

func echoRoundTrip(t testing.TB, c net.Conn, size int) {
	t.Helper()
	msg := make([]byte, size)
	rand.Read(msg)
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("writing: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo differs from what was sent")
	}
}

func TestGRPCFrontendEcho(t *testing.T) {
	for _, mode := range []struct {
		name          string
		server, agent bool
		noMux         bool
	}{{"mux", true, true, false}, {"conn-streams", true, true, true}, {"single-stream agent", true, false, false}, {"single-stream server", false, true, false}} {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, envOptions{connStreams: mode.server, noMux: mode.noMux})
			e.addAgent(t, "node-a", mode.agent, "127.0.0.1")
			target := echoServer(t)
			for i := 0; i < 3; i++ {
				c, err := e.dialGRPC(context.Background(), target)
				if err != nil {
					t.Fatalf("dial %s: %v", target, err)
				}
				echoRoundTrip(t, c, 1+i*300000)
				// konnectivity-client v0.37's Close can report "tunnel
				// closed" although the CLOSE_RSP arrived (a race in the
				// client); badinput_test checks the CLOSE_RSP itself.
				if err := c.Close(); err != nil && !strings.Contains(err.Error(), "tunnel closed") {
					t.Fatalf("close: %v", err)
				}
			}
		})
	}
}

// connectDial writes exactly what kube-apiserver writes for HTTPConnect and
// applies its rule: status 200 and nothing buffered after the head.
func connectDial(t testing.TB, c net.Conn, address string) (*http.Response, error) {
	t.Helper()
	if _, err := io.WriteString(c, "CONNECT "+address+" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
		return nil, err
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, err
	}
	if res.StatusCode == 200 && br.Buffered() > 0 {
		t.Fatalf("%d bytes buffered after the 200 head", br.Buffered())
	}
	return res, nil
}

func TestConnectFrontend(t *testing.T) {
	e := newEnv(t, envOptions{connStreams: true})
	e.addAgent(t, "node-a", true, "127.0.0.1")
	target := echoServer(t)

	dials := map[string]func() (net.Conn, error){
		"uds": func() (net.Conn, error) { return net.Dial("unix", e.uds) },
		"tcp+mtls": func() (net.Conn, error) {
			return tls.Dial("tcp", e.srv.Addr("frontend").String(), e.clientTL)
		},
	}
	for name, dial := range dials {
		t.Run(name, func(t *testing.T) {
			c, err := dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			res, err := connectDial(t, c, target)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != 200 {
				t.Fatalf("status %s", res.Status)
			}
			echoRoundTrip(t, c, 200000)
		})
	}

	t.Run("no agent", func(t *testing.T) {
		c, err := net.Dial("unix", e.uds)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		res, err := connectDial(t, c, "node-unknown:10250")
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(res.Status, "node-unknown") {
			t.Fatalf("got %q, want 503 naming the host", res.Status)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("refusal took %v", d)
		}
	})

	t.Run("refused port on the edge", func(t *testing.T) {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		closed := ln.Addr().String()
		ln.Close()
		c, err := net.Dial("unix", e.uds)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		res, err := connectDial(t, c, closed)
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode != http.StatusBadGateway || !strings.Contains(res.Status, "refused") {
			t.Fatalf("got %q, want 502 saying the connection was refused", res.Status)
		}
	})
}
