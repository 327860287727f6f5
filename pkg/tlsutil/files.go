package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// readFile reads a PEM file and names it by kind in errors, without the
// repetition of *fs.PathError ("certificate file "a": open a: ...").
func readFile(kind, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("%s file %q: %w", kind, path, err)
	}
	return b, nil
}

// pemTypes lists the PEM block types in b, for error messages.
func pemTypes(b []byte) []string {
	var types []string
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return types
		}
		types = append(types, blk.Type)
	}
}

func hasType(types []string, match func(string) bool) bool {
	for _, t := range types {
		if match(t) {
			return true
		}
	}
	return false
}

func isCert(t string) bool { return t == "CERTIFICATE" }
func isKey(t string) bool  { return strings.HasSuffix(t, "PRIVATE KEY") }

// describe says what a PEM file holds when it is not what was expected.
func describe(types []string) string {
	if len(types) == 0 {
		return "not PEM (no -----BEGIN block found)"
	}
	return fmt.Sprintf("holds PEM %q blocks", types)
}

// loadKeyPair reads a certificate chain and its private key, checking each
// file on its own first so that the error says which file is wrong.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := readFile("certificate", certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile("key", keyFile)
	if err != nil {
		return nil, err
	}
	if types := pemTypes(certPEM); !hasType(types, isCert) {
		hint := ""
		if hasType(types, isKey) {
			hint = "; are the certificate and key files swapped?"
		}
		return nil, fmt.Errorf("certificate file %q: no CERTIFICATE block: %s%s", certFile, describe(types), hint)
	}
	if types := pemTypes(keyPEM); !hasType(types, isKey) {
		return nil, fmt.Errorf("key file %q: no PRIVATE KEY block: %s", keyFile, describe(types))
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return nil, fmt.Errorf("key file %q does not match certificate file %q: %w", keyFile, certFile, err)
		}
		return nil, fmt.Errorf("certificate file %q with key file %q: %w", certFile, keyFile, err)
	}
	return &cert, nil
}

// loadCAPool reads every certificate of a PEM bundle into a pool. Unlike
// x509.CertPool.AppendCertsFromPEM it fails on a block it cannot parse, so a
// damaged bundle is not silently shortened.
func loadCAPool(caFile string) (*x509.CertPool, error) {
	b, err := readFile("CA", caFile)
	if err != nil {
		return nil, err
	}
	types := pemTypes(b)
	if !hasType(types, isCert) {
		return nil, fmt.Errorf("CA file %q: no CERTIFICATE block: %s", caFile, describe(types))
	}
	pool := x509.NewCertPool()
	for n := 1; ; {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return pool, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA file %q: certificate %d: %w", caFile, n, err)
		}
		pool.AddCert(c)
		n++
	}
}
