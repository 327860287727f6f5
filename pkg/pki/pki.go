// Package pki makes a throwaway certificate authority and key pairs for tests
// and demos: ECDSA P-256 keys, certificates from crypto/x509 alone. It is not
// meant for production certificates; use cert-manager or the cluster CA there.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Validity of the certificates made here. NotBefore is backdated to tolerate
// clock skew between the machines of a demo.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	backdate     = time.Hour
)

// Usages accepted by Issue.
const (
	UsageServer = "server"
	UsageClient = "client"
	UsageBoth   = "both"
)

// CA is a self-signed certificate authority held in memory.
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
}

// Pair is a PEM certificate and its PEM (PKCS #8) private key.
type Pair struct {
	CertPEM, KeyPEM []byte
}

// NewCA makes a self-signed CA with a fresh P-256 key.
func NewCA(commonName string) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("new CA: empty common name")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: generate key: %w", commonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA %q: %w", commonName, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: create certificate: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA %q: parse own certificate: %w", commonName, err)
	}
	return &CA{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
	}, nil
}

// Issue signs a leaf certificate with a fresh P-256 key. usage is "server",
// "client" or "both" (the extended key usages). hosts become subject
// alternative names: IP literals (IPv6 with or without brackets) as IP
// addresses, everything else as DNS names.
func (ca *CA) Issue(commonName string, hosts []string, usage string) (Pair, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return Pair{}, errors.New("issue: CA has no certificate or key; make it with NewCA")
	}
	if commonName == "" {
		return Pair{}, errors.New("issue: empty common name")
	}
	var ext []x509.ExtKeyUsage
	switch usage {
	case UsageServer:
		ext = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	case UsageClient:
		ext = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case UsageBoth:
		ext = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	default:
		return Pair{}, fmt.Errorf("issue %q: usage %q: want %q, %q or %q", commonName, usage, UsageServer, UsageClient, UsageBoth)
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: ext,
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			return Pair{}, fmt.Errorf("issue %q: empty host in %q", commonName, hosts)
		}
		if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")); err == nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, a.Unmap().AsSlice())
			continue
		}
		tmpl.DNSNames = append(tmpl.DNSNames, h)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("issue %q: generate key: %w", commonName, err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return Pair{}, fmt.Errorf("issue %q: %w", commonName, err)
	}
	now := time.Now()
	tmpl.NotBefore = now.Add(-backdate)
	tmpl.NotAfter = now.Add(leafValidity)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return Pair{}, fmt.Errorf("issue %q: create certificate: %w", commonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return Pair{}, fmt.Errorf("issue %q: marshal key: %w", commonName, err)
	}
	return Pair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// newSerial returns a random 128-bit serial number, as RFC 5280 suggests.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n, nil
}

// WriteFiles writes ca.crt and, for each name in pairs, NAME.crt and NAME.key
// into dir, creating dir if needed. Keys are mode 0600, certificates 0644.
// Each file is replaced atomically (write then rename), so a process that
// reloads certificates never reads half a file.
func WriteFiles(dir string, ca *CA, pairs map[string]Pair) error {
	if ca == nil || len(ca.CertPEM) == 0 {
		return errors.New("write PKI files: CA has no certificate PEM")
	}
	for name := range pairs {
		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, `/\`) {
			return fmt.Errorf("write PKI files: pair name %q: want a plain file name without slashes", name)
		}
		if name == "ca" {
			return fmt.Errorf("write PKI files: pair name %q would overwrite ca.crt; pick another", name)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write PKI files: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return err
	}
	for name, p := range pairs {
		if len(p.CertPEM) == 0 || len(p.KeyPEM) == 0 {
			return fmt.Errorf("write PKI files: pair %q has no certificate or no key", name)
		}
		if err := writeFileAtomic(filepath.Join(dir, name+".crt"), p.CertPEM, 0o644); err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(dir, name+".key"), p.KeyPEM, 0o600); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
