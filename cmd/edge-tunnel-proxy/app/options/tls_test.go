package options

import (
	"crypto/tls"
	"errors"
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

// TestTLSFlags: the sidecar's connection to the TCP frontend refuses, at
// the handshake, a frontend below --tls-min-version or without a suite of
// --tls-cipher-suites; bad values are refused by Validate, and the flags
// draw a warning with --uds-name, where there is no TLS.
func TestTLSFlags(t *testing.T) {
	p := clitest.WritePKI(t, "client", "server")
	args := []string{"--server-host=127.0.0.1", "--ca-cert=" + p.CA(), "--client-cert=" + p.Cert("client"), "--client-key=" + p.Key("client")}
	clientTLS := func(extra ...string) *tls.Config {
		t.Helper()
		o := parse(t, append(args, extra...)...)
		if errs := o.Validate(); len(errs) != 0 {
			t.Fatalf("Validate: %v", errors.Join(errs...))
		}
		cfg, err := o.Config()
		if err != nil {
			t.Fatalf("Config: %v", err)
		}
		return cfg.Egress.TLS
	}
	server := func(max uint16, suites ...uint16) *tls.Config {
		s := clitest.ServerTLS(t, p.CA(), p.Cert("server"), p.Key("server"))
		s.MaxVersion, s.CipherSuites = max, suites
		return s
	}
	const listed, other = tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256

	if err := clitest.Handshake(t, server(tls.VersionTLS12), clientTLS("--tls-min-version=VersionTLS13")); err == nil {
		t.Error("--tls-min-version=VersionTLS13 connected to a TLS 1.2 frontend")
	}
	suites := "--tls-cipher-suites=" + tls.CipherSuiteName(listed)
	if err := clitest.Handshake(t, server(tls.VersionTLS12, other), clientTLS(suites)); err == nil {
		t.Errorf("%s connected to a frontend offering only %s", suites, tls.CipherSuiteName(other))
	}
	if err := clitest.Handshake(t, server(tls.VersionTLS12, listed), clientTLS(suites)); err != nil {
		t.Errorf("%s, frontend offering it: %v", suites, err)
	}

	o := parse(t, append(args, "--tls-min-version=VersionTLS12", "--tls-cipher-suites=TLS_AES_256_GCM_SHA384")...)
	clitest.WantErrors(t, o.Validate(), []string{"--tls-cipher-suites: TLS_AES_256_GCM_SHA384 is a TLS 1.3 suite, which cannot be chosen"})

	o = parse(t, "--uds-name=/run/s.sock", "--tls-min-version=VersionTLS13")
	if ws := strings.Join(o.Warnings(), "\n"); !strings.Contains(ws, "--tls-min-version/--tls-cipher-suites are unused with --uds-name") {
		t.Errorf("warnings %q do not say the TLS flags are unused with --uds-name", ws)
	}
}
