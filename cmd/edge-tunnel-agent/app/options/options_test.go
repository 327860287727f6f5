package options

import (
	"crypto/tls"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

// parse builds the options from a command line and an environment the way
// the command does.
func parse(t *testing.T, env map[string]string, args ...string) (*Options, string) {
	t.Helper()
	o := NewOptions()
	o.getenv = func(k string) string { return env[k] }
	o.hostname = func() (string, error) { return "edge-host", nil }
	return o, clitest.ParseFlags(t, o.Flags(), args...)
}

func TestDefaults(t *testing.T) {
	o, _ := parse(t, nil)
	want := map[string]bool{
		"ProxyServerHost":   o.ProxyServerHost == "",
		"ProxyServerPort":   o.ProxyServerPort == 8091,
		"ServerName":        o.ServerName == "",
		"HealthBindAddress": o.HealthBindAddress == "",
		"HealthServerPort":  o.HealthServerPort == 8093,
		"AdminBindAddress":  o.AdminBindAddress == "127.0.0.1",
		"AdminServerPort":   o.AdminServerPort == 8094,
		"SyncInterval":      o.SyncInterval == time.Second,
		"SyncIntervalCap":   o.SyncIntervalCap == 10*time.Second,
		"KeepaliveTime":     o.KeepaliveTime == 15*time.Second,
		"DialTimeout":       o.DialTimeout == 5*time.Second,
		"DrainGrace":        o.DrainGrace == 20*time.Second,
		"ConnStreams":       o.ConnStreams,
		"Mux":               o.Mux,
		"AllowedCIDRs":      len(o.AllowedCIDRs) == 0,
		"Logging.Format":    o.Logging.Format == "text",
	}
	for name, ok := range want {
		if !ok {
			t.Errorf("default of %s is wrong: %+v", name, o)
		}
	}
}

func TestDeprecatedFlagsAreAcceptedAndExplained(t *testing.T) {
	_, out := parse(t, nil, "--probe-interval=5s", "--sync-forever",
		"--enable-profiling", "--enable-contention-profiling", "--logtostderr", "--alsologtostderr")
	for _, want := range []string{
		"--probe-interval has been deprecated, ignored: dead server connections are detected by gRPC keepalive",
		"--sync-forever has been deprecated",
		"--logtostderr has been deprecated",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("parse output lacks %q:\n%s", want, out)
		}
	}
}

func TestValidate(t *testing.T) {
	good := []string{"--proxy-server-host=tunnel.example.com", "--ca-cert=ca", "--agent-cert=c", "--agent-key=k"}
	node := map[string]string{"NODE_NAME": "edge-1"}
	with := func(extra ...string) []string { return append(append([]string{}, good...), extra...) }
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want []string // substrings, one per expected error; nil: valid
	}{
		{"flags and NODE_NAME", node, good, nil},
		{"identifiers flag only", nil, with("--agent-identifiers=ipv4=10.0.0.5"), nil},
		{"NODE_IP only", map[string]string{"NODE_IP": "10.0.0.5"}, good, nil},
		{"IPv6 host literal", node, with("--proxy-server-host=[fd00::1]"), nil},
		{"no host", node, []string{"--ca-cert=ca", "--agent-cert=c", "--agent-key=k"}, []string{"--proxy-server-host is required"}},
		{"host with port", node, with("--proxy-server-host=tunnel:8091"), []string{"port in --proxy-server-port"}},
		{"bad port", node, with("--proxy-server-port=0"), []string{"--proxy-server-port=0: not a port"}},
		{"no CA", node, []string{"--proxy-server-host=h", "--agent-cert=c", "--agent-key=k"}, []string{"--ca-cert is required"}},
		{"key without cert", node, []string{"--proxy-server-host=h", "--ca-cert=ca", "--agent-key=k"}, []string{"--agent-cert and --agent-key go together"}},
		{"no credential", node, []string{"--proxy-server-host=h", "--ca-cert=ca"}, []string{"the agent has no credential: set --agent-cert and --agent-key"}},
		{"token only", node, []string{"--proxy-server-host=h", "--ca-cert=ca", "--service-account-token-path=/var/run/token"}, nil},
		{"token and cert", node, with("--service-account-token-path=/var/run/token"), nil},
		{"no identifiers", nil, good, []string{"set --agent-identifiers"}},
		{"bad identifiers", node, with("--agent-identifiers=ipv4=fd00::1"), []string{"--agent-identifiers: ipv4"}},
		{"bad NODE_IPS", map[string]string{"NODE_NAME": "edge-1", "NODE_IPS": "10.0.0.5,nope"}, good, []string{`$NODE_IPS: "nope" is not an IP address`}},
		{"bad NODE_NAME", map[string]string{"NODE_NAME": "edge_1"}, good, []string{`$NODE_NAME="edge_1" is not a valid node name`}},
		{"bad cidr", node, with("--allowed-cidrs=10.0.0.0/8,10.1.2.3"), []string{`--allowed-cidrs: "10.1.2.3"`}},
		{"interval over cap", node, with("--sync-interval=30s"), []string{"longer than --sync-interval-cap"}},
		{"zero durations", node, with("--keepalive-time=0s", "--dial-timeout=0s"), []string{"--keepalive-time=0s", "--dial-timeout=0s"}},
		{"negative drain", node, with("--drain-grace=-1s"), []string{"--drain-grace=-1s"}},
		{"admin port range", node, with("--admin-server-port=-1"), []string{"--admin-server-port=-1"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := parse(t, tc.env, tc.args...)
			clitest.WantErrors(t, o.Validate(), tc.want)
		})
	}
}

func TestIdentifiersMergeEnvironment(t *testing.T) {
	env := map[string]string{
		"NODE_NAME": "EDGE-1",                        // same node as the flag's host: not added twice
		"NODE_IP":   "10.0.0.5",                      // already in the flag
		"HOST_IP":   "::ffff:10.0.0.7",               // IPv4-mapped: an IPv4 address
		"NODE_IPS":  " 10.0.0.6 , fd00::6,,10.0.0.6", // spaces, empty item, duplicate
	}
	o, _ := parse(t, env, "--agent-identifiers=host=edge-1&ipv4=10.0.0.5&cidr=192.168.0.0/24")
	ids, err := o.identifiers()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ids.Hosts, []string{"edge-1"}) {
		t.Errorf("Hosts = %q", ids.Hosts)
	}
	wantV4 := []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("10.0.0.6")}
	if !slices.Equal(ids.IPv4, wantV4) {
		t.Errorf("IPv4 = %v, want %v", ids.IPv4, wantV4)
	}
	if !slices.Equal(ids.IPv6, []netip.Addr{netip.MustParseAddr("fd00::6")}) {
		t.Errorf("IPv6 = %v", ids.IPv6)
	}
	if len(ids.CIDRs) != 1 {
		t.Errorf("CIDRs from the flag lost: %v", ids.CIDRs)
	}

	o, _ = parse(t, map[string]string{"NODE_NAME": "edge-2"})
	ids, err = o.identifiers()
	if err != nil || !slices.Equal(ids.Hosts, []string{"edge-2"}) {
		t.Errorf("NODE_NAME alone: %+v, %v", ids, err)
	}
}

func TestAgentID(t *testing.T) {
	o, _ := parse(t, map[string]string{"NODE_NAME": "edge-1"}, "--agent-id=custom")
	if id, _ := o.agentID(); id != "custom" {
		t.Errorf("--agent-id: %q", id)
	}
	o, _ = parse(t, map[string]string{"NODE_NAME": "edge-1"})
	if id, _ := o.agentID(); id != "edge-1" {
		t.Errorf("NODE_NAME: %q", id)
	}
	o, _ = parse(t, nil)
	if id, _ := o.agentID(); id != "edge-host" {
		t.Errorf("hostname: %q", id)
	}
	o.hostname = func() (string, error) { return "", errors.New("uname failed") }
	if _, err := o.agentID(); err == nil || !strings.Contains(err.Error(), "set --agent-id") {
		t.Errorf("no name at all: err = %v", err)
	}
}

func TestConfig(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	ca, cert, key := p.CA(), p.Cert("leaf"), p.Key("leaf")
	env := map[string]string{"NODE_NAME": "edge-1", "NODE_IP": "10.0.0.5"}
	o, _ := parse(t, env,
		"--proxy-server-host=127.0.0.1", "--proxy-server-port=9443",
		"--ca-cert="+ca, "--agent-cert="+cert, "--agent-key="+key,
		"--allowed-cidrs=10.96.0.0/12, fd00:96::/108",
		"--health-bind-address=0.0.0.0", "--admin-server-port=0",
		"--sync-interval=2s", "--sync-interval-cap=20s", "--keepalive-time=1m", "--dial-timeout=3s",
		"--drain-grace=0s", "--conn-streams=false",
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
		{"ServerAddr", cfg.ServerAddr, "127.0.0.1:9443"},
		{"AgentID", cfg.AgentID, "edge-1"},
		{"Identifiers", cfg.Identifiers.String(), "host=edge-1&ipv4=10.0.0.5"},
		{"len(AllowedCIDRs)", len(cfg.AllowedCIDRs), 2},
		{"HealthAddr", cfg.HealthAddr, "0.0.0.0:8093"},
		{"AdminAddr", cfg.AdminAddr, ""},
		{"SyncInterval", cfg.SyncInterval, 2 * time.Second},
		{"SyncIntervalCap", cfg.SyncIntervalCap, 20 * time.Second},
		{"KeepaliveTime", cfg.KeepaliveTime, time.Minute},
		{"DialTimeout", cfg.DialTimeout, 3 * time.Second},
		{"DrainGrace", cfg.DrainGrace, time.Duration(0)},
		{"ConnStreams", cfg.ConnStreams, false},
		{"Mux (off with --conn-streams=false)", cfg.Mux, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if len(cfg.AllowedCIDRs) == 2 && (cfg.AllowedCIDRs[0].String() != "10.96.0.0/12" || cfg.AllowedCIDRs[1].String() != "fd00:96::/108") {
		t.Errorf("AllowedCIDRs = %v", cfg.AllowedCIDRs)
	}

	// The client config presents the agent certificate and verifies the
	// server against --ca-cert under the name --proxy-server-host.
	srv := clitest.ServerTLS(t, ca, cert, key)
	if err := clitest.Handshake(t, srv, cfg.TLS); err != nil {
		t.Errorf("handshake with the server failed: %v", err)
	}

	// --server-name overrides the name checked; a wrong one must fail.
	o, _ = parse(t, env, "--proxy-server-host=127.0.0.1", "--server-name=other.example",
		"--ca-cert="+ca, "--agent-cert="+cert, "--agent-key="+key)
	cfg, err = o.Config()
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	if err := clitest.Handshake(t, srv, cfg.TLS); err == nil {
		t.Errorf("handshake succeeded although the server certificate does not carry --server-name")
	}
}

func TestConfigIPv6Server(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	ca, cert, key := p.CA(), p.Cert("leaf"), p.Key("leaf")
	o, _ := parse(t, map[string]string{"NODE_NAME": "edge-1"},
		"--proxy-server-host=[fd00::1]", "--ca-cert="+ca, "--agent-cert="+cert, "--agent-key="+key)
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ServerAddr != "[fd00::1]:8091" {
		t.Errorf("ServerAddr = %q", cfg.ServerAddr)
	}
}

func TestConfigNamesFlagsOfUnreadableFiles(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	o, _ := parse(t, map[string]string{"NODE_NAME": "edge-1"},
		"--proxy-server-host=h", "--ca-cert="+p.Path("missing.pem"), "--agent-cert="+p.Cert("leaf"), "--agent-key="+p.Key("leaf"))
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "--ca-cert") {
		t.Errorf("err = %v, want it to name --ca-cert", err)
	}
}

// TestConfigToken: with --service-account-token-path and no client
// certificate, the config verifies the server but presents no certificate,
// and names the token file; a missing or empty file fails at start.
func TestConfigToken(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	ca, cert, key := p.CA(), p.Cert("leaf"), p.Key("leaf")
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("header.payload.signature\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"NODE_NAME": "edge-1"}
	o, _ := parse(t, env, "--proxy-server-host=127.0.0.1", "--ca-cert="+ca, "--service-account-token-path="+token)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatalf("Validate: %v", errors.Join(errs...))
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatalf("Config: %v", err)
	}
	if cfg.TokenFile != token {
		t.Errorf("TokenFile = %q, want %q", cfg.TokenFile, token)
	}
	if cfg.TLS.GetClientCertificate != nil || len(cfg.TLS.Certificates) != 0 {
		t.Errorf("the TLS config has a client certificate without --agent-cert")
	}
	srv := clitest.ServerTLS(t, ca, cert, key)
	srv.ClientAuth = tls.VerifyClientCertIfGiven
	if err := clitest.Handshake(t, srv, cfg.TLS); err != nil {
		t.Errorf("handshake with the server failed: %v", err)
	}

	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	for path, want := range map[string]string{
		filepath.Join(t.TempDir(), "missing"): "no such file",
		empty:                                 "is empty",
	} {
		o, _ := parse(t, env, "--proxy-server-host=127.0.0.1", "--ca-cert="+ca, "--service-account-token-path="+path)
		if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "--service-account-token-path") || !strings.Contains(err.Error(), want) {
			t.Errorf("token file %s: err = %v, want it to name the flag and say %q", path, err, want)
		}
	}
}

func TestCountServerLeases(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	base := []string{"--proxy-server-host=127.0.0.1", "--ca-cert=" + p.CA(), "--agent-cert=" + p.Cert("leaf"), "--agent-key=" + p.Key("leaf")}
	env := map[string]string{"NODE_NAME": "edge-1", "NODE_IP": "10.0.0.5"}

	o, _ := parse(t, env, base...)
	if o.CountServerLeases || o.LeaseNamespace != "kube-system" ||
		o.LeaseLabelSelector != "app.kubernetes.io/component=replica-lease,app.kubernetes.io/name=edge-tunnel-server" {
		t.Errorf("defaults: %v %q %q", o.CountServerLeases, o.LeaseNamespace, o.LeaseLabelSelector)
	}
	cfg, err := o.Config()
	if err != nil || cfg.ServerCounter != nil {
		t.Errorf("Config without --count-server-leases: counter %v, %v; want none", cfg.ServerCounter, err)
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kubeconfig=/k"}, "--kubeconfig is only used with --count-server-leases"},
		{[]string{"--count-server-leases", "--lease-label-selector=app in (a"}, `--lease-label-selector="app in (a": not a label selector`},
		{[]string{"--count-server-leases", "--lease-namespace="}, "--lease-namespace is empty"},
	} {
		o, _ := parse(t, env, append(base, tc.args...)...)
		if err := errors.Join(o.Validate()...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%v) = %v, want an error saying %q", tc.args, err, tc.want)
		}
	}

	// No API to count with: a clear refusal at start, not a silent
	// fallback.
	o, _ = parse(t, env, append(base, "--count-server-leases")...)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatalf("Validate: %v", errors.Join(errs...))
	}
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "the agent has no API access: pass --kubeconfig") {
		t.Errorf("Config with no API access = %v", err)
	}

	// A kubeconfig: the watcher is built (it reaches the API only when
	// the agent runs).
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	o, _ = parse(t, env, append(base, "--count-server-leases", "--kubeconfig="+kc, "--lease-namespace=edge")...)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatalf("Validate: %v", errors.Join(errs...))
	}
	if cfg, err := o.Config(); err != nil || cfg.ServerCounter == nil {
		t.Errorf("Config with --kubeconfig: counter %v, %v; want one", cfg.ServerCounter, err)
	}
	o, _ = parse(t, env, append(base, "--count-server-leases", "--kubeconfig="+kc+".missing")...)
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "--count-server-leases: --kubeconfig "+kc+".missing") {
		t.Errorf("Config with a missing kubeconfig = %v", err)
	}
}
