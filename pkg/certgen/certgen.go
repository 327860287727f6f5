// Package certgen makes the certificates of a small edge-tunnel cluster from
// one CA, as files and as Kubernetes Secret manifests: what
// `edge-tunnel-server certs` writes for clusters without cert-manager. Keys
// and certificates come from pkg/pki; this package decides which ones, with
// which names, and where they go.
package certgen

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// Options say what to write.
type Options struct {
	// OutDir receives ca.crt, ca.key (for a new CA) and NAME.crt/NAME.key.
	OutDir string
	// ServerHosts are the names of the agent port's certificate (what
	// agents dial); FrontendHosts those of the TCP frontend's.
	ServerHosts   []string
	FrontendHosts []string
	// Namespace of the Secrets.
	Namespace string
	// CACert and CAKey name an existing CA to sign with; empty makes a new one.
	CACert, CAKey string
	// Secrets: "" none, "-" to the stdout of Write, else a file path.
	Secrets string
}

// DefaultFrontendHosts are the TCP frontend's names when it is reached
// through the ClusterIP Service kube-system/edge-tunnel-server.
var DefaultFrontendHosts = []string{"edge-tunnel-server.kube-system.svc", "edge-tunnel-server.kube-system.svc.cluster.local"}

// Cert is one certificate Write makes: its files in OutDir (Name.crt,
// Name.key), the Secret the manifests mount it from, its common name and
// usage.
type Cert struct {
	Name   string
	Secret string
	CN     string
	Usage  string
}

// Certs are the certificates of a small cluster, all from one CA: the
// agent port's, the agents', the TCP frontend's, and a client certificate
// for the frontend (kube-apiserver's egress, the edge-tunnel-proxy sidecar).
var Certs = []Cert{
	{"server", "edge-tunnel-server-certs", "edge-tunnel-server", pki.UsageServer},
	{"agent", "edge-tunnel-agent-certs", "edge-tunnel-agent", pki.UsageClient},
	{"frontend", "edge-tunnel-server-frontend-certs", "edge-tunnel-server-frontend", pki.UsageServer},
	{"frontend-client", "edge-tunnel-proxy-client", "edge-tunnel-frontend-client", pki.UsageClient},
}

// Write checks o, makes or loads the CA, issues every certificate in Certs
// and writes the files, then the Secrets if o.Secrets asks for them. Errors
// name the flag of `edge-tunnel-server certs` to change.
func Write(o Options, stdout io.Writer) error {
	var errs []error
	if o.OutDir == "" {
		errs = append(errs, errors.New("--out-dir is required: the CA key and the certificates are written there"))
	}
	if len(o.ServerHosts) == 0 {
		errs = append(errs, errors.New("--server-hosts is required: the names or addresses agents dial (server-host in ConfigMap edge-tunnel-agent-config)"))
	}
	if len(o.FrontendHosts) == 0 {
		errs = append(errs, errors.New("--frontend-hosts must not be empty: name what kube-apiserver dials for the TCP frontend"))
	}
	if (o.CACert == "") != (o.CAKey == "") {
		errs = append(errs, errors.New("--ca-cert and --ca-key go together: give both to sign with an existing CA, or neither to make a new one"))
	}
	if o.Namespace == "" && o.Secrets != "" {
		errs = append(errs, errors.New("--namespace must not be empty with --secrets"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid flags:\n%w", errors.Join(errs...))
	}

	var ca *pki.CA
	var err error
	if o.CACert != "" {
		if ca, err = loadCA(o.CACert, o.CAKey); err != nil {
			return err
		}
	} else {
		if _, err := os.Stat(filepath.Join(o.OutDir, "ca.key")); err == nil {
			return fmt.Errorf("%s already holds a CA (ca.key); to issue new certificates from it pass --ca-cert %s --ca-key %s and another --out-dir, or choose an empty --out-dir for a new CA",
				o.OutDir, filepath.Join(o.OutDir, "ca.crt"), filepath.Join(o.OutDir, "ca.key"))
		}
		if ca, err = pki.NewCA("edge-tunnel-ca"); err != nil {
			return fmt.Errorf("making the CA: %w", err)
		}
	}

	pairs := map[string]pki.Pair{}
	for _, cf := range Certs {
		var hosts []string
		switch cf.Name {
		case "server":
			hosts = o.ServerHosts
		case "frontend":
			hosts = o.FrontendHosts
		}
		if pairs[cf.Name], err = ca.Issue(cf.CN, hosts, cf.Usage); err != nil {
			return fmt.Errorf("issuing %s.crt: %w", cf.Name, err)
		}
	}
	if err := pki.WriteFiles(o.OutDir, ca, pairs); err != nil {
		return err
	}
	if o.CACert == "" {
		if err := writeCAKey(filepath.Join(o.OutDir, "ca.key"), ca.Key); err != nil {
			return err
		}
	}
	if o.Secrets == "" {
		return nil
	}
	manifest, err := secretsYAML(o.Namespace, ca, pairs)
	if err != nil {
		return err
	}
	if o.Secrets == "-" {
		_, err = stdout.Write(manifest)
		return err
	}
	if err := os.WriteFile(o.Secrets, manifest, 0o600); err != nil {
		return fmt.Errorf("writing --secrets: %w", err)
	}
	return nil
}

// secretsYAML renders one kubernetes.io/tls Secret per certificate, with
// ca.crt next to tls.crt and tls.key, as the manifests mount them.
func secretsYAML(namespace string, ca *pki.CA, pairs map[string]pki.Pair) ([]byte, error) {
	var out bytes.Buffer
	for i, cf := range Certs {
		s := corev1.Secret{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{
				Name:      cf.Secret,
				Namespace: namespace,
				Labels:    map[string]string{"app.kubernetes.io/part-of": "edge-tunnel"},
			},
			Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{
				corev1.TLSCertKey:       pairs[cf.Name].CertPEM,
				corev1.TLSPrivateKeyKey: pairs[cf.Name].KeyPEM,
				"ca.crt":                ca.CertPEM,
			},
		}
		b, err := yaml.Marshal(s)
		if err != nil {
			return nil, fmt.Errorf("Secret %s: %w", cf.Secret, err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		fmt.Fprintf(&out, "# %s.crt: %s\n", cf.Name, certPurpose(cf.Name))
		out.Write(b)
	}
	return out.Bytes(), nil
}

func certPurpose(name string) string {
	switch name {
	case "server":
		return "the agent port's certificate (--cluster-cert), and the CA that verifies agents (--cluster-ca-cert)"
	case "agent":
		return "the agents' client certificate (--agent-cert), and the CA that verifies the server (--ca-cert)"
	case "frontend":
		return "the TCP frontend's certificate (--server-cert), and the CA of its clients (--server-ca-cert)"
	default:
		return "a client certificate for the TCP frontend (edge-tunnel-proxy --client-cert)"
	}
}

// loadCA reads a CA certificate and its key, and checks that they belong
// together and that the certificate may sign.
func loadCA(certFile, keyFile string) (*pki.CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert: %w", err)
	}
	blk, _ := pem.Decode(certPEM)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("--ca-cert %s: no PEM CERTIFICATE block", certFile)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("--ca-cert %s: %w", certFile, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("--ca-cert %s: %q is not a CA certificate (no CA basic constraint or certSign usage)", certFile, cert.Subject.CommonName)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-key: %w", err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("--ca-key %s: %w", keyFile, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("--ca-key %s is not the key of --ca-cert %s", keyFile, certFile)
	}
	return &pki.CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
}

// parseKey reads a PKCS #8, EC or PKCS #1 private key.
func parseKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || !strings.HasSuffix(blk.Type, "PRIVATE KEY") {
		return nil, errors.New("no PEM PRIVATE KEY block")
	}
	var key any
	var err error
	switch blk.Type {
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, err
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("a %T cannot sign", key)
	}
	return s, nil
}

// writeCAKey writes the CA key (PKCS #8, mode 0600), refusing to replace a
// file: losing a CA key means re-issuing every certificate.
func writeCAKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding the CA key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing the CA key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return fmt.Errorf("writing the CA key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing the CA key %s: %w", path, err)
	}
	return nil
}
