package harness

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// PKI is a throwaway PKI in a test's temp dir with two separate CAs, as a
// real deployment has: the frontend CA (kube-apiserver <-> server's TCP
// frontend) and the cluster CA (agents <-> server's agent port). A client
// certificate from one must not open the other.
type PKI struct {
	Dir string

	// Frontend side: the CA, the server's frontend certificate (for
	// 127.0.0.1 and localhost), and a kube-apiserver client certificate.
	FrontendCA         string
	FrontendServerCert string
	FrontendServerKey  string
	FrontendClientCert string
	FrontendClientKey  string

	// Cluster side: the CA and the agent port's server certificate.
	ClusterCA         string
	ClusterServerCert string
	ClusterServerKey  string

	frontendCA *pki.CA
	clusterCA  *pki.CA
}

// NewPKI makes both CAs and the fixed certificates. The agent port's
// certificate is for loopback plus agentPortHosts (addresses or names agents
// dial, e.g. a bridge address that edge nodes in network namespaces reach).
func NewPKI(t testing.TB, agentPortHosts ...string) *PKI {
	t.Helper()
	dir := t.TempDir()
	p := &PKI{Dir: dir}
	var err error
	if p.frontendCA, err = pki.NewCA("edge-tunnel-e2e-frontend-ca"); err != nil {
		t.Fatalf("frontend CA: %v", err)
	}
	if p.clusterCA, err = pki.NewCA("edge-tunnel-e2e-cluster-ca"); err != nil {
		t.Fatalf("cluster CA: %v", err)
	}
	loopback := []string{"127.0.0.1", "localhost", "::1"}
	issue := func(ca *pki.CA, cn string, hosts []string, usage string) pki.Pair {
		pair, err := ca.Issue(cn, hosts, usage)
		if err != nil {
			t.Fatalf("issue %s: %v", cn, err)
		}
		return pair
	}
	frontendDir := filepath.Join(dir, "frontend")
	if err := pki.WriteFiles(frontendDir, p.frontendCA, map[string]pki.Pair{
		"server": issue(p.frontendCA, "edge-tunnel-server", loopback, pki.UsageServer),
		"client": issue(p.frontendCA, "kube-apiserver", nil, pki.UsageClient),
	}); err != nil {
		t.Fatalf("write frontend PKI: %v", err)
	}
	clusterDir := filepath.Join(dir, "cluster")
	if err := pki.WriteFiles(clusterDir, p.clusterCA, map[string]pki.Pair{
		"server": issue(p.clusterCA, "edge-tunnel-server", append(loopback, agentPortHosts...), pki.UsageServer),
	}); err != nil {
		t.Fatalf("write cluster PKI: %v", err)
	}
	p.FrontendCA = filepath.Join(frontendDir, "ca.crt")
	p.FrontendServerCert = filepath.Join(frontendDir, "server.crt")
	p.FrontendServerKey = filepath.Join(frontendDir, "server.key")
	p.FrontendClientCert = filepath.Join(frontendDir, "client.crt")
	p.FrontendClientKey = filepath.Join(frontendDir, "client.key")
	p.ClusterCA = filepath.Join(clusterDir, "ca.crt")
	p.ClusterServerCert = filepath.Join(clusterDir, "server.crt")
	p.ClusterServerKey = filepath.Join(clusterDir, "server.key")
	return p
}

// AgentCert issues a client certificate from the cluster CA with the given
// common name and subject alternative names (IP addresses or DNS names)
// and returns the certificate and key paths.
func (p *PKI) AgentCert(t testing.TB, fileName, commonName string, sans ...string) (certPath, keyPath string) {
	t.Helper()
	pair, err := p.clusterCA.Issue(commonName, sans, pki.UsageClient)
	if err != nil {
		t.Fatalf("issue agent certificate %s: %v", commonName, err)
	}
	dir := filepath.Join(p.Dir, "agents")
	if err := pki.WriteFiles(dir, p.clusterCA, map[string]pki.Pair{fileName: pair}); err != nil {
		t.Fatalf("write agent certificate: %v", err)
	}
	return filepath.Join(dir, fileName+".crt"), filepath.Join(dir, fileName+".key")
}

// FrontendClientTLS is the TLS config kube-apiserver builds from an egress
// selector tlsConfig (caBundle, clientCert, clientKey): client certificate
// and RootCAs only; tls.Dialer takes the server name from the address.
func (p *PKI) FrontendClientTLS(t testing.TB) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(p.FrontendClientCert, p.FrontendClientKey)
	if err != nil {
		t.Fatalf("load frontend client certificate: %v", err)
	}
	cfg := p.FrontendTLSWithoutClientCert(t)
	cfg.Certificates = []tls.Certificate{cert}
	return cfg
}

// FrontendTLSWithoutClientCert trusts the frontend CA but presents no
// client certificate.
func (p *PKI) FrontendTLSWithoutClientCert(t testing.TB) *tls.Config {
	t.Helper()
	caPEM, err := os.ReadFile(p.FrontendCA)
	if err != nil {
		t.Fatalf("read frontend CA: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatalf("frontend CA %s holds no PEM certificate", p.FrontendCA)
	}
	return &tls.Config{RootCAs: pool}
}
