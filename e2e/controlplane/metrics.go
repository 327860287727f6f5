package controlplane

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// MetricsServer is a running metrics-server with its edge-tunnel-proxy
// sidecar.
type MetricsServer struct {
	*harness.Process
	Proxy *harness.Proxy
}

// StartMetricsServer runs metrics-server as it runs in a cluster with
// edge nodes: its kubelet scrapes go to the edge-tunnel-proxy sidecar
// (HTTPS_PROXY on loopback), which reaches edge-tunnel-server's gRPC
// frontend (via "uds" or "mtls"); it serves on the host's edge-network
// address and is registered as the v1beta1.metrics.k8s.io APIService, so
// kube-apiserver's aggregator reaches it through the cluster egress, that
// is through edge-tunnel-server dialing a cloud destination directly.
// Kubelet certificates are verified against the kubelet CA, end to end.
func (c *Cluster) StartMetricsServer(t testing.TB, k *Kubectl, via string) *MetricsServer {
	t.Helper()
	proxy := harness.StartProxy(t, c.bins, c.tunnelPKI, c.Server, harness.ProxyOptions{Via: via})
	hostAddr := c.Net.HostAddr.String()
	dir := filepath.Join(c.dir, "metrics-server")
	pair, err := c.certs.clusterCA.Issue("metrics-server", []string{hostAddr, "metrics-server.kube-system.svc"}, pki.UsageServer)
	if err != nil {
		t.Fatalf("metrics-server serving certificate: %v", err)
	}
	if err := pki.WriteFiles(dir, c.certs.clusterCA, map[string]pki.Pair{"serving": pair}); err != nil {
		t.Fatalf("write metrics-server certificate: %v", err)
	}
	port := harness.FreePorts(t, 1)[0]
	// env sets HTTPS_PROXY for metrics-server alone and execs it in place.
	p := harness.StartProcess(t, "metrics-server", dir, "env",
		"HTTPS_PROXY=http://"+proxy.Addr, "NO_PROXY=127.0.0.1",
		c.Tools.MetricsServer,
		"--kubeconfig", c.metricsKubeconfig,
		"--authentication-kubeconfig", c.metricsKubeconfig,
		"--authorization-kubeconfig", c.metricsKubeconfig,
		"--bind-address", hostAddr,
		"--secure-port", strconv.Itoa(port),
		"--tls-cert-file", filepath.Join(dir, "serving.crt"),
		"--tls-private-key-file", filepath.Join(dir, "serving.key"),
		"--kubelet-use-node-status-port",
		"--kubelet-preferred-address-types", "InternalIP",
		"--kubelet-certificate-authority", c.certs.KubeletCA,
		"--kubelet-client-certificate", c.certs.MetricsClient,
		"--kubelet-client-key", c.certs.MetricsClientKy,
		"--metric-resolution", "10s",
		"--kubelet-request-timeout", "5s",
		"-v", "2",
	)
	caPEM, err := os.ReadFile(c.certs.ClusterCA)
	if err != nil {
		t.Fatalf("read cluster CA: %v", err)
	}
	// No controller manager runs, so the Service's endpoints are written
	// here (both APIs; kube-apiserver routes to them with
	// --enable-aggregator-routing, never to a ClusterIP nobody serves).
	k.Apply(t, fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system}
spec:
  ports: [{name: https, port: 443, targetPort: %[1]d, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: metrics-server, namespace: kube-system}
subsets:
- addresses: [{ip: %[2]s}]
  ports: [{name: https, port: %[1]d, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: metrics-server-e2e
  namespace: kube-system
  labels: {kubernetes.io/service-name: metrics-server, endpointslice.kubernetes.io/managed-by: edge-tunnel-e2e}
addressType: IPv4
endpoints: [{addresses: [%[2]s], conditions: {ready: true}}]
ports: [{name: https, port: %[1]d, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io}
spec:
  group: metrics.k8s.io
  version: v1beta1
  service: {name: metrics-server, namespace: kube-system, port: 443}
  caBundle: %[3]s
  groupPriorityMinimum: 100
  versionPriority: 100
`, port, hostAddr, base64.StdEncoding.EncodeToString(caPEM)))
	return &MetricsServer{Process: p, Proxy: proxy}
}
