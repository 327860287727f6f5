package options

import (
	"crypto/tls"
	"errors"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

// TestTLSFlags: the agent's connection to the server refuses, at the
// handshake, a server that offers only TLS 1.2 when --tls-min-version is
// VersionTLS13, or only a suite --tls-cipher-suites does not list; bad
// values are refused by Validate, saying why.
func TestTLSFlags(t *testing.T) {
	p := clitest.WritePKI(t, "agent", "server")
	env := map[string]string{"NODE_NAME": "edge-1", "NODE_IP": "10.0.0.5"}
	args := []string{"--proxy-server-host=127.0.0.1", "--ca-cert=" + p.CA(), "--agent-cert=" + p.Cert("agent"), "--agent-key=" + p.Key("agent")}
	agentTLS := func(extra ...string) *tls.Config {
		t.Helper()
		o, _ := parse(t, env, append(args, extra...)...)
		if errs := o.Validate(); len(errs) != 0 {
			t.Fatalf("Validate: %v", errors.Join(errs...))
		}
		cfg, err := o.Config()
		if err != nil {
			t.Fatalf("Config: %v", err)
		}
		return cfg.TLS
	}
	server := func(max uint16, suites ...uint16) *tls.Config {
		s := clitest.ServerTLS(t, p.CA(), p.Cert("server"), p.Key("server"))
		s.MaxVersion, s.CipherSuites = max, suites
		return s
	}
	const listed, other = tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256

	if err := clitest.Handshake(t, server(tls.VersionTLS12), agentTLS()); err != nil {
		t.Errorf("default flags, TLS 1.2 server: %v", err)
	}
	if err := clitest.Handshake(t, server(tls.VersionTLS12), agentTLS("--tls-min-version=VersionTLS13")); err == nil {
		t.Error("--tls-min-version=VersionTLS13 connected to a TLS 1.2 server")
	}
	if err := clitest.Handshake(t, server(tls.VersionTLS13), agentTLS("--tls-min-version=VersionTLS13")); err != nil {
		t.Errorf("--tls-min-version=VersionTLS13, TLS 1.3 server: %v", err)
	}
	suites := "--tls-cipher-suites=" + tls.CipherSuiteName(listed)
	if err := clitest.Handshake(t, server(tls.VersionTLS12, other), agentTLS(suites)); err == nil {
		t.Errorf("%s connected to a server offering only %s", suites, tls.CipherSuiteName(other))
	}
	if err := clitest.Handshake(t, server(tls.VersionTLS12, listed), agentTLS(suites)); err != nil {
		t.Errorf("%s, server offering it: %v", suites, err)
	}

	o, _ := parse(t, env, append(args, "--tls-min-version=VersionTLS11", "--tls-cipher-suites=TLS_RSA_WITH_AES_256_CBC_SHA")...)
	clitest.WantErrors(t, o.Validate(), []string{
		"--tls-min-version=VersionTLS11: TLS 1.0 and 1.1 are insecure",
		"--tls-cipher-suites: TLS_RSA_WITH_AES_256_CBC_SHA is insecure",
	})
}
