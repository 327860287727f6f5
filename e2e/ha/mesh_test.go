package ha_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// threeNodes starts agents edge-1..3 on 127.0.0.11..13 and waits until each
// holds a connection to every replica.
func threeNodes(t *testing.T, c *cluster) []*node {
	t.Helper()
	var nodes []*node
	for i := range 3 {
		nodes = append(nodes, c.addNode(t, fmt.Sprintf("edge-%d", i+1), fmt.Sprintf("127.0.0.%d", 11+i)))
	}
	took := c.waitMesh(t, len(nodes), nodes...)
	t.Logf("every agent holds a connection to each of the %d replicas %s after the last agent was ready", replicas, took.Round(time.Millisecond))
	return nodes
}

// TestEveryAgentOnEveryServer: agents that know only the load balancer's
// address each hold one connection to every replica, and every (replica,
// agent) pair carries traffic, so a client reaches every node through
// whichever replica the load balancer picks.
func TestEveryAgentOnEveryServer(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	nodes := threeNodes(t, c)

	for _, s := range c.servers {
		if v, err := s.Metric("edge_tunnel_server_agent_connections"); err != nil || v != float64(len(nodes)) {
			t.Errorf("%s counts %v agent connections (error %v), want %d: one per agent", serverName(s), v, err, len(nodes))
		}
	}
	// Each pair, one at a time, so the agent's dial counter says that the
	// dial went through that agent.
	for _, s := range c.servers {
		for _, n := range nodes {
			before := dialsOK(t, n.agent)
			if err := echoVia(s, n); err != nil {
				t.Errorf("through %s to %s: %v", serverName(s), n.addr(), err)
				continue
			}
			if got := dialsOK(t, n.agent) - before; got != 1 {
				t.Errorf("through %s to %s: the agent of %s counted %v dials, want 1", serverName(s), n.addr(), n.name, got)
			}
		}
	}
	// Through the load balancer's client frontend: every replica in turn.
	for i := range 2 * replicas {
		n := nodes[i%len(nodes)]
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		conn, err := tunnelViaLB(ctx, c.lb, c.clientTLS, n.addr())
		cancel()
		if err != nil {
			t.Errorf("through haproxy to %s: %v", n.addr(), err)
			continue
		}
		if err := harness.CheckEcho(conn, 16<<10); err != nil {
			t.Errorf("through haproxy to %s: %v", n.addr(), err)
		}
		conn.Close()
	}
	var perServer []string
	for _, s := range c.servers {
		v, err := s.Metric("edge_tunnel_server_dials_total", `frontend="connect"`, `result="ok"`)
		if err != nil {
			t.Fatal(err)
		}
		perServer = append(perServer, fmt.Sprintf("%s %v", serverName(s), v))
	}
	// How haproxy spread its share depends on its health checks of the
	// moment; the pairs above are what must hold.
	t.Logf("completed CONNECT dials per replica (%d each through its socket, the rest through haproxy): %v", len(nodes), perServer)
}
