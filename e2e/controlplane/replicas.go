package controlplane

import (
	"testing"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// StartReplica starts another edge-tunnel-server replica next to c.Server:
// the same tunnel PKI and agent bind address (the edge network's host
// end), the cluster's admin kubeconfig, its own ID, ports and socket, and
// args added to its command line. It is stopped by t's cleanup.
func (c *Cluster) StartReplica(t testing.TB, id string, args ...string) *harness.Server {
	t.Helper()
	return harness.StartServer(t, c.bins, c.tunnelPKI, harness.ServerOptions{
		ID: id, AgentBindAddress: c.Net.HostAddr.String(), Kubeconfig: c.Kubeconfig,
		ExtraArgs: append([]string{c.directDialAllow()}, args...),
	})
}

// StartAgentVia starts (or starts again) node n's agent dialing addr, a
// load balancer in front of the replicas, instead of c.Server; args are
// added to its command line. Stop n's running agent first.
func (c *Cluster) StartAgentVia(t testing.TB, n *Node, addr string, args ...string) {
	t.Helper()
	n.Agent = harness.StartAgent(t, c.bins, c.tunnelPKI, nil, harness.AgentOptions{
		Name: n.Name, IPv4: n.Addr.String(), Node: n.EdgeNode, ServerAddr: addr, ExtraArgs: args,
	})
}
