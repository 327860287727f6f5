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
	clusterCA  *pki.CA // signs what is issued from now on
	// trustedClusterCAs are the CAs in the ClusterCA file: more than one
	// during a rotation (RotateClusterCA until RetireOldClusterCAs).
	trustedClusterCAs []*pki.CA
	agentPortHosts    []string
}

// NewPKI makes both CAs and the fixed certificates. The agent port's
// certificate is for loopback plus agentPortHosts (addresses or names agents
// dial, e.g. a bridge address that edge nodes in network namespaces reach).
func NewPKI(t testing.TB, agentPortHosts ...string) *PKI {
	t.Helper()
	dir := t.TempDir()
	p := &PKI{Dir: dir, agentPortHosts: agentPortHosts}
	var err error
	if p.frontendCA, err = pki.NewCA("edge-tunnel-e2e-frontend-ca"); err != nil {
		t.Fatalf("frontend CA: %v", err)
	}
	if p.clusterCA, err = pki.NewCA("edge-tunnel-e2e-cluster-ca"); err != nil {
		t.Fatalf("cluster CA: %v", err)
	}
	loopback := loopbackHosts
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
	p.trustedClusterCAs = []*pki.CA{p.clusterCA}
	return p
}

var loopbackHosts = []string{"127.0.0.1", "localhost", "::1"}

// ReissueServerCerts replaces both server certificates, the TCP frontend's
// and the agent port's, with new ones for the same hosts under commonName,
// signed by the current frontend and cluster CAs. Each file is replaced
// atomically, as cert-manager or a Secret volume update does, so a process
// reloading them sees the old pair or the new one, never half a file.
func (p *PKI) ReissueServerCerts(t testing.TB, commonName string) {
	t.Helper()
	p.reissue(t, p.frontendCA, commonName, loopbackHosts, pki.UsageServer, p.FrontendServerCert, p.FrontendServerKey)
	p.reissue(t, p.clusterCA, commonName, append(append([]string(nil), loopbackHosts...), p.agentPortHosts...),
		pki.UsageServer, p.ClusterServerCert, p.ClusterServerKey)
}

// RenewAgentCert replaces agent a's client certificate and key files with a
// new certificate for the same common name and address, signed by the
// current cluster CA.
func (p *PKI) RenewAgentCert(t testing.TB, a *Agent) {
	t.Helper()
	p.reissue(t, p.clusterCA, a.CertCN, []string{a.IPv4}, pki.UsageClient, a.CertFile, a.KeyFile)
}

// RotateClusterCA starts a rotation of the cluster CA: a new CA named
// commonName signs every cluster certificate issued from now on, and the
// ClusterCA file (which the server and the agents both read) trusts the old
// CA and the new one until RetireOldClusterCAs.
func (p *PKI) RotateClusterCA(t testing.TB, commonName string) {
	t.Helper()
	ca, err := pki.NewCA(commonName)
	if err != nil {
		t.Fatalf("cluster CA %s: %v", commonName, err)
	}
	p.clusterCA = ca
	p.trustedClusterCAs = append(p.trustedClusterCAs, ca)
	p.writeClusterCAs(t)
}

// RetireOldClusterCAs ends a rotation: the ClusterCA file trusts only the
// current cluster CA.
func (p *PKI) RetireOldClusterCAs(t testing.TB) {
	t.Helper()
	p.trustedClusterCAs = []*pki.CA{p.clusterCA}
	p.writeClusterCAs(t)
}

func (p *PKI) writeClusterCAs(t testing.TB) {
	t.Helper()
	var bundle []byte
	for _, ca := range p.trustedClusterCAs {
		bundle = append(bundle, ca.CertPEM...)
	}
	replaceFile(t, p.ClusterCA, bundle, 0o644)
}

func (p *PKI) reissue(t testing.TB, ca *pki.CA, commonName string, hosts []string, usage, certPath, keyPath string) {
	t.Helper()
	pair, err := ca.Issue(commonName, hosts, usage)
	if err != nil {
		t.Fatalf("issue %s: %v", commonName, err)
	}
	// The key first: a reader that sees the new key with the old
	// certificate fails to load the pair and keeps the old one until the
	// certificate lands too (what tlsutil does).
	replaceFile(t, keyPath, pair.KeyPEM, 0o600)
	replaceFile(t, certPath, pair.CertPEM, 0o644)
}

// replaceFile writes data to a temporary file next to path and renames it
// over path.
func replaceFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatalf("write %s: %v", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatalf("replace %s: %v", path, err)
	}
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
