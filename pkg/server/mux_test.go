package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// TestAgentMuxStreamFollowsUse: an agent opens its mux stream with its
// first tunneled connection, not when it connects (an idle agent costs the
// server no stream), closes it once it carried nothing for MuxIdle, and
// opens a new one for the next connection.
func TestAgentMuxStreamFollowsUse(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{connStreams: true, registry: reg})
	ids, err := identity.Parse("host=node-a&ipv4=127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{ServerAddr: e.agentAdr, TLS: e.nodeTLS(t, "system:node:node-a", "127.0.0.1"), AgentID: "node-a",
		Identifiers: ids, SyncInterval: 100 * time.Millisecond, ConnStreams: true, Mux: true, MuxIdle: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, a.Run)
	streams := func() float64 { return metricValue(t, reg, "edge_tunnel_server_mux_streams") }
	waitFor(t, "agent connected", func() bool {
		return metricValue(t, reg, "edge_tunnel_server_agent_connections", "mode", "mux") == 1
	})
	if n := streams(); n != 0 {
		t.Fatalf("%v mux streams before any connection, want 0", n)
	}

	target := echoServer(t)
	for round := 1; round <= 2; round++ {
		c, err := e.dialGRPC(context.Background(), target)
		if err != nil {
			t.Fatalf("round %d: dial: %v", round, err)
		}
		echoRoundTrip(t, c, 300000)
		if n := streams(); n != 1 {
			t.Fatalf("round %d: %v mux streams while a connection is open, want 1", round, n)
		}
		c.Close()
		waitFor(t, "the idle mux stream closed", func() bool { return streams() == 0 })
	}
}
