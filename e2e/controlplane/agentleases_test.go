package controlplane_test

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/controlplane"
	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// TestAgentCountsLeases is TestServerCountFromLeases with the agent
// counting the replica Leases itself (--count-server-leases), from an edge
// node, under the RBAC of manifests/components/agent-lease-count and the
// ServiceAccount of manifests/base/agent: it follows the replicas up and
// down without a restart and without asking the servers, and it keeps its
// count when the API is out of reach.
func TestAgentCountsLeases(t *testing.T) {
	setup(t)
	const leaseDuration = 6 * time.Second
	leaseArgs := []string{"--enable-lease-controller", "--lease-duration=6s", "--lease-renewal-interval=1s"}
	c := controlplane.NewCluster(t, tools, controlplane.Options{Nodes: 1, PortsFromAPI: true, ServerArgs: leaseArgs})
	s1 := c.Server
	_, k := c.StartAPIServer(t, controlplane.EgressModes[0])
	waitLeases(t, k, "edge-tunnel-server-e2e-server")

	// The agent's identity and rights, from the manifests themselves.
	for _, f := range []string{"../../manifests/base/agent/serviceaccount.yaml", "../../manifests/components/agent-lease-count/rbac.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		k.Apply(t, string(b))
	}
	token := strings.TrimSpace(k.MustRun(t, "create", "token", "edge-tunnel-agent", "-n", "kube-system", "--duration", "1h").Stdout)
	// kube-apiserver listens on loopback; the edge node reaches it through
	// a forwarder on the edge network's host end.
	api := startBalancer(t, c.Net.HostAddr.String())
	api.set(c.APIServerAddr())
	kubeconfig := c.EdgeKubeconfig(t, "edge-agent.kubeconfig", api.addr(), token)

	n := c.Nodes[0]
	lb := startBalancer(t, c.Net.HostAddr.String())
	lb.set(s1.AgentAddr)
	n.Agent.Stop(t)
	c.StartAgentVia(t, n, lb.addr(), "--sync-interval=200ms", "--sync-interval-cap=2s",
		"--count-server-leases", "--kubeconfig="+kubeconfig)
	waitConnected(t, s1, 1, 20*time.Second)
	waitLog(t, n.Agent, `"Live server replicas counted from their Leases" logger="agent.leases".* count=1 `, 20*time.Second)

	// Scale up to three replicas: the agent's own count says 3.
	start := time.Now()
	s2 := c.StartReplica(t, "s2", leaseArgs...)
	s3 := c.StartReplica(t, "s3", leaseArgs...)
	lb.set(s1.AgentAddr, s2.AgentAddr, s3.AgentAddr)
	waitLog(t, n.Agent, `"Server count changed".* from=1 to=3 source="leases"`, 15*time.Second)
	for _, s := range []*harness.Server{s2, s3} {
		waitConnected(t, s, 1, 20*time.Second)
	}
	t.Logf("the agent counted and reached both new replicas %s after they were started", time.Since(start).Round(time.Millisecond))
	for _, s := range []*harness.Server{s1, s2, s3} {
		getThrough(t, s, net.JoinHostPort(n.Addr.String(), strconv.Itoa(controlplane.ReadOnlyPort)))
	}
	if strings.Contains(n.Agent.Log(), `source="announced"`) {
		t.Errorf("the agent went by a server's count although it counts the Leases:\n%s", n.Agent.LogTail(30))
	}

	// s3 stops gracefully and deletes its Lease: the agent's watch sees
	// it go, and the agent stops looking for a third replica.
	lb.set(s1.AgentAddr, s2.AgentAddr)
	stopped := time.Now()
	go s3.Stop(t)
	waitLog(t, n.Agent, `"Server count changed".* from=3 to=2 source="leases"`, 10*time.Second)
	t.Logf("the agent lowered its target to 2 replicas %s after s3 was stopped", time.Since(stopped).Round(time.Millisecond))
	<-s3.Done()
	assertSettled(t, n.Agent, 3*time.Second)

	// The API goes out of reach of the edge while s2 crashes: no Lease
	// is renewed as far as the agent can see, so it cannot tell a dead
	// replica from a watch that delivers nothing; it keeps its count of
	// 2, says so, and lowers it once renewals arrive again and s2's do
	// not.
	api.set() // the forwarder refuses
	api.closeAll()
	lb.set(s1.AgentAddr)
	s2.Kill()
	// Which of the two it says depends on how client-go's reflector meets
	// the cut (it re-watches quietly, or relists and reports the error);
	// either way the count stays.
	waitLog(t, n.Agent, `No server replica Lease renewed for longer than a lease duration; keeping the count until renewals arrive again|Cannot watch the server replicas' Leases; keeping the last count; retrying`, leaseDuration+10*time.Second)
	time.Sleep(2 * time.Second)
	if strings.Contains(n.Agent.Log(), `from=2 to=1`) {
		t.Errorf("the agent lowered its count while the API was out of reach:\n%s", n.Agent.LogTail(30))
	}
	api.set(c.APIServerAddr())
	back := time.Now()
	waitLog(t, n.Agent, `"Server count changed".* from=2 to=1 source="leases"`, leaseDuration+30*time.Second)
	t.Logf("the agent lowered its target to 1 replica %s after the API was back", time.Since(back).Round(time.Millisecond))
	waitConnected(t, s1, 1, time.Second)
	getThrough(t, s1, net.JoinHostPort(n.Addr.String(), strconv.Itoa(controlplane.ReadOnlyPort)))
}

// closeAll cuts every connection the balancer carries, as a network
// outage does.
func (b *balancer) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for c := range b.conns {
		c.Close()
	}
}
