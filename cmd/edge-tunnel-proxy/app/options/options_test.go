package options

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

func parse(t *testing.T, args ...string) *Options {
	t.Helper()
	o := NewOptions()
	clitest.ParseFlags(t, o.Flags(), args...)
	return o
}

func TestDefaults(t *testing.T) {
	o := parse(t)
	if o.BindAddress != "127.0.0.1" || o.Port != 8099 || o.ServerPort != 8090 || o.DialTimeout != 10*time.Second || o.ShutdownGrace != 10*time.Second {
		t.Errorf("defaults: %+v", o)
	}
	fss := o.Flags()
	if got, want := strings.Join(fss.Order, ","), "proxy,server connection,logging"; got != want {
		t.Errorf("sections = %q, want %q", got, want)
	}
}

func TestValidate(t *testing.T) {
	tcp := []string{"--server-host=tunnel.kube-system.svc", "--ca-cert=ca", "--client-cert=c", "--client-key=k"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"uds", []string{"--uds-name=/run/s.sock"}, nil},
		{"tcp", tcp, nil},
		{"no server", nil, []string{"set --uds-name"}},
		{"both", append([]string{"--uds-name=/s"}, tcp...), []string{"--uds-name and --server-host both set"}},
		{"tcp without TLS", []string{"--server-host=h"}, []string{"needs --ca-cert", "needs --client-cert and --client-key"}},
		{"tcp port", append([]string{"--server-port=0"}, tcp...), []string{"--server-port=0"}},
		{"port", []string{"--uds-name=/s", "--port=0"}, []string{"--port=0"}},
		{"durations", []string{"--uds-name=/s", "--dial-timeout=0s", "--shutdown-grace=-1s"}, []string{"--dial-timeout", "--shutdown-grace"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clitest.WantErrors(t, parse(t, tc.args...).Validate(), tc.want)
		})
	}
}

func TestWarnings(t *testing.T) {
	ws := strings.Join(parse(t, "--uds-name=/s", "--bind-address=0.0.0.0", "--ca-cert=ca").Warnings(), "\n")
	for _, want := range []string{"not a loopback address", "unused with --uds-name"} {
		if !strings.Contains(ws, want) {
			t.Errorf("warnings lack %q:\n%s", want, ws)
		}
	}
	for _, addr := range []string{"127.0.0.1", "::1", "localhost"} {
		if ws := parse(t, "--uds-name=/s", "--bind-address="+addr).Warnings(); len(ws) != 0 {
			t.Errorf("--bind-address=%s: unexpected warnings %q", addr, ws)
		}
	}
}

func TestConfig(t *testing.T) {
	o := parse(t, "--uds-name=/run/s.sock", "--port=9000")
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenAddr != "127.0.0.1:9000" || cfg.Egress.UDSName != "/run/s.sock" || cfg.Egress.Address != "" {
		t.Errorf("UDS config: %+v", cfg)
	}

	p := clitest.WritePKI(t, "client", "server")
	o = parse(t, "--server-host=127.0.0.1", "--server-port=8443", "--ca-cert="+p.CA(), "--client-cert="+p.Cert("client"), "--client-key="+p.Key("client"))
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatal(errors.Join(errs...))
	}
	cfg, err = o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Egress.Address != "127.0.0.1:8443" || cfg.Egress.TLS == nil {
		t.Fatalf("TCP config: %+v", cfg)
	}
	// The client TLS presents the certificate and verifies the server's.
	if err := clitest.Handshake(t, clitest.ServerTLS(t, p.CA(), p.Cert("server"), p.Key("server")), cfg.Egress.TLS); err != nil {
		t.Errorf("handshake with the frontend: %v", err)
	}

	o = parse(t, "--server-host=h", "--ca-cert="+p.Path("missing.pem"), "--client-cert="+p.Cert("client"), "--client-key="+p.Key("client"))
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "--ca-cert") {
		t.Errorf("missing CA: err = %v, want it to name --ca-cert", err)
	}
}
