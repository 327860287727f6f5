package certgen_test

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/edge-tunnel/edge-tunnel/pkg/certgen"
)

// TestCertsSecrets checks the Secret manifests: one per Secret the
// manifests mount, kubernetes.io/tls with ca.crt, holding the files' bytes.
func TestCertsSecrets(t *testing.T) {
	dir := t.TempDir()
	var stdout bytes.Buffer
	o := certgen.Options{OutDir: dir, ServerHosts: []string{"edge.example.com"}, FrontendHosts: []string{"fe.example.com"}, Namespace: "edge", Secrets: "-"}
	if err := certgen.Write(o, &stdout); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "secrets.yaml")
	o2 := o
	o2.OutDir, o2.Secrets = filepath.Join(dir, "again"), file
	if err := certgen.Write(o2, &stdout); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(file); err != nil || !bytes.Contains(b, []byte("name: edge-tunnel-agent-certs")) {
		t.Fatalf("--secrets FILE: %v, %q", err, b)
	}

	docs := strings.Split(stdout.String(), "\n---\n")
	want := map[string]string{
		"edge-tunnel-server-certs":          "server",
		"edge-tunnel-agent-certs":           "agent",
		"edge-tunnel-server-frontend-certs": "frontend",
		"edge-tunnel-proxy-client":          "frontend-client",
	}
	got := map[string]bool{}
	for _, d := range docs[:len(want)] { // the second run's documents follow
		var s corev1.Secret
		if err := yaml.UnmarshalStrict([]byte(d), &s); err != nil {
			t.Fatalf("not a Secret: %v\n%s", err, d)
		}
		name, ok := want[s.Name]
		if !ok || s.Namespace != "edge" || s.Type != corev1.SecretTypeTLS || s.Kind != "Secret" || s.APIVersion != "v1" {
			t.Errorf("unexpected Secret %s/%s type %s", s.Namespace, s.Name, s.Type)
			continue
		}
		got[s.Name] = true
		for key, file := range map[string]string{"tls.crt": name + ".crt", "tls.key": name + ".key", "ca.crt": "ca.crt"} {
			b, err := os.ReadFile(filepath.Join(dir, file))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(s.Data[key], b) {
				t.Errorf("Secret %s key %s differs from %s", s.Name, key, file)
			}
		}
		if len(s.Data) != 3 {
			t.Errorf("Secret %s has keys %v, want tls.crt, tls.key, ca.crt", s.Name, s.Data)
		}
	}
	if len(got) != len(want) {
		t.Errorf("Secrets %v, want %v", got, want)
	}
	if strings.Contains(stdout.String(), "ca.key") {
		t.Error("the CA key is in the Secrets")
	}
}

// TestCertsReuseCA issues new certificates from an existing CA (rotation):
// they verify against the old ca.crt, and no new CA key is written.
func TestCertsReuseCA(t *testing.T) {
	first := filepath.Join(t.TempDir(), "first")
	if err := certgen.Write(certgen.Options{OutDir: first, ServerHosts: []string{"h"}, FrontendHosts: []string{"f"}}, nil); err != nil {
		t.Fatal(err)
	}
	// The same directory again without the CA is refused: it would replace
	// the CA every certificate in the cluster trusts.
	err := certgen.Write(certgen.Options{OutDir: first, ServerHosts: []string{"h"}, FrontendHosts: []string{"f"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "already holds a CA") || !strings.Contains(err.Error(), "--ca-cert") {
		t.Fatalf("second run into the same directory: err = %v", err)
	}
	second := filepath.Join(t.TempDir(), "second")
	o := certgen.Options{OutDir: second, ServerHosts: []string{"h"}, FrontendHosts: []string{"f"},
		CACert: filepath.Join(first, "ca.crt"), CAKey: filepath.Join(first, "ca.key")}
	if err := certgen.Write(o, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(second, "ca.key")); err == nil {
		t.Error("a CA key was written although the CA was given")
	}
	roots := x509.NewCertPool()
	caPEM, _ := os.ReadFile(filepath.Join(first, "ca.crt"))
	roots.AppendCertsFromPEM(caPEM)
	certPEM, _ := os.ReadFile(filepath.Join(second, "server.crt"))
	blk, _ := pem.Decode(certPEM)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Verify(x509.VerifyOptions{Roots: roots, DNSName: "h"}); err != nil {
		t.Errorf("new server.crt does not verify against the first CA: %v", err)
	}

	// A key that is not the CA's, and a leaf given as CA, are refused.
	o.CAKey = filepath.Join(first, "server.key")
	if err := certgen.Write(o, nil); err == nil || !strings.Contains(err.Error(), "is not the key of --ca-cert") {
		t.Errorf("mismatched CA key: err = %v", err)
	}
	o.CACert, o.CAKey = filepath.Join(first, "server.crt"), filepath.Join(first, "server.key")
	if err := certgen.Write(o, nil); err == nil || !strings.Contains(err.Error(), "is not a CA certificate") {
		t.Errorf("leaf as CA: err = %v", err)
	}
}
