package server_test

import (
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
)

// roundRobin is a TCP load balancer on loopback, as agents meet in front of
// the server replicas: each new connection goes to the next backend.
func roundRobin(t testing.TB, backends ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backends[i%len(backends)])
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(b, c); b.Close() }()
			go func() { defer wg.Done(); io.Copy(c, b); c.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String()
}

// TestAgentConnectsToEveryReplica: an agent that knows only the load
// balancer's address ends up with a connection to each of three replicas,
// so a dial through any replica reaches it.
func TestAgentConnectsToEveryReplica(t *testing.T) {
	e1 := newEnv(t, envOptions{connStreams: true, serverCount: 3})
	replicas := []*env{e1, e1.replica(t, "s2"), e1.replica(t, "s3")}
	lb := roundRobin(t, replicas[0].agentAdr, replicas[1].agentAdr, replicas[2].agentAdr)
	for _, r := range replicas {
		r.agentAdr = lb
	}
	e1.addAgent(t, "node-a", true, "127.0.0.1")
	target := echoServer(t)
	for i, r := range replicas {
		waitFor(t, "agent reachable through replica "+string(rune('1'+i)), func() bool {
			c, err := r.dialGRPC(context.Background(), target)
			if err != nil {
				if !strings.Contains(err.Error(), "no edge-tunnel-agent") {
					t.Fatalf("replica %d: %v", i+1, err)
				}
				return false
			}
			defer c.Close()
			echoRoundTrip(t, c, 1000)
			return true
		})
	}
}
