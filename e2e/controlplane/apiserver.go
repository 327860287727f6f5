package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// EgressMode is how kube-apiserver reaches edge-tunnel-server: the
// proxyProtocol and transport of its EgressSelectorConfiguration.
type EgressMode struct {
	Name     string
	Protocol string // GRPC or HTTPConnect
	// TCP selects the mTLS TCP frontend; otherwise the UNIX socket.
	TCP bool
}

// EgressModes are the configurations kube-apiserver supports for the
// cluster egress through a konnectivity-style server.
var EgressModes = []EgressMode{
	{Name: "GRPC-UDS", Protocol: "GRPC"},
	{Name: "HTTPConnect-UDS", Protocol: "HTTPConnect"},
	{Name: "HTTPConnect-mTLS", Protocol: "HTTPConnect", TCP: true},
}

// Tokens of the static token file; both users are in system:masters.
const (
	adminToken   = "edge-tunnel-e2e-admin-token"
	metricsToken = "edge-tunnel-e2e-metrics-server-token"
)

// APIServer is a running kube-apiserver.
type APIServer struct {
	*harness.Process
	Mode EgressMode
	URL  string // https://127.0.0.1:PORT
	// Kubeconfig authenticates as the admin (system:masters).
	Kubeconfig string
	// MetricsKubeconfig authenticates as metrics-server.
	MetricsKubeconfig string
	caFile            string
}

// startAPIServer starts kube-apiserver against the cluster's etcd with the
// cluster egress going through the cluster's edge-tunnel-server in mode,
// and waits until /readyz answers ok. Every kube-apiserver of a cluster
// listens on the same port, so kubeconfigs stay valid across them.
func (c *Cluster) startAPIServer(t testing.TB, mode EgressMode) *APIServer {
	t.Helper()
	dir := filepath.Join(c.dir, "apiserver-"+mode.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("apiserver directory: %v", err)
	}
	a := &APIServer{Mode: mode, URL: c.APIServerURL, Kubeconfig: c.Kubeconfig, MetricsKubeconfig: c.metricsKubeconfig, caFile: c.certs.ClusterCA}

	transport := fmt.Sprintf("uds:\n        udsName: %s", c.Server.UDS)
	if mode.TCP {
		transport = fmt.Sprintf(`tcp:
        url: https://%s
        tlsConfig:
          caBundle: %s
          clientCert: %s
          clientKey: %s`, c.Server.FrontendAddr, c.tunnelPKI.FrontendCA, c.tunnelPKI.FrontendClientCert, c.tunnelPKI.FrontendClientKey)
	}
	egress := fmt.Sprintf(`apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: %s
    transport:
      %s
`, mode.Protocol, transport)
	files := map[string]string{
		"egress.yaml": egress,
		"tokens.csv": adminToken + ",admin,admin-uid,system:masters\n" +
			metricsToken + ",metrics-server,metrics-server-uid,system:masters\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}

	cs := c.certs
	args := []string{
		"--etcd-servers", c.EtcdURL,
		"--bind-address", "127.0.0.1",
		// The address kube-apiserver publishes for itself (the kubernetes
		// Service): the host's address on the edge network, not whatever
		// address the machine has.
		"--advertise-address", c.Net.HostAddr.String(),
		"--secure-port", strconv.Itoa(c.apiPort),
		"--tls-cert-file", cs.APIServerCert,
		"--tls-private-key-file", cs.APIServerKey,
		"--client-ca-file", cs.ClusterCA,
		"--token-auth-file", filepath.Join(dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", cs.ServiceAccountPub,
		"--service-account-signing-key-file", cs.ServiceAccountKey,
		"--service-cluster-ip-range", "10.96.0.0/24",
		"--egress-selector-config-file", filepath.Join(dir, "egress.yaml"),
		"--kubelet-client-certificate", cs.KubeletClient,
		"--kubelet-client-key", cs.KubeletClientKy,
		"--kubelet-certificate-authority", cs.KubeletCA,
		"--kubelet-preferred-address-types", "InternalIP",
		// Aggregated APIs (metrics-server) get requests from kube-apiserver
		// with this client certificate and the user in headers.
		"--requestheader-client-ca-file", cs.FrontProxyCA,
		"--requestheader-allowed-names", "front-proxy-client",
		"--requestheader-username-headers", "X-Remote-User",
		"--requestheader-group-headers", "X-Remote-Group",
		"--requestheader-extra-headers-prefix", "X-Remote-Extra-",
		"--proxy-client-cert-file", cs.FrontProxyClient,
		"--proxy-client-key-file", cs.FrontProxyKey,
		"--enable-aggregator-routing=true",
		"-v", "2",
	}
	a.Process = harness.StartProcess(t, "kube-apiserver-"+mode.Name, dir, c.Tools.KubeAPIServer, args...)
	// Its graceful termination waits for open watches and proxied streams
	// longer than the harness's stop grace; etcd keeps the state, so a
	// kill (this cleanup runs before the harness's SIGTERM) loses nothing.
	t.Cleanup(a.Kill)
	if err := a.waitReady(60 * time.Second); err != nil {
		t.Fatalf("kube-apiserver (%s) not ready: %v\n--- last lines of its log:\n%s", mode.Name, err, a.LogTail(40))
	}
	return a
}

// waitReady polls /readyz until it answers 200.
func (a *APIServer) waitReady(timeout time.Duration) error {
	client, err := a.adminClient()
	if err != nil {
		return err
	}
	var last string
	err = poll(timeout, 200*time.Millisecond, func() (bool, error) {
		if a.Exited() {
			return false, fmt.Errorf("kube-apiserver exited")
		}
		req, _ := http.NewRequest(http.MethodGet, a.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		resp.Body.Close()
		last = resp.Status
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("%w (last: %s)", err, last)
	}
	return nil
}

func (a *APIServer) adminClient() (*http.Client, error) {
	caPEM, err := os.ReadFile(a.caFile)
	if err != nil {
		return nil, fmt.Errorf("read cluster CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("cluster CA %s holds no PEM certificate", a.caFile)
	}
	return &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}, nil
}

// writeKubeconfig writes a kubeconfig for server, trusting ca and
// authenticating with token. serverName, when set, is the name checked in
// kube-apiserver's certificate instead of server's host.
func writeKubeconfig(t testing.TB, dir, name, server, ca, token, serverName string) string {
	t.Helper()
	if serverName != "" {
		serverName = "\n    tls-server-name: " + serverName
	}
	content := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: %s
    certificate-authority: %s%s
users:
- name: user
  user:
    token: %s
contexts:
- name: e2e
  context: {cluster: e2e, user: user, namespace: default}
current-context: e2e
`, server, ca, serverName, token)
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatalf("write %s: %v", name, err)
	}
	return path
}

// poll calls cond every interval until it reports done, returns an error,
// or timeout passes.
func poll(timeout, interval time.Duration, cond func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		done, err := cond()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not done within %s", timeout)
		case <-time.After(interval):
		}
	}
}
