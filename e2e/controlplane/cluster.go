package controlplane

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// Ports of the kubelet stand-in's services inside every edge node.
const (
	KubeletPort   = 10250
	ReadOnlyPort  = 10255
	ExtraHTTPPort = 9100 // plain HTTP on the node address
	ExtraTLSPort  = 9443 // HTTPS on the node address, kubelet CA
	LocalhostPort = 9200 // plain HTTP on the node's 127.0.0.1 only
)

// NetworkPrefix names the namespaces and links of the edge network.
const NetworkPrefix = "etcp"

// DefaultSubnet is the edge network's subnet (TEST-NET-2, RFC 5737, which
// no real network uses); E2E_SUBNET overrides it. NewEdgeNetwork refuses a
// subnet the host already uses.
const DefaultSubnet = "198.51.100.0/24"

// Options tune NewCluster.
type Options struct {
	// Nodes is the number of edge nodes (default 2), named edge-1, edge-2...
	Nodes int
	// Ports is the port ConfigMap data given to edge-tunnel-server through
	// --ports-config (default: none, so only the kubelet ports are
	// forwarded).
	Ports map[string]string
	// PortsFromAPI makes edge-tunnel-server watch ConfigMap
	// kube-system/edge-tunnel-server-cfg through the cluster's kube-apiserver
	// (--kubeconfig) instead of reading Ports from a file.
	PortsFromAPI bool
	// ServerArgs are extra edge-tunnel-server flags.
	ServerArgs []string
	// HTTPProxy serves edge-tunnel-server's own HTTP proxy on loopback, at
	// Server.ProxyAddr.
	HTTPProxy bool
}

// Cluster is etcd, edge-tunnel-server and edge nodes (each a network
// namespace with edge-tunnel-agent and the kubelet stand-in). kube-apiserver
// comes and goes with StartAPIServer, one per egress mode, against the same
// etcd.
type Cluster struct {
	Tools   Tools
	EtcdURL string
	// APIServerURL is where every kube-apiserver of the cluster listens;
	// Kubeconfig authenticates there as the admin (system:masters).
	APIServerURL string
	Kubeconfig   string
	Server       *harness.Server
	Net          *harness.EdgeNetwork
	Nodes        []*Node

	bins      harness.Binaries
	tunnelPKI *harness.PKI
	certs     *certs
	dir       string

	apiPort           int
	metricsKubeconfig string
}

// Node is one edge node.
type Node struct {
	*harness.EdgeNode
	Agent   *harness.Agent
	Kubelet *harness.Process
	// Pod is the name of the pod bound to this node (namespace default,
	// container "app").
	Pod string
}

// NewCluster starts etcd, the edge network, edge-tunnel-server on the
// network's host address, and the edge nodes with their agents and
// kubelet stand-ins. Everything is stopped and removed by t's cleanup.
func NewCluster(t testing.TB, tools Tools, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	subnet := os.Getenv("E2E_SUBNET")
	if subnet == "" {
		subnet = DefaultSubnet
	}
	c := &Cluster{Tools: tools, bins: harness.Build(t), dir: t.TempDir()}
	var err error
	if c.certs, err = newCerts(c.dir); err != nil {
		t.Fatalf("control-plane certificates: %v", err)
	}
	c.startEtcd(t)
	c.apiPort = harness.FreePorts(t, 1)[0]
	c.APIServerURL = "https://127.0.0.1:" + strconv.Itoa(c.apiPort)
	c.Kubeconfig = writeKubeconfig(t, c.dir, "admin.kubeconfig", c.APIServerURL, c.certs.ClusterCA, adminToken, "")
	c.metricsKubeconfig = writeKubeconfig(t, c.dir, "metrics-server.kubeconfig", c.APIServerURL, c.certs.ClusterCA, metricsToken, "")

	c.Net = harness.NewEdgeNetwork(t, NetworkPrefix, subnet)
	hostAddr := c.Net.HostAddr.String()
	c.tunnelPKI = harness.NewPKI(t, hostAddr)
	serverOpts := harness.ServerOptions{AgentBindAddress: hostAddr, Ports: opts.Ports,
		ExtraArgs: append([]string{c.directDialAllow()}, opts.ServerArgs...), HTTPProxy: opts.HTTPProxy}
	if opts.PortsFromAPI {
		// The kubeconfig stays valid across the cluster's kube-apiservers;
		// until one runs, the server keeps the default port policy.
		serverOpts.Kubeconfig = c.Kubeconfig
	} else if serverOpts.Ports == nil {
		serverOpts.Ports = map[string]string{}
	}
	c.Server = harness.StartServer(t, c.bins, c.tunnelPKI, serverOpts)
	for i := 1; i <= opts.Nodes; i++ {
		name := "edge-" + strconv.Itoa(i)
		n := &Node{EdgeNode: c.Net.AddNode(t, name), Pod: "web-" + name}
		c.startKubelet(t, n)
		c.Nodes = append(c.Nodes, n)
		c.StartAgent(t, n)
	}
	c.Server.WaitAgents(t, len(c.Nodes))
	return c
}

// startEtcd starts etcd on loopback with a fresh data directory.
func (c *Cluster) startEtcd(t testing.TB) {
	t.Helper()
	ports := harness.FreePorts(t, 2)
	c.EtcdURL = "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	p := harness.StartProcess(t, "etcd", c.dir, c.Tools.Etcd,
		"--name", "default",
		"--data-dir", t.TempDir(),
		"--listen-client-urls", c.EtcdURL,
		"--advertise-client-urls", c.EtcdURL,
		"--listen-peer-urls", peer,
		"--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default="+peer,
		"--log-level", "warn",
	)
	client := &http.Client{Timeout: time.Second}
	err := poll(20*time.Second, 100*time.Millisecond, func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("etcd exited")
		}
		resp, err := client.Get(c.EtcdURL + "/health")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("etcd not healthy: %v\n--- last lines of its log:\n%s", err, p.LogTail(40))
	}
}

// startKubelet starts the kubelet stand-in in n's namespace and waits
// until it answers on its read-only port from inside the node.
func (c *Cluster) startKubelet(t testing.TB, n *Node) {
	t.Helper()
	cert, key, err := c.certs.kubeletServing(n.Name, n.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	bin, args := n.Command(c.Tools.KubeletStandin,
		"--node-name", n.Name,
		"--address", n.Addr.String(),
		"--port", strconv.Itoa(KubeletPort),
		"--read-only-port", strconv.Itoa(ReadOnlyPort),
		"--tls-cert-file", cert,
		"--tls-private-key-file", key,
		"--client-ca-file", c.certs.ClusterCA,
		"--extra-http-port", strconv.Itoa(ExtraHTTPPort),
		"--extra-https-port", strconv.Itoa(ExtraTLSPort),
		"--localhost-port", strconv.Itoa(LocalhostPort),
	)
	n.Kubelet = harness.StartProcess(t, "kubelet-"+n.Name, c.dir, bin, args...)
	client := n.HTTPClient(time.Second)
	url := "http://" + net.JoinHostPort(n.Addr.String(), strconv.Itoa(ReadOnlyPort)) + "/healthz"
	err = poll(20*time.Second, 100*time.Millisecond, func() (bool, error) {
		if n.Kubelet.Exited() {
			return false, fmt.Errorf("kubelet stand-in exited")
		}
		resp, err := client.Get(url)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("kubelet stand-in of %s not serving: %v\n--- last lines of its log:\n%s", n.Name, err, n.Kubelet.LogTail(40))
	}
}

// StartAgent starts (or starts again) the edge-tunnel-agent of node n in
// its namespace. The agent claims the node's name and address; its client
// certificate is a kubelet-style system:node:NAME certificate.
func (c *Cluster) StartAgent(t testing.TB, n *Node) {
	t.Helper()
	n.Agent = harness.StartAgent(t, c.bins, c.tunnelPKI, c.Server, harness.AgentOptions{
		Name: n.Name,
		IPv4: n.Addr.String(),
		Node: n.EdgeNode,
	})
}

// Node returns the node called name.
func (c *Cluster) Node(t testing.TB, name string) *Node {
	t.Helper()
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no edge node %s", name)
	return nil
}

// StartAPIServer starts kube-apiserver in mode (see EgressModes),
// registers the nodes and their pods, and returns kubectl for it. Stop
// the returned APIServer before starting another.
func (c *Cluster) StartAPIServer(t testing.TB, mode EgressMode) (*APIServer, *Kubectl) {
	t.Helper()
	a := c.startAPIServer(t, mode)
	k := &Kubectl{Bin: c.Tools.Kubectl, Kubeconfig: a.Kubeconfig}
	c.registerNodes(t, k)
	return a, k
}

// registerNodes creates (or updates) a Node object for every edge node,
// with the status a kubelet would report (address, kubelet port, Ready),
// and a running pod bound to each. Without a controller manager, the
// namespace's default ServiceAccount is created here too.
func (c *Cluster) registerNodes(t testing.TB, k *Kubectl) {
	t.Helper()
	k.Apply(t, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: default}\n")
	now := time.Now().UTC().Format(time.RFC3339)
	for _, n := range c.Nodes {
		k.Apply(t, fmt.Sprintf(`apiVersion: v1
kind: Node
metadata:
  name: %s
  labels: {kubernetes.io/hostname: %s, node-role.kubernetes.io/edge: ""}
`, n.Name, n.Name))
		k.MustRun(t, "patch", "node", n.Name, "--subresource=status", "--type=merge", "-p", fmt.Sprintf(`{"status":{
  "addresses":[{"type":"InternalIP","address":"%s"},{"type":"Hostname","address":"%s"}],
  "daemonEndpoints":{"kubeletEndpoint":{"Port":%d}},
  "conditions":[{"type":"Ready","status":"True","reason":"KubeletReady","message":"kubelet stand-in","lastHeartbeatTime":"%s","lastTransitionTime":"%s"}]}}`,
			n.Addr, n.Name, KubeletPort, now, now))
		k.Apply(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: default}
spec:
  nodeName: %s
  containers:
  - name: app
    image: registry.invalid/edge-tunnel-e2e/app:1
`, n.Pod, n.Name))
		k.MustRun(t, "patch", "pod", n.Pod, "--subresource=status", "--type=merge", "-p", fmt.Sprintf(`{"status":{
  "phase":"Running","hostIP":"%s","podIP":"%s","startTime":"%s",
  "conditions":[{"type":"Ready","status":"True","lastTransitionTime":"%s"}],
  "containerStatuses":[{"name":"app","ready":true,"started":true,"restartCount":0,"image":"registry.invalid/edge-tunnel-e2e/app:1","imageID":"","state":{"running":{"startedAt":"%s"}}}]}}`,
			n.Addr, n.Addr, now, now, now))
	}
}

// directDialAllow is the server's --direct-dial-allow for this cluster: its
// cloud side is loopback and the host's end of the edge network, where
// metrics-server serves; kube-apiserver's cluster egress reaches it by the
// server's direct dials. The edge network's own TEST-NET range is outside
// the default (private ranges), which is how a real server is told.
func (c *Cluster) directDialAllow() string {
	return "--direct-dial-allow=127.0.0.0/8," + c.Net.HostAddr.String()
}
