package ha_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// cutTable is the nftables table that cuts an edge node off.
const cutTable = "edge_tunnel_e2e_cut"

// cutOff drops every packet on the node's link, in both directions, as a
// broken uplink does: no reset, no ICMP, the peers only stop hearing from
// each other. restore removes the rule; it runs on cleanup too.
func cutOff(t *testing.T, n *harness.EdgeNode) (restore func()) {
	t.Helper()
	rules := fmt.Sprintf(`table inet %s {
  chain in {
    type filter hook input priority -10; policy accept;
    iifname "eth0" drop
  }
  chain out {
    type filter hook output priority -10; policy accept;
    oifname "eth0" drop
  }
}
`, cutTable)
	cmd := exec.Command("ip", "netns", "exec", n.Netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cut %s off: nft -f: %v: %s", n.Name, err, out)
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			if out, err := exec.Command("ip", "netns", "exec", n.Netns, "nft", "delete", "table", "inet", cutTable).CombinedOutput(); err != nil {
				t.Errorf("reconnect %s: nft delete table: %v: %s", n.Name, err, out)
			}
		})
	}
	t.Cleanup(restore)
	return restore
}

// connectWithin is a CONNECT through s's unix socket whose deadline is
// long enough to see the server's own answer: how long it took, and the
// error.
func connectWithin(s *harness.Server, addr string, deadline time.Duration) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	c, err := s.DialUDS(ctx)
	if err != nil {
		return time.Since(start), err
	}
	defer c.Close()
	_ = c.SetDeadline(start.Add(deadline))
	_, err = harness.Connect(c, addr)
	return time.Since(start), err
}

// TestNetworkCut cuts an edge node's network off (an agent in a network
// namespace, its link dropping every packet) while the replicas reach it
// through the load balancer. Each replica notices within about twice its
// --keepalive-time, fails the dials waiting for that node with a message
// naming it, and refuses new ones at once; the other nodes are unaffected.
// Once the link is back the agent reconnects to every replica by itself.
func TestNetworkCut(t *testing.T) {
	c := newCluster(t, clusterOptions{edgeNetwork: true})
	bystander := c.addNode(t, "edge-ok", "127.0.0.31")
	edge := c.net.AddNode(t, "edge-cut")
	agent := harness.StartAgent(t, c.bins, c.pki, nil, harness.AgentOptions{
		Name: edge.Name, IPv4: edge.Addr.String(), Node: edge, ServerAddr: c.lb.NodeAgentAddr, ExtraArgs: agentArgs})
	c.waitMesh(t, 2, bystander)

	// Nothing listens on this port on the node, so a dial that reaches
	// the agent comes back with its refusal; one that does not reach it
	// comes back with the server's.
	target := net.JoinHostPort(edge.Name, "40000")
	const agentAnswer = "edge-tunnel-agent " + "edge-cut" + " could not dial"
	for _, s := range c.servers {
		if _, err := connectWithin(s, target, opTimeout); err == nil || !strings.Contains(err.Error(), agentAnswer) {
			t.Fatalf("through %s to %s before the cut: want the agent's refusal (%q), got %v", serverName(s), target, agentAnswer, err)
		}
	}

	restore := cutOff(t, edge)
	cut := time.Now()
	// Dials sent now wait for an agent that will never answer, until the
	// replica notices that the connection is dead.
	bound := 2*serverKeepalive + 2*time.Second
	var wg sync.WaitGroup
	for _, s := range c.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			took, err := connectWithin(s, target, 15*time.Second)
			switch {
			case err == nil:
				t.Errorf("through %s to %s after the cut: the tunnel opened", serverName(s), target)
			case !strings.Contains(err.Error(), edge.Name) || took > bound:
				t.Errorf("through %s to %s after the cut: want an error naming %s within %s (twice --keepalive-time and some); got after %s: %v",
					serverName(s), target, edge.Name, bound, took.Round(time.Millisecond), err)
			default:
				t.Logf("through %s, a dial pending at the cut failed after %s: %v", serverName(s), took.Round(time.Millisecond), err)
			}
		}()
	}
	wg.Wait()
	c.waitMesh(t, 1, bystander)
	t.Logf("every replica counts the cut agent gone %s after the cut (--keepalive-time=%s)", time.Since(cut).Round(time.Millisecond), serverKeepalive)
	for _, s := range c.servers {
		took, err := connectWithin(s, target, opTimeout)
		if err == nil || !strings.Contains(err.Error(), edge.Name) || took > time.Second {
			t.Errorf("through %s to %s once the cut is noticed: want an error naming %s at once; got after %s: %v", serverName(s), target, edge.Name, took.Round(time.Millisecond), err)
		}
		if err := echoVia(s, bystander); err != nil {
			t.Errorf("through %s to %s, whose network is fine: %v", serverName(s), bystander.addr(), err)
		}
	}

	// A long outage: the agent, too, finds its connections dead (its own
	// keepalive) and keeps trying to reconnect over the dead link.
	// About its --keepalive-time plus 10 s; 20 s seen on a busy machine.
	waitAgentAlone(t, edge, agent, 40*time.Second)
	t.Logf("the cut agent counts no server connection %s after the cut", time.Since(cut).Round(time.Millisecond))

	restore()
	restored := time.Now()
	const reconnectBound = 30 * time.Second
	deadline := restored.Add(reconnectBound)
	for {
		problems := c.meshProblems(2)
		for _, s := range c.servers {
			if _, err := connectWithin(s, target, opTimeout); err == nil || !strings.Contains(err.Error(), agentAnswer) {
				problems = append(problems, fmt.Sprintf("through %s: %v", serverName(s), err))
			}
		}
		if len(problems) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after the link came back the agent has not reconnected to every replica: %s", reconnectBound, strings.Join(problems, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the agent reconnected to every replica by itself %s after the link came back (the cut lasted %s)",
		time.Since(restored).Round(time.Millisecond), restored.Sub(cut).Round(time.Millisecond))
}

// waitAgentAlone waits until the agent inside node counts no connection to
// any server (read from inside the node's namespace, where its health port
// is).
func waitAgentAlone(t *testing.T, node *harness.EdgeNode, a *harness.Agent, within time.Duration) {
	t.Helper()
	client := node.HTTPClient(2 * time.Second)
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		resp, err := client.Get(a.HealthURL + "/metrics")
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			v, merr := harness.MetricFromText(string(body), "edge_tunnel_agent_server_connections")
			if rerr == nil && merr == nil && v == 0 {
				return
			}
			last = fmt.Sprintf("value %v (%v, %v)", v, rerr, merr)
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("the agent in %s still counts server connections %s after the cut: %s", node.Name, within, last)
}
