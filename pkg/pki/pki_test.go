package pki_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

func parseCert(t *testing.T, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", b)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNewCA(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	c := parseCert(t, ca.CertPEM)
	if !c.IsCA || c.Subject.CommonName != "test-ca" || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Fatalf("CA certificate: IsCA=%v CN=%q KeyUsage=%v", c.IsCA, c.Subject.CommonName, c.KeyUsage)
	}
	if !c.Equal(ca.Cert) {
		t.Fatal("CertPEM and Cert differ")
	}
	pub, ok := ca.Key.Public().(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("CA key is %T, want ECDSA P-256", ca.Key.Public())
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Fatalf("CA is not self-signed: %v", err)
	}
	if _, err := pki.NewCA(""); err == nil {
		t.Fatal("NewCA with an empty name succeeded")
	}
}

func TestIssue(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	tests := []struct {
		usage      string
		wantServer bool
		wantClient bool
	}{
		{"server", true, false},
		{"client", false, true},
		{"both", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.usage, func(t *testing.T) {
			p, err := ca.Issue("leaf-"+tt.usage, []string{"node-1", "edge.example.com", "127.0.0.1", "[::1]", "fd00::1"}, tt.usage)
			if err != nil {
				t.Fatal(err)
			}
			c := parseCert(t, p.CertPEM)
			if c.Subject.CommonName != "leaf-"+tt.usage || c.IsCA {
				t.Fatalf("CN=%q IsCA=%v", c.Subject.CommonName, c.IsCA)
			}
			if want := []string{"node-1", "edge.example.com"}; !reflect.DeepEqual(c.DNSNames, want) {
				t.Fatalf("DNSNames = %q, want %q", c.DNSNames, want)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if want := []string{"127.0.0.1", "::1", "fd00::1"}; !reflect.DeepEqual(ips, want) {
				t.Fatalf("IPAddresses = %q, want %q", ips, want)
			}
			for _, u := range []struct {
				eku  x509.ExtKeyUsage
				want bool
			}{{x509.ExtKeyUsageServerAuth, tt.wantServer}, {x509.ExtKeyUsageClientAuth, tt.wantClient}} {
				_, err := c.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{u.eku}})
				if (err == nil) != u.want {
					t.Errorf("verify for usage %v: err=%v, want ok=%v", u.eku, err, u.want)
				}
			}
			if _, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM); err != nil {
				t.Fatalf("certificate and key do not pair: %v", err)
			}
		})
	}
}

func TestIssueErrors(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		ca      *pki.CA
		cn      string
		hosts   []string
		usage   string
		wantErr string
	}{
		{ca, "x", nil, "peer", `usage "peer": want "server", "client" or "both"`},
		{ca, "x", nil, "", `usage ""`},
		{ca, "", nil, "server", "empty common name"},
		{ca, "x", []string{"a", ""}, "server", "empty host"},
		{&pki.CA{}, "x", nil, "server", "CA has no certificate or key"},
		{nil, "x", nil, "server", "CA has no certificate or key"},
	} {
		_, err := tt.ca.Issue(tt.cn, tt.hosts, tt.usage)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("Issue(%q, %q, %q) error = %v, want it to contain %q", tt.cn, tt.hosts, tt.usage, err, tt.wantErr)
		}
	}
}

func TestWriteFiles(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("server", []string{"localhost"}, "server")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "pki")
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"server": srv}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct {
		data []byte
		mode os.FileMode
	}{
		"ca.crt":     {ca.CertPEM, 0o644},
		"server.crt": {srv.CertPEM, 0o644},
		"server.key": {srv.KeyPEM, 0o600},
	} {
		p := filepath.Join(dir, name)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want.data) {
			t.Errorf("%s: wrong content", name)
		}
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want.mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode().Perm(), want.mode)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 3 {
		t.Errorf("dir holds %d entries, want 3 (temporary files left over?)", len(entries))
	}

	// Overwriting keeps the key private even if it was world-readable.
	if err := os.Chmod(filepath.Join(dir, "server.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"server": srv}); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "server.key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("rewritten key has mode %v, want 0600", fi.Mode().Perm())
	}

	for _, bad := range []string{"", "a/b", "..", "ca"} {
		if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{bad: srv}); err == nil {
			t.Errorf("WriteFiles with pair name %q succeeded", bad)
		}
	}
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"empty": {}}); err == nil {
		t.Error("WriteFiles with an empty pair succeeded")
	}
}

// TestHandshake runs mutual TLS over loopback with files written by
// WriteFiles and configs from tlsutil.
func TestHandshake(t *testing.T) {
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("edge-tunnel-server", []string{"localhost", "127.0.0.1"}, "server")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.Issue("edge-tunnel-agent", nil, "client")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"server": srv, "agent": cli}); err != nil {
		t.Fatal(err)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	scfg, err := tlsutil.ServerConfig(f("server.crt"), f("server.key"), f("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := tlsutil.ClientConfig(f("ca.crt"), f("agent.crt"), f("agent.key"), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peer <- "accept: " + err.Error()
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, scfg)
		if err := tc.Handshake(); err != nil {
			peer <- "handshake: " + err.Error()
			return
		}
		tc.Write([]byte("hi"))
		peer <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	d := tls.Dialer{Config: ccfg}
	c, err := d.DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if got := <-peer; got != "edge-tunnel-agent" {
		t.Fatalf("server saw client %q", got)
	}
	if cn := c.(*tls.Conn).ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "edge-tunnel-server" {
		t.Fatalf("client saw server %q", cn)
	}
}
