package ha_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// TestAgentRestart kills an agent (SIGKILL: no goodbye) and starts it
// again. Every replica notices the loss at once, since the load balancer
// passes the closed connection on; dials to that node fail at once with a
// message naming it, while the other nodes are unaffected; and once the
// agent is back, dials through every replica reach the node again within
// a second or so (asserted: 3 s).
func TestAgentRestart(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	nodes := threeNodes(t, c)
	victim := nodes[1]

	victim.agent.Kill()
	killed := time.Now()
	c.waitMesh(t, len(nodes)-1)
	t.Logf("every replica counts the agent of %s gone %s after SIGKILL", victim.name, time.Since(killed).Round(time.Millisecond))
	for _, s := range c.servers {
		start := time.Now()
		err := echoVia(s, victim)
		took := time.Since(start)
		if err == nil {
			t.Fatalf("through %s to %s with its agent killed: the tunnel worked", serverName(s), victim.addr())
		}
		if !strings.Contains(err.Error(), victim.name) || took > time.Second {
			t.Errorf("through %s to %s with its agent killed: want an error naming %s within 1 s; got after %s: %v", serverName(s), victim.addr(), victim.name, took.Round(time.Millisecond), err)
		}
		if err := echoVia(s, nodes[0]); err != nil {
			t.Errorf("through %s to %s, whose agent runs: %v", serverName(s), nodes[0].addr(), err)
		}
	}

	started := time.Now()
	c.restartAgent(t, victim)
	back := time.Now()
	const bound = 3 * time.Second
	var wg sync.WaitGroup
	results := make([]string, len(c.servers))
	for i, s := range c.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := back.Add(10 * time.Second)
			var err error
			for time.Now().Before(deadline) {
				if err = echoVia(s, victim); err == nil {
					took := time.Since(back)
					results[i] = fmt.Sprintf("%s %s", serverName(s), took.Round(time.Millisecond))
					if took > bound {
						t.Errorf("through %s: dials reach %s %s after its agent was back, want < %s", serverName(s), victim.name, took.Round(time.Millisecond), bound)
					}
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Errorf("through %s: dials to %s still fail 10 s after its agent was back: %v", serverName(s), victim.name, err)
		}()
	}
	wg.Wait()
	t.Logf("agent of %s started, ready %s later; dials work again through %s after it was ready",
		victim.name, back.Sub(started).Round(time.Millisecond), strings.Join(results, ", "))
	c.waitMesh(t, len(nodes), nodes...)
}

// TestAgentDrain: two agents serve the same node, as during a DaemonSet
// rolling update. Every replica sends new dials to the newer one; when it
// gets SIGTERM it tells every replica (DRAIN), new dials go to the other
// agent at once, the tunnel it still carries keeps working, and it exits
// as soon as that tunnel is closed rather than at the end of its
// --drain-grace.
func TestAgentDrain(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	older := c.addNode(t, "edge-dual", "127.0.0.21")
	c.waitMesh(t, 1, older)
	newer := &node{name: older.name, echo: older.echo, opts: older.opts}
	newer.agent = harness.StartAgent(t, c.bins, c.pki, nil, newer.opts)
	c.waitMesh(t, 1, older, newer) // one node, two agents, each on every replica

	// servedBy dials the node through s and says which agent dialed.
	servedBy := func(s *harness.Server) string {
		t.Helper()
		o, n := dialsOK(t, older.agent), dialsOK(t, newer.agent)
		if err := echoVia(s, older); err != nil {
			t.Fatalf("through %s to %s: %v", serverName(s), older.addr(), err)
		}
		switch do, dn := dialsOK(t, older.agent)-o, dialsOK(t, newer.agent)-n; {
		case do == 1 && dn == 0:
			return "older"
		case do == 0 && dn == 1:
			return "newer"
		default:
			t.Fatalf("through %s: the older agent counted %v dials and the newer %v, want one in all", serverName(s), do, dn)
			return ""
		}
	}
	for _, s := range c.servers {
		if got := servedBy(s); got != "newer" {
			t.Errorf("through %s: the %s agent dialed; want the newer one while both run", serverName(s), got)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	open, err := tunnelVia(ctx, c.servers[0], older.addr())
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()

	terminate(t, newer.agent.Process)
	terminated := time.Now()
	var moved []string
	for _, s := range c.servers {
		deadline := time.Now().Add(2 * time.Second)
		for servedBy(s) != "older" {
			if time.Now().After(deadline) {
				t.Fatalf("through %s: dials still go to the draining agent 2 s after its SIGTERM", serverName(s))
			}
			time.Sleep(20 * time.Millisecond)
		}
		moved = append(moved, fmt.Sprintf("%s %s", serverName(s), time.Since(terminated).Round(time.Millisecond)))
		for range 3 {
			if got := servedBy(s); got != "older" {
				t.Errorf("through %s: a dial went to the draining agent after another had gone to the older one", serverName(s))
			}
		}
	}
	t.Logf("new dials go to the other agent after SIGTERM: %s", strings.Join(moved, ", "))

	if newer.agent.Exited() {
		t.Fatalf("the draining agent exited while it still carried a tunnel\n%s", newer.agent.LogTail(20))
	}
	if err := echoBounded(open, 64<<10, opTimeout); err != nil {
		t.Fatalf("the tunnel through the draining agent, %s after its SIGTERM: %v", time.Since(terminated).Round(time.Millisecond), err)
	}
	open.Close()
	closed := time.Now()
	waitExit(t, newer.agent.Process, 4*time.Second)
	took := time.Since(closed)
	t.Logf("the draining agent exited %s after its last tunnel closed (%s after SIGTERM; --drain-grace=5s)", took.Round(time.Millisecond), time.Since(terminated).Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Errorf("the draining agent exited %s after its last tunnel closed, want < 1.5 s", took.Round(time.Millisecond))
	}
	for _, s := range c.servers {
		before := dialsOK(t, older.agent)
		if err := echoVia(s, older); err != nil {
			t.Errorf("through %s after the drain: %v", serverName(s), err)
		} else if got := dialsOK(t, older.agent) - before; got != 1 {
			t.Errorf("through %s after the drain: the remaining agent counted %v dials, want 1", serverName(s), got)
		}
	}
}
