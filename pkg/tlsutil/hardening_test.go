package tlsutil

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestParseHardeningFlags(t *testing.T) {
	for _, c := range []struct {
		args    []string
		want    Hardening
		errs    []string // one per error Validate returns
		warning bool
	}{
		{args: nil, want: Hardening{MinVersion: tls.VersionTLS12}},
		{args: []string{"--tls-min-version=VersionTLS13"}, want: Hardening{MinVersion: tls.VersionTLS13}},
		{args: []string{"--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"},
			want: Hardening{MinVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}}},
		{args: []string{"--tls-min-version=VersionTLS13", "--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
			want: Hardening{MinVersion: tls.VersionTLS13, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, warning: true},
		{args: []string{"--tls-min-version=VersionTLS11"}, errs: []string{"TLS 1.0 and 1.1 are insecure and not supported; use VersionTLS12"}},
		{args: []string{"--tls-min-version=1.2"}, errs: []string{`"1.2" is not a TLS version; use VersionTLS12`}},
		{args: []string{"--tls-cipher-suites=TLS_RSA_WITH_RC4_128_SHA"}, errs: []string{"TLS_RSA_WITH_RC4_128_SHA is insecure (Go lists it in tls.InsecureCipherSuites) and not supported; choose from TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,"}},
		{args: []string{"--tls-cipher-suites=TLS_RSA_WITH_AES_128_GCM_SHA256"}, errs: []string{"TLS_RSA_WITH_AES_128_GCM_SHA256 is insecure"}},
		{args: []string{"--tls-cipher-suites=TLS_AES_128_GCM_SHA256"}, errs: []string{"TLS_AES_128_GCM_SHA256 is a TLS 1.3 suite, which cannot be chosen"}},
		{args: []string{"--tls-cipher-suites=AES128", "--tls-min-version=VersionTLS10"}, errs: []string{"VersionTLS10: TLS 1.0 and 1.1", `"AES128" is not a TLS 1.2 cipher suite`}},
	} {
		var f Flags
		fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
		f.AddFlags(fs, "the test's endpoints")
		if err := fs.Parse(c.args); err != nil {
			t.Fatalf("%q: %v", c.args, err)
		}
		errs := f.Validate()
		if len(errs) != len(c.errs) {
			t.Errorf("%q: Validate = %v, want %d errors", c.args, errs, len(c.errs))
			continue
		}
		for i, err := range errs {
			if !strings.Contains(err.Error(), c.errs[i]) {
				t.Errorf("%q: error %q does not say %q", c.args, err, c.errs[i])
			}
		}
		if len(errs) > 0 {
			if _, err := f.Hardening(); err == nil {
				t.Errorf("%q: Hardening accepted what Validate refused", c.args)
			}
			continue
		}
		h, err := f.Hardening()
		if err != nil || h.MinVersion != c.want.MinVersion || !slices.Equal(h.CipherSuites, c.want.CipherSuites) {
			t.Errorf("%q: Hardening = %+v, %v; want %+v", c.args, h, err, c.want)
		}
		if w := f.Warnings(); (len(w) > 0) != c.warning {
			t.Errorf("%q: warnings %q, want some: %v", c.args, w, c.warning)
		}
	}
}

// TestHardeningRefusesAtTheHandshake: a server with Hardening applied
// refuses clients below its version or without one of its suites, and
// serves clients that match; Apply on the client side refuses servers the
// same way.
func TestHardeningRefusesAtTheHandshake(t *testing.T) {
	ca := newCA(t, "ca")
	f := newFiles(t)
	caFile := f.write("ca.crt", ca.CertPEM)
	srvCrt, srvKey := f.pair("server", issue(t, ca, "server", []string{"127.0.0.1"}, "server"))
	cliCrt, cliKey := f.pair("agent", issue(t, ca, "agent", nil, "client"))
	server := func(h Hardening) *tls.Config {
		c, err := ServerConfig(srvCrt, srvKey, caFile)
		if err != nil {
			t.Fatal(err)
		}
		h.Apply(c)
		return c
	}
	client := func(min, max uint16, suites ...uint16) *tls.Config {
		c, err := ClientConfig(caFile, cliCrt, cliKey, "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		c.MinVersion, c.MaxVersion, c.CipherSuites = min, max, suites
		return c
	}
	const (
		gcm128 = tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
		gcm256 = tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
	)

	defaults := server(Hardening{})
	if defaults.MinVersion != tls.VersionTLS12 || defaults.CipherSuites != nil {
		t.Fatalf("zero Hardening: MinVersion %x, suites %v; want TLS 1.2 and Go's defaults", defaults.MinVersion, defaults.CipherSuites)
	}
	handshake(t, defaults, client(tls.VersionTLS10, tls.VersionTLS11)).failed(t, "protocol version")
	handshake(t, defaults, client(tls.VersionTLS12, tls.VersionTLS12)).ok(t)

	tls13 := server(Hardening{MinVersion: tls.VersionTLS13})
	handshake(t, tls13, client(tls.VersionTLS12, tls.VersionTLS12)).failed(t, "protocol version")
	handshake(t, tls13, client(tls.VersionTLS13, tls.VersionTLS13)).ok(t)

	one := server(Hardening{CipherSuites: []uint16{gcm256}})
	handshake(t, one, client(tls.VersionTLS12, tls.VersionTLS12, gcm128)).failed(t, "handshake failure")
	handshake(t, one, client(tls.VersionTLS12, tls.VersionTLS12, gcm256)).ok(t)
	handshake(t, one, client(tls.VersionTLS12, tls.VersionTLS13, gcm128)).ok(t) // TLS 1.3: its own suites

	c := client(0, 0)
	Hardening{MinVersion: tls.VersionTLS13}.Apply(c)
	old := server(Hardening{})
	old.MaxVersion = tls.VersionTLS12
	handshake(t, old, c).failed(t, "protocol version")
}
