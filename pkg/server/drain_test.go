package server_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// TestDrainMovesNewDialsToOtherAgents: an agent that is stopping sends DRAIN;
// the server then gives new dials for its node to another agent of the same
// node (as during a DaemonSet rolling update), while connections already
// open through the draining agent keep working for the grace period.
func TestDrainMovesNewDialsToOtherAgents(t *testing.T) {
	e := newEnv(t, envOptions{connStreams: true})
	ids, err := identity.Parse("host=node-a&ipv4=127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	start := func(id string) context.CancelFunc {
		a, err := agent.New(agent.Config{ServerAddr: e.agentAdr, TLS: e.agentTLS, AgentID: id, Identifiers: ids,
			SyncInterval: 100 * time.Millisecond, DrainGrace: 5 * time.Second, ConnStreams: true, Mux: true})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { a.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return cancel
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// servedBy dials a refused port by node name; the error names the agent
	// that tried.
	servedBy := func() string {
		_, err := e.dialGRPC(context.Background(), net.JoinHostPort("node-a", strconv.Itoa(refused)))
		if err == nil {
			t.Fatal("dial of a closed port succeeded")
		}
		for _, id := range []string{"node-a-old", "node-a-new"} {
			if strings.Contains(err.Error(), id) {
				return id
			}
		}
		return err.Error()
	}

	start("node-a-old")
	waitFor(t, "old agent serving node-a", func() bool { return servedBy() == "node-a-old" })
	stopNew := start("node-a-new")
	waitFor(t, "newest agent preferred", func() bool { return servedBy() == "node-a-new" })

	// A connection through the new agent, open while it drains.
	target := echoServer(t)
	open, err := e.dialGRPC(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	echoRoundTrip(t, open, 100)

	stopNew() // SIGTERM: DRAIN, then up to 5 s for open connections
	waitFor(t, "new dials moved to the other agent", func() bool { return servedBy() == "node-a-old" })
	echoRoundTrip(t, open, 100) // still carried by the draining agent
}

// TestDepartedAgentRefusedAtOnce: once the agent of a node is gone, dials to
// that node fail at once with a message naming the agent, even with direct
// dial on (dialing an edge address from the cloud would only time out).
func TestDepartedAgentRefusedAtOnce(t *testing.T) {
	e := newEnv(t, envOptions{connStreams: true, directDial: true})
	ids, _ := identity.Parse("host=node-x&ipv4=127.0.0.5")
	a, err := agent.New(agent.Config{ServerAddr: e.agentAdr, TLS: e.agentTLS, AgentID: "node-x", Identifiers: ids,
		SyncInterval: 100 * time.Millisecond, ConnStreams: true, Mux: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	target := echoServerOn(t, "127.0.0.5:0")
	// With direct dial on, the echo target answers before the agent is
	// connected too; a refused port says who dialed it, so wait until the
	// refusal names the agent.
	ln, _ := net.Listen("tcp", "127.0.0.5:0")
	refused := ln.Addr().String()
	ln.Close()
	waitFor(t, "agent serving node-x", func() bool {
		_, err := e.dialGRPC(context.Background(), refused)
		return err != nil && strings.Contains(err.Error(), "node-x")
	})
	c, err := e.dialGRPC(context.Background(), target)
	if err != nil {
		t.Fatalf("dial through the connected agent: %v", err)
	}
	c.Close()
	cancel()
	<-done
	var last error
	defer func() {
		if t.Failed() {
			t.Logf("last dial error: %v", last)
		}
	}()
	waitFor(t, "agent gone", func() bool {
		start := time.Now()
		c, err := e.dialGRPC(context.Background(), target)
		if c != nil {
			c.Close()
		}
		last = err
		if err == nil || !strings.Contains(err.Error(), "node-x") || !strings.Contains(err.Error(), "disconnected") {
			return false
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("refusal took %v", d)
		}
		return true
	})
}
