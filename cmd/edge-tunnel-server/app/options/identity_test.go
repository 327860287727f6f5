package options

import (
	"crypto/tls"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// TestAgentIdentity: which binding --agent-identity and --cluster-ca-cert
// give, whether Node lookups are on, and the warnings.
func TestAgentIdentity(t *testing.T) {
	api := newFakeAPIServer(t)
	kc := writeKubeconfig(t, api.Server)
	p := clitest.WritePKI(t, "leaf")
	ca := "--cluster-ca-cert=" + p.CA()
	tokenFlags := []string{"--authentication-audience=edge-tunnel", "--agent-namespace=kube-system", "--agent-service-account=edge-tunnel-agent"}
	with := func(args ...string) []string { return append(append([]string{}, tokenFlags...), args...) }
	for _, tc := range []struct {
		name      string
		args      []string
		want      string // "" (no check), or the methods, with "+nodes" for Node lookups
		networks  bool
		wantWarn  string
		wantNoArg bool
	}{
		{name: "no CA: not checked", want: "", wantWarn: "--cluster-ca-cert is not set"},
		{name: "CA: certificate by default", args: []string{ca}, want: "certificate"},
		{name: "explicit none", args: []string{ca, "--agent-identity=none"}, want: "",
			wantWarn: "--agent-identity=none: any agent with a certificate from --cluster-ca-cert may claim any node"},
		{name: "networks allowed", args: []string{ca, "--agent-identity-allow-networks"}, want: "certificate", networks: true},
		{name: "networks with none", args: []string{ca, "--agent-identity=none", "--agent-identity-allow-networks"}, want: "",
			wantWarn: "--agent-identity-allow-networks is set but unused"},
		{name: "API access: Node lookups", args: []string{ca, "--kubeconfig=" + kc}, want: "certificate+nodes"},
		{name: "API access, port watch off: kubeconfig still used", args: []string{ca, "--kubeconfig=" + kc, "--ports-configmap="},
			want: "certificate+nodes"},
		{name: "token, no CA", args: with("--agent-identity=token", "--kubeconfig="+kc), want: "token+nodes"},
		{name: "token and a CA: both required", args: with(ca, "--agent-identity=token", "--kubeconfig="+kc), want: "token+nodes"},
		{name: "token by default with a ServiceAccount", args: with("--kubeconfig=" + kc), want: "token+nodes"},
		{name: "certificate or token by default", args: with(ca, "--kubeconfig="+kc), want: "certificate,token+nodes"},
		{name: "token flags unused", args: with(ca, "--agent-identity=certificate"), want: "certificate",
			wantWarn: "--authentication-audience/--agent-namespace/--agent-service-account are set but unused because --agent-identity=certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := parse(t, append(baseArgs(t), tc.args...)...)
			if errs := o.Validate(); len(errs) != 0 {
				t.Fatal(errors.Join(errs...))
			}
			warnings := strings.Join(o.Warnings(), "\n")
			if tc.wantWarn != "" && !strings.Contains(warnings, tc.wantWarn) {
				t.Errorf("warnings lack %q:\n%s", tc.wantWarn, warnings)
			}
			if tc.wantWarn == "" && strings.Contains(warnings, "agent-identity") {
				t.Errorf("unexpected warning:\n%s", warnings)
			}
			cfg, err := o.Config()
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if b := cfg.AgentIdentity; b != nil {
				switch {
				case b.Tokens == nil:
					got = "certificate"
				case b.RequireToken:
					got = "token"
				default:
					got = "certificate,token"
				}
				if b.Tokens != nil && (b.Tokens.Audience != "edge-tunnel" || b.Tokens.Namespace != "kube-system" || b.Tokens.ServiceAccount != "edge-tunnel-agent" || b.Tokens.Client == nil) {
					t.Errorf("token reviewer %+v does not match the flags", b.Tokens)
				}
				if _, ok := b.Nodes.(*agentauth.KubeNodes); ok {
					got += "+nodes"
				}
				if b.AllowNetworks != tc.networks {
					t.Errorf("AllowNetworks = %v, want %v", b.AllowNetworks, tc.networks)
				}
			}
			if got != tc.want {
				t.Errorf("agent identity %q, want %q", got, tc.want)
			}
			// A certificate is optional on the handshake only when a
			// token may replace it.
			wantAuth := tls.RequireAnyClientCert
			switch {
			case tc.want == "certificate,token+nodes":
				wantAuth = tls.RequestClientCert
			case !slices.Contains(tc.args, ca):
				wantAuth = tls.NoClientCert
			}
			if cfg.AgentTLS.ClientAuth != wantAuth {
				t.Errorf("agent port ClientAuth = %v, want %v", cfg.AgentTLS.ClientAuth, wantAuth)
			}
		})
	}
}

// TestAgentIdentityTokenNeedsAPI: token mode without API access fails at
// start, saying how to give it access.
func TestAgentIdentityTokenNeedsAPI(t *testing.T) {
	o, _ := parse(t, append(baseArgs(t), "--agent-identity=token", "--authentication-audience=edge-tunnel",
		"--agent-namespace=kube-system", "--agent-service-account=edge-tunnel-agent")...)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatal(errors.Join(errs...))
	}
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "the server has no API access: pass --kubeconfig") {
		t.Fatalf("Config: %v, want an error about API access", err)
	}
}

// TestOptionalClientCert: with certificate,token, a client without a
// certificate completes the handshake, one with a certificate from
// another CA does not.
func TestOptionalClientCert(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	other := clitest.WritePKI(t, "leaf")
	cfg, err := tlsutil.ServerConfig(p.Cert("leaf"), p.Key("leaf"), p.CA())
	if err != nil {
		t.Fatal(err)
	}
	optionalClientCert(cfg)
	noCert, err := tlsutil.ClientConfig(p.CA(), "", "", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := clitest.Handshake(t, cfg, noCert); err != nil {
		t.Errorf("no client certificate: %v", err)
	}
	good, _ := tlsutil.ClientConfig(p.CA(), p.Cert("leaf"), p.Key("leaf"), "127.0.0.1")
	if err := clitest.Handshake(t, cfg, good); err != nil {
		t.Errorf("client certificate from the CA: %v", err)
	}
	bad, _ := tlsutil.ClientConfig(p.CA(), other.Cert("leaf"), other.Key("leaf"), "127.0.0.1")
	if err := clitest.Handshake(t, cfg, bad); err == nil {
		t.Errorf("client certificate from another CA was accepted")
	}
}
