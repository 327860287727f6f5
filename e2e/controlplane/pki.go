package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// certs are the control plane's certificates, apart from edge-tunnel's
// own (harness.PKI):
//
//   - the cluster CA signs kube-apiserver's serving certificate and the
//     client certificates kubelets accept (kube-apiserver's and
//     metrics-server's);
//   - the kubelet CA signs each kubelet's serving certificate for its node
//     address; kube-apiserver checks it (--kubelet-certificate-authority),
//     so a tunnel that terminated or redirected TLS would fail the tests;
//   - the front-proxy CA signs kube-apiserver's client certificate towards
//     aggregated APIs (metrics-server);
//   - the service-account signing key.
type certs struct {
	dir string

	clusterCA *pki.CA
	kubeletCA *pki.CA

	ClusterCA       string
	APIServerCert   string
	APIServerKey    string
	KubeletClient   string // kube-apiserver's client certificate to kubelets
	KubeletClientKy string
	MetricsClient   string // metrics-server's client certificate to kubelets
	MetricsClientKy string

	KubeletCA string

	FrontProxyCA     string
	FrontProxyClient string
	FrontProxyKey    string

	ServiceAccountKey string
	ServiceAccountPub string
}

func newCerts(dir string) (*certs, error) {
	c := &certs{dir: dir}
	var err error
	if c.clusterCA, err = pki.NewCA("edge-tunnel-e2e-kubernetes-ca"); err != nil {
		return nil, err
	}
	if c.kubeletCA, err = pki.NewCA("edge-tunnel-e2e-kubelet-ca"); err != nil {
		return nil, err
	}
	frontProxyCA, err := pki.NewCA("edge-tunnel-e2e-front-proxy-ca")
	if err != nil {
		return nil, err
	}
	issue := func(ca *pki.CA, cn string, hosts []string, usage string) (pki.Pair, error) {
		p, err := ca.Issue(cn, hosts, usage)
		if err != nil {
			return pki.Pair{}, fmt.Errorf("issue %s: %w", cn, err)
		}
		return p, nil
	}
	apiserver, err := issue(c.clusterCA, "kube-apiserver", []string{"127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"}, pki.UsageServer)
	if err != nil {
		return nil, err
	}
	kubeletClient, err := issue(c.clusterCA, "kube-apiserver-kubelet-client", nil, pki.UsageClient)
	if err != nil {
		return nil, err
	}
	metricsClient, err := issue(c.clusterCA, "metrics-server-kubelet-client", nil, pki.UsageClient)
	if err != nil {
		return nil, err
	}
	frontProxy, err := issue(frontProxyCA, "front-proxy-client", nil, pki.UsageClient)
	if err != nil {
		return nil, err
	}
	clusterDir := filepath.Join(dir, "cluster")
	if err := pki.WriteFiles(clusterDir, c.clusterCA, map[string]pki.Pair{
		"apiserver": apiserver, "kubelet-client": kubeletClient, "metrics-client": metricsClient,
	}); err != nil {
		return nil, err
	}
	frontDir := filepath.Join(dir, "front-proxy")
	if err := pki.WriteFiles(frontDir, frontProxyCA, map[string]pki.Pair{"client": frontProxy}); err != nil {
		return nil, err
	}
	kubeletDir := filepath.Join(dir, "kubelet")
	if err := pki.WriteFiles(kubeletDir, c.kubeletCA, nil); err != nil {
		return nil, err
	}
	c.ClusterCA = filepath.Join(clusterDir, "ca.crt")
	c.APIServerCert, c.APIServerKey = filepath.Join(clusterDir, "apiserver.crt"), filepath.Join(clusterDir, "apiserver.key")
	c.KubeletClient, c.KubeletClientKy = filepath.Join(clusterDir, "kubelet-client.crt"), filepath.Join(clusterDir, "kubelet-client.key")
	c.MetricsClient, c.MetricsClientKy = filepath.Join(clusterDir, "metrics-client.crt"), filepath.Join(clusterDir, "metrics-client.key")
	c.KubeletCA = filepath.Join(kubeletDir, "ca.crt")
	c.FrontProxyCA = filepath.Join(frontDir, "ca.crt")
	c.FrontProxyClient, c.FrontProxyKey = filepath.Join(frontDir, "client.crt"), filepath.Join(frontDir, "client.key")

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("service-account key: %w", err)
	}
	// kube-apiserver reads the signing key as "EC PRIVATE KEY" and the
	// verification key as "PUBLIC KEY".
	der, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return nil, fmt.Errorf("service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("service-account public key: %w", err)
	}
	c.ServiceAccountKey = filepath.Join(dir, "sa.key")
	c.ServiceAccountPub = filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(c.ServiceAccountKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("write service-account key: %w", err)
	}
	if err := os.WriteFile(c.ServiceAccountPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return nil, fmt.Errorf("write service-account public key: %w", err)
	}
	return c, nil
}

// kubeletServing issues the serving certificate of the kubelet on node
// (name) at addr, and returns its certificate and key paths.
func (c *certs) kubeletServing(node, addr string) (string, string, error) {
	pair, err := c.kubeletCA.Issue("system:node:"+node, []string{addr, node}, pki.UsageServer)
	if err != nil {
		return "", "", fmt.Errorf("issue kubelet serving certificate of %s: %w", node, err)
	}
	dir := filepath.Join(c.dir, "kubelet")
	if err := pki.WriteFiles(dir, c.kubeletCA, map[string]pki.Pair{node: pair}); err != nil {
		return "", "", err
	}
	return filepath.Join(dir, node+".crt"), filepath.Join(dir, node+".key"), nil
}
