package options

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
)

func TestTLSFlagsValidate(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	base := []string{"--uds-name=/s", "--server-port=0", "--cluster-cert=" + p.Cert("leaf"), "--cluster-key=" + p.Key("leaf")}
	o, _ := parse(t, append(base, "--tls-min-version=VersionTLS10", "--tls-cipher-suites=TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA")...)
	clitest.WantErrors(t, o.Validate(), []string{
		"--tls-min-version=VersionTLS10: TLS 1.0 and 1.1 are insecure and not supported",
		"--tls-cipher-suites: TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA is insecure",
	})
	o, _ = parse(t, append(base, "--tls-min-version=VersionTLS13", "--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")...)
	clitest.WantErrors(t, o.Validate(), nil)
	if ws := o.Warnings(); !containsText(ws, "--tls-cipher-suites is set but unused because --tls-min-version=VersionTLS13") {
		t.Errorf("warnings %q do not say that the suites are unused with TLS 1.3", ws)
	}

	// Upstream konnectivity-server's --cipher-suites is the same list.
	o, _ = parse(t, append(base, "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,TLS_RSA_WITH_RC4_128_SHA")...)
	clitest.WantErrors(t, o.Validate(), []string{"--tls-cipher-suites: TLS_RSA_WITH_RC4_128_SHA is insecure"})
	o, _ = parse(t, append(base, "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")...)
	clitest.WantErrors(t, o.Validate(), nil)
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.AgentTLS.CipherSuites; len(got) != 1 || got[0] != tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 {
		t.Errorf("--cipher-suites: agent port suites %v, want the one listed", got)
	}
	o, _ = parse(t, append(base, "--cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")...)
	clitest.WantErrors(t, o.Validate(), []string{"--cipher-suites and --tls-cipher-suites are the same list under two names"})
}

// TestTLSHardeningOnEveryListener runs a server built from the flags and
// connects to each of its TLS listeners, the agent port, the TCP frontend
// and the HTTPS proxy: a client offering only TLS 1.1, or only a suite that
// --tls-cipher-suites does not list, is refused at the handshake; a client
// offering the listed suite gets through.
func TestTLSHardeningOnEveryListener(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	ca, cert, key := p.CA(), p.Cert("leaf"), p.Key("leaf")
	o, _ := parse(t,
		"--uds-name="+filepath.Join(t.TempDir(), "s.sock"),
		"--server-cert="+cert, "--server-key="+key, "--server-ca-cert="+ca,
		"--cluster-cert="+cert, "--cluster-key="+key, "--cluster-ca-cert="+ca, "--agent-identity=none",
		"--proxy-port=8099", "--proxy-cert="+cert, "--proxy-key="+key, "--proxy-ca-cert="+ca,
		"--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
	)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatalf("Validate: %v", errors.Join(errs...))
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	// Free ports, the TLS configs as the flags made them.
	cfg.FrontendAddr, cfg.AgentAddr, cfg.ProxyAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.HealthAddr, cfg.AdminAddr, cfg.PortsKube = "", "", nil
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for !srv.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("the server did not start listening within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}

	client := func(max uint16, suite uint16) *tls.Config {
		c := clitest.ClientTLS(t, ca, cert, key)
		c.MaxVersion, c.CipherSuites, c.NextProtos = max, []uint16{suite}, []string{"h2", "http/1.1"}
		if max < tls.VersionTLS12 {
			c.MinVersion = tls.VersionTLS10
		}
		return c
	}
	const listed, other = tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
	for _, name := range []string{"agent", "frontend", "proxy"} {
		addr := srv.Addr(name).String()
		for _, c := range []struct {
			what   string
			client *tls.Config
			ok     bool
		}{
			{"TLS 1.1 only", client(tls.VersionTLS11, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA), false},
			{"a suite not listed", client(tls.VersionTLS12, other), false},
			{"the listed suite", client(tls.VersionTLS12, listed), true},
		} {
			d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: c.client}
			conn, err := d.DialContext(context.Background(), "tcp", addr)
			if err == nil {
				if got := conn.(*tls.Conn).ConnectionState().CipherSuite; got != listed {
					t.Errorf("%s, %s: negotiated %s", name, c.what, tls.CipherSuiteName(got))
				}
				conn.Close()
			}
			switch {
			case c.ok && err != nil:
				t.Errorf("%s listener refused a client with %s: %v", name, c.what, err)
			case !c.ok && err == nil:
				t.Errorf("%s listener accepted a client with %s", name, c.what)
			}
		}
	}
}

func containsText(list []string, s string) bool {
	for _, v := range list {
		if v == s || len(v) >= len(s) && v[:len(s)] == s {
			return true
		}
	}
	return false
}
