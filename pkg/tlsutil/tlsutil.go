// Package tlsutil builds TLS configs from PEM files for the server's agent and
// frontend ports and for the agent. Certificates and CA bundles are re-read
// when their files change, so rotated certificates (cert-manager, kubelet-style
// rotation, Secret updates) are used without a restart.
//
// CA bundles are checked in VerifyConnection rather than through RootCAs and
// ClientCAs. Those fields are fixed once a config is in use, and the usual
// way around that, GetConfigForClient returning a fresh config, would drop
// whatever callers changed in their own clone of the config (grpc, for one,
// clones it and adds "h2" to NextProtos). VerifyConnection is kept by Clone
// and runs on every handshake, resumed ones included. The price is that
// ConnectionState.VerifiedChains stays empty; PeerCertificates is set.
package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// ServerConfig returns a TLS 1.2+ server config presenting the certificate in
// certFile and keyFile. If clientCAFile is not empty, clients must present a
// certificate for client authentication signed by a CA in that bundle.
func ServerConfig(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	return serverConfig(certFile, keyFile, clientCAFile, reloadInterval)
}

func serverConfig(certFile, keyFile, clientCAFile string, interval time.Duration) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("server TLS: a certificate file and a key file are required (got certificate %q, key %q)", certFile, keyFile)
	}
	certs, err := newReloader([]string{certFile, keyFile}, interval, func() (*tls.Certificate, error) {
		return loadKeyPair(certFile, keyFile)
	})
	if err != nil {
		return nil, fmt.Errorf("server TLS: %w", err)
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return certs.get(), nil
		},
	}
	if clientCAFile == "" {
		return cfg, nil
	}
	cas, err := newReloader([]string{clientCAFile}, interval, func() (*x509.CertPool, error) {
		return loadCAPool(clientCAFile)
	})
	if err != nil {
		return nil, fmt.Errorf("server TLS: client %w", err)
	}
	// Require a certificate here; VerifyConnection checks it against the
	// current bundle (see the package comment for why not ClientCAs).
	cfg.ClientAuth = tls.RequireAnyClientCert
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: client did not present a certificate")
		}
		opts := x509.VerifyOptions{
			Roots:         cas.get(),
			Intermediates: intermediates(cs.PeerCertificates),
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("tls: client certificate %q not trusted by CA file %q: %w",
				cs.PeerCertificates[0].Subject.CommonName, clientCAFile, err)
		}
		return nil
	}
	return cfg, nil
}

// ClientConfig returns a TLS 1.2+ client config. caFile is the bundle that
// verifies the server; empty means the system roots. certFile and keyFile are
// the client certificate, both or neither. serverName, when not empty, is sent
// as SNI and is the name (DNS name or IP address) the server certificate must
// carry; when empty the dialer's ServerName is used.
//
// With a caFile, a server reached by IP address can only be verified if
// serverName is set, since the IP is not sent in SNI and VerifyConnection
// sees nothing else; the handshake then fails with an error saying so.
func ClientConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	return clientConfig(caFile, certFile, keyFile, serverName, reloadInterval)
}

func clientConfig(caFile, certFile, keyFile, serverName string, interval time.Duration) (*tls.Config, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("client TLS: give both a certificate file and a key file, or neither (got certificate %q, key %q)", certFile, keyFile)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if certFile != "" {
		certs, err := newReloader([]string{certFile, keyFile}, interval, func() (*tls.Certificate, error) {
			return loadKeyPair(certFile, keyFile)
		})
		if err != nil {
			return nil, fmt.Errorf("client TLS: %w", err)
		}
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return certs.get(), nil
		}
	}
	if caFile == "" {
		return cfg, nil // standard verification against the system roots
	}
	cas, err := newReloader([]string{caFile}, interval, func() (*x509.CertPool, error) {
		return loadCAPool(caFile)
	})
	if err != nil {
		return nil, fmt.Errorf("client TLS: %w", err)
	}
	// Go's own verification is replaced, not skipped: VerifyConnection
	// below does what it would do, against the current bundle.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("tls: server did not present a certificate")
		}
		name := serverName
		if name == "" {
			name = cs.ServerName // the SNI the dialer sent
		}
		if name == "" {
			return errors.New("tls: cannot verify the server certificate: no server name " +
				"(dialing an IP address? pass the address or the certificate's name as the TLS server name)")
		}
		if a, err := netip.ParseAddr(name); err == nil {
			name = a.Unmap().String()
		}
		opts := x509.VerifyOptions{
			Roots:         cas.get(),
			Intermediates: intermediates(cs.PeerCertificates),
			DNSName:       name,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
			return fmt.Errorf("tls: server certificate not trusted by CA file %q for name %q: %w", caFile, name, err)
		}
		return nil
	}
	return cfg, nil
}

// intermediates pools the certificates a peer sent after its leaf.
func intermediates(chain []*x509.Certificate) *x509.CertPool {
	if len(chain) < 2 {
		return nil
	}
	p := x509.NewCertPool()
	for _, c := range chain[1:] {
		p.AddCert(c)
	}
	return p
}
