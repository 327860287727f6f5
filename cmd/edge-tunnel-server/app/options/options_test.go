package options

import (
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

// parse builds the options from a command line the way the command does.
func parse(t *testing.T, args ...string) (*Options, string) {
	t.Helper()
	o := NewOptions()
	o.getenv = func(string) string { return "" }
	o.hostname = func() (string, error) { return "cloud-node-1", nil }
	return o, clitest.ParseFlags(t, o.Flags(), args...)
}

func TestDefaults(t *testing.T) {
	o, _ := parse(t)
	want := map[string]bool{
		"UDSName":           o.UDSName == "",
		"UDSMode":           o.UDSMode == "0660",
		"ServerBindAddress": o.ServerBindAddress == "",
		"ServerPort":        o.ServerPort == 8090,
		"AgentBindAddress":  o.AgentBindAddress == "",
		"AgentPort":         o.AgentPort == 8091,
		"HealthBindAddress": o.HealthBindAddress == "",
		"HealthPort":        o.HealthPort == 8092,
		"AdminBindAddress":  o.AdminBindAddress == "127.0.0.1",
		"AdminPort":         o.AdminPort == 8095,
		"ProxyBindAddress":  o.ProxyBindAddress == "127.0.0.1",
		"ProxyPort":         o.ProxyPort == 0,
		"ServerID":          o.ServerID == "",
		"ServerCount":       o.ServerCount == 1,
		"KeepaliveTime":     o.KeepaliveTime == 10*time.Second,
		"DialTimeout":       o.DialTimeout == 10*time.Second,
		"DirectDial":        o.DirectDial,
		"ConnStreams":       o.ConnStreams,
		"Mux":               o.Mux,
		"PortsConfigMap":    o.PortsConfigMap == "kube-system/edge-tunnel-server-cfg",
		"PortsConfig":       o.PortsConfig == "",
		"Kubeconfig":        o.Kubeconfig == "",
		"Logging.Format":    o.Logging.Format == "text",
	}
	for name, ok := range want {
		if !ok {
			t.Errorf("default of %s is wrong: %+v", name, o)
		}
	}
}

func TestFlagSectionsAndNames(t *testing.T) {
	o := NewOptions()
	fss := o.Flags()
	wantOrder := []string{"frontend", "agent connections", "dialing", "replica leases", "http proxy", "limits", "TLS", "health and admin", "logging"}
	if strings.Join(fss.Order, ",") != strings.Join(wantOrder, ",") {
		t.Errorf("sections = %q, want %q", fss.Order, wantOrder)
	}
	for _, name := range []string{
		"uds-name", "uds-mode", "server-bind-address", "server-port", "server-cert", "server-key", "server-ca-cert",
		"agent-bind-address", "agent-port", "cluster-cert", "cluster-key", "cluster-ca-cert",
		"health-bind-address", "health-port", "admin-bind-address", "admin-port",
		"proxy-bind-address", "proxy-port", "proxy-cert", "proxy-key", "proxy-ca-cert",
		"server-id", "server-count", "keepalive-time", "dial-timeout", "direct-dial", "conn-streams",
		"ports-config", "ports-configmap", "kubeconfig",
		"v", "vmodule", "logging-format",
		"mode", "proxy-strategies", "enable-profiling", "enable-contention-profiling", "delete-existing-uds-file",
		"authentication-audience", "agent-namespace", "agent-service-account",
		"tls-min-version", "tls-cipher-suites", "cipher-suites",
		"direct-dial-allow", "proxy-token-file", "proxy-allow-unauthenticated", "proxy-max-header-bytes",
		"proxy-read-header-timeout", "proxy-idle-timeout",
		"max-pending-dials-per-agent", "max-pending-dials-per-stream", "max-connections-per-client",
		"frontend-max-header-bytes", "frontend-read-header-timeout",
	} {
		found := false
		for _, fs := range fss.FlagSets {
			if fs.Lookup(name) != nil {
				found = true
			}
		}
		if !found {
			t.Errorf("flag --%s is not defined", name)
		}
	}
}

func TestDeprecatedFlagsAreAcceptedAndExplained(t *testing.T) {
	o, out := parse(t,
		"--mode=http-connect", "--proxy-strategies=destHost,default", "--enable-profiling",
		"--enable-contention-profiling", "--delete-existing-uds-file=true",
		"--logtostderr=true",
	)
	for _, want := range []string{
		"--mode has been deprecated, ignored: edge-tunnel serves gRPC and HTTP CONNECT on the same socket",
		"--proxy-strategies has been deprecated",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("parse output lacks %q:\n%s", want, out)
		}
	}
	if o.UDSName != "" || o.ServerPort != 8090 {
		t.Errorf("deprecated flags changed real options: %+v", o)
	}
}

func TestValidate(t *testing.T) {
	certs := []string{"--cluster-cert=c", "--cluster-key=k"}
	tcp := []string{"--server-cert=c", "--server-key=k", "--server-ca-cert=ca"}
	cases := []struct {
		name string
		args []string
		want []string // substrings, one per expected error; nil: valid
	}{
		{"uds only", append([]string{"--uds-name=/run/s.sock", "--server-port=0"}, certs...), nil},
		{"tcp only", append(append([]string{}, tcp...), certs...), nil},
		{"uds and tcp", append(append([]string{"--uds-name=/run/s.sock"}, tcp...), certs...), nil},
		{"no frontend", append([]string{"--server-port=0"}, certs...), []string{"set --uds-name"}},
		{"tcp without client CA", append([]string{"--server-cert=c", "--server-key=k"}, certs...), []string{"needs --server-ca-cert"}},
		{"tcp without cert", append([]string{"--server-ca-cert=ca"}, certs...), []string{"needs --server-cert and --server-key"}},
		{"no cluster cert", tcp, []string{"--cluster-cert and --cluster-key"}},
		{"bad mode", append(append([]string{"--uds-mode=rw"}, tcp...), certs...), []string{"--uds-mode \"rw\": not an octal"}},
		{"mode too big", append(append([]string{"--uds-mode=7777"}, tcp...), certs...), []string{"at most 0777"}},
		{"agent port 0", append(append([]string{"--agent-port=0"}, tcp...), certs...), []string{"--agent-port=0: this port cannot be disabled"}},
		{"port range", append(append([]string{"--health-port=70000"}, tcp...), certs...), []string{"--health-port=70000: not a port; give 1..65535, or 0"}},
		{"server count", append(append([]string{"--server-count=0"}, tcp...), certs...), []string{"--server-count=0"}},
		{"durations", append(append([]string{"--keepalive-time=0s", "--dial-timeout=-1s"}, tcp...), certs...), []string{"--keepalive-time", "--dial-timeout"}},
		{"proxy port range", append(append([]string{"--proxy-port=-1"}, tcp...), certs...), []string{"--proxy-port=-1: not a port"}},
		{"proxy cert without key", append(append([]string{"--proxy-port=8099", "--proxy-cert=c"}, tcp...), certs...), []string{"--proxy-cert and --proxy-key go together"}},
		{"proxy CA without cert", append(append([]string{"--proxy-port=8099", "--proxy-ca-cert=ca"}, tcp...), certs...), []string{"--proxy-ca-cert authenticates clients over TLS"}},
		{"plain proxy", append(append([]string{"--proxy-port=8099"}, tcp...), certs...), nil},
		{"bad configmap ref", append(append([]string{"--ports-configmap=edge-tunnel-server-cfg"}, tcp...), certs...), []string{`--ports-configmap="edge-tunnel-server-cfg": want NAMESPACE/NAME`}},
		{"no configmap watch", append(append([]string{"--ports-configmap="}, tcp...), certs...), nil},
		{"two port sources", append(append([]string{"--ports-config=/etc/ports", "--kubeconfig=/etc/kubeconfig"}, tcp...), certs...), []string{"--ports-config and --kubeconfig both give a source"}},
		{"file, watch off", append(append([]string{"--ports-config=/etc/ports", "--kubeconfig=/etc/kubeconfig", "--ports-configmap="}, tcp...), certs...), nil},
		{"agent identity certificate", append(append([]string{"--agent-identity=certificate", "--cluster-ca-cert=ca"}, tcp...), certs...), nil},
		{"agent identity without CA", append(append([]string{"--agent-identity=certificate"}, tcp...), certs...), []string{"--agent-identity=certificate checks agents' client certificates, so it needs --cluster-ca-cert"}},
		{"agent identity unknown", append(append([]string{"--agent-identity=cn"}, tcp...), certs...), []string{`--agent-identity="cn": want certificate, token, certificate,token or none`}},
		{"token without its flags", append(append([]string{"--agent-identity=token"}, tcp...), certs...), []string{"--agent-identity=token checks agents' ServiceAccount tokens, so it needs --authentication-audience"}},
		{"token without audience", append(append([]string{"--agent-namespace=kube-system", "--agent-service-account=edge-tunnel-agent"}, tcp...), certs...), []string{"--agent-identity=token checks agents' ServiceAccount tokens"}},
		{"token", append(append([]string{"--agent-identity=token", "--authentication-audience=edge-tunnel", "--agent-namespace=kube-system", "--agent-service-account=edge-tunnel-agent"}, tcp...), certs...), nil},
		{"certificate or token without CA", append(append([]string{"--agent-identity=certificate,token", "--authentication-audience=edge-tunnel", "--agent-namespace=kube-system", "--agent-service-account=edge-tunnel-agent"}, tcp...), certs...), []string{"--agent-identity=certificate,token checks agents' client certificates, so it needs --cluster-ca-cert"}},
		{"defaults", nil, []string{"needs --server-cert", "needs --server-ca-cert", "--cluster-cert"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := parse(t, tc.args...)
			clitest.WantErrors(t, o.Validate(), tc.want)
		})
	}
}

func TestWarnings(t *testing.T) {
	o, _ := parse(t, "--uds-name=/s", "--server-port=0", "--server-cert=c", "--cluster-cert=c", "--cluster-key=k", "--mode=tcp")
	got := strings.Join(o.Warnings(), "\n")
	for _, want := range []string{"--cluster-ca-cert is not set", "unused because --server-port=0", `--mode="tcp"`} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings lack %q:\n%s", want, got)
		}
	}
	o, _ = parse(t, "--uds-name=/s", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca", "--mode=grpc")
	if ws := o.Warnings(); len(ws) != 0 {
		t.Errorf("unexpected warnings: %q", ws)
	}
	o, _ = parse(t, "--uds-name=/s", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca", "--proxy-port=8099")
	if ws := o.Warnings(); len(ws) != 0 {
		t.Errorf("a proxy on loopback warned: %q", ws)
	}
	o, _ = parse(t, "--uds-name=/s", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca", "--proxy-port=8099",
		"--proxy-bind-address=", "--proxy-allow-unauthenticated")
	if got := strings.Join(o.Warnings(), "\n"); !strings.Contains(got, "HTTP proxy on port 8099 listens beyond loopback without authenticating its clients") {
		t.Errorf("warnings lack the unauthenticated proxy:\n%s", got)
	}
	o, _ = parse(t, "--uds-name=/s", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca", "--proxy-cert=c")
	if got := strings.Join(o.Warnings(), "\n"); !strings.Contains(got, "unused because --proxy-port=0") {
		t.Errorf("warnings lack the unused proxy certificate:\n%s", got)
	}
	o, _ = parse(t, "--uds-name=/s", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca", "--kubeconfig=/k", "--ports-configmap=", "--agent-identity=none")
	if got := strings.Join(o.Warnings(), "\n"); !strings.Contains(got, "--kubeconfig is set but unused") {
		t.Errorf("warnings lack the unused kubeconfig:\n%s", got)
	}
}

func TestConfig(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	ca, cert, key := p.CA(), p.Cert("leaf"), p.Key("leaf")
	o, _ := parse(t,
		"--uds-name=/run/edge-tunnel.sock", "--uds-mode=0600",
		"--server-bind-address=10.0.0.1", "--server-cert="+cert, "--server-key="+key, "--server-ca-cert="+ca,
		"--agent-bind-address=::", "--cluster-cert="+cert, "--cluster-key="+key, "--cluster-ca-cert="+ca,
		"--health-port=0", "--admin-port=9000",
		"--proxy-bind-address=10.0.0.2", "--proxy-port=8099", "--proxy-cert="+cert, "--proxy-key="+key, "--proxy-ca-cert="+ca,
		"--server-count=3", "--keepalive-time=1m", "--dial-timeout=3s", "--direct-dial=false", "--conn-streams=false",
	)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatalf("Validate: %v", errors.Join(errs...))
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"UDSName", cfg.UDSName, "/run/edge-tunnel.sock"},
		{"UDSMode", cfg.UDSMode, os.FileMode(0o600)},
		{"FrontendAddr", cfg.FrontendAddr, "10.0.0.1:8090"},
		{"AgentAddr", cfg.AgentAddr, "[::]:8091"},
		{"HealthAddr", cfg.HealthAddr, ""},
		{"AdminAddr", cfg.AdminAddr, "127.0.0.1:9000"},
		{"ProxyAddr", cfg.ProxyAddr, "10.0.0.2:8099"},
		{"ServerID", cfg.ServerID, "cloud-node-1"},
		{"ServerCount", cfg.ServerCount, 3},
		{"KeepaliveTime", cfg.KeepaliveTime, time.Minute},
		{"DialTimeout", cfg.DialTimeout, 3 * time.Second},
		{"DirectDial", cfg.DirectDial, false},
		{"ConnStreams", cfg.ConnStreams, false},
		{"Mux (off with --conn-streams=false)", cfg.Mux, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	// Both ports must do mutual TLS: a client with a certificate from the CA
	// gets through, a client without one does not.
	withCert := clitest.ClientTLS(t, ca, cert, key)
	noCert := clitest.ClientTLS(t, ca, "", "")
	for name, srv := range map[string]*tls.Config{"FrontendTLS": cfg.FrontendTLS, "AgentTLS": cfg.AgentTLS, "ProxyTLS": cfg.ProxyTLS} {
		if srv == nil {
			t.Errorf("%s is nil", name)
			continue
		}
		if err := clitest.Handshake(t, srv, withCert); err != nil {
			t.Errorf("%s: handshake with a client certificate failed: %v", name, err)
		}
		if err := clitest.Handshake(t, srv, noCert); err == nil {
			t.Errorf("%s: handshake without a client certificate succeeded; mutual TLS is not enforced", name)
		}
	}
}

func TestConfigUDSOnlyHasNoFrontendAddr(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	o, _ := parse(t, "--uds-name=/s", "--server-port=0", "--cluster-cert="+p.Cert("leaf"), "--cluster-key="+p.Key("leaf"))
	cfg, err := o.Config()
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	if cfg.FrontendAddr != "" || cfg.FrontendTLS != nil {
		t.Errorf("TCP frontend configured although --server-port=0: %q %v", cfg.FrontendAddr, cfg.FrontendTLS)
	}
	if cfg.ProxyAddr != "" || cfg.ProxyTLS != nil {
		t.Errorf("HTTP proxy configured although --proxy-port=0: %q %v", cfg.ProxyAddr, cfg.ProxyTLS)
	}
	if cfg.AgentAddr != ":8091" || cfg.HealthAddr != ":8092" || cfg.AdminAddr != "127.0.0.1:8095" {
		t.Errorf("addresses = %q %q %q", cfg.AgentAddr, cfg.HealthAddr, cfg.AdminAddr)
	}
}

func TestConfigNamesFlagsOfUnreadableFiles(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	cert, key, missing := p.Cert("leaf"), p.Key("leaf"), p.Path("missing.pem")

	o, _ := parse(t, "--server-cert="+cert, "--server-key="+key, "--server-ca-cert="+missing, "--cluster-cert="+cert, "--cluster-key="+key)
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "--server-ca-cert") {
		t.Errorf("missing client CA: err = %v, want it to name --server-ca-cert", err)
	}
	o, _ = parse(t, "--uds-name=/s", "--server-port=0", "--cluster-cert="+missing, "--cluster-key="+key)
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "--cluster-cert") {
		t.Errorf("missing cluster cert: err = %v, want it to name --cluster-cert", err)
	}
}

func TestServerIDFallbacks(t *testing.T) {
	o := NewOptions()
	o.getenv = func(k string) string {
		if k == "PROXY_SERVER_ID" {
			return "from-env"
		}
		return ""
	}
	o.hostname = func() (string, error) { return "host", nil }
	if got := o.serverID(); got != "from-env" {
		t.Errorf("with PROXY_SERVER_ID: %q", got)
	}
	o.ServerID = "from-flag"
	if got := o.serverID(); got != "from-flag" {
		t.Errorf("with --server-id: %q", got)
	}
	o.ServerID = ""
	o.getenv = func(string) string { return "" }
	if got := o.serverID(); got != "host" {
		t.Errorf("hostname fallback: %q", got)
	}
	o.hostname = func() (string, error) { return "", errors.New("no hostname") }
	a, b := o.serverID(), o.serverID()
	if len(a) != 36 || a == b {
		t.Errorf("uuid fallback: %q, %q (want two different UUIDs)", a, b)
	}
}
