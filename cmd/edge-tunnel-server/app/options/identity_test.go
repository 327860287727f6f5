package options

import (
	"errors"
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
)

// TestAgentIdentity: which binding --agent-identity and --cluster-ca-cert
// give, whether Node lookups are on, and the warnings.
func TestAgentIdentity(t *testing.T) {
	api := newFakeAPIServer(t)
	kc := writeKubeconfig(t, api.Server)
	p := clitest.WritePKI(t, "leaf")
	ca := "--cluster-ca-cert=" + p.CA()
	for _, tc := range []struct {
		name      string
		args      []string
		want      string // "" (no check), "certificate" or "certificate+nodes"
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
				got = "certificate"
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
		})
	}
}
