package controlplane

import (
	"strings"
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

// EdgeKubeconfig writes a kubeconfig named name for a process on an edge
// node: it authenticates with token and reaches kube-apiserver at addr (a
// forwarder on the edge network's host end, as kube-apiserver listens on
// loopback), checking its certificate under the name "kubernetes", which
// the certificate carries.
func (c *Cluster) EdgeKubeconfig(t testing.TB, name, addr, token string) string {
	t.Helper()
	return writeKubeconfig(t, t.TempDir(), name, "https://"+addr, c.certs.ClusterCA, token, "kubernetes")
}

// APIServerAddr is kube-apiserver's host:port (on loopback).
func (c *Cluster) APIServerAddr() string { return strings.TrimPrefix(c.APIServerURL, "https://") }
