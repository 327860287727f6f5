package agentauth

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

func cert(cn string, sans ...string) *x509.Certificate {
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
	for _, s := range sans {
		if ip := net.ParseIP(s); ip != nil {
			c.IPAddresses = append(c.IPAddresses, ip)
		} else {
			c.DNSNames = append(c.DNSNames, s)
		}
	}
	return c
}

// staticNodes answers from a map; a name mapped to nil is an unknown node.
type staticNodes struct {
	nodes map[string][]netip.Addr
	err   error
	asked []string
}

func (s *staticNodes) NodeAddresses(_ context.Context, name string) ([]netip.Addr, bool, error) {
	s.asked = append(s.asked, name)
	if s.err != nil {
		return nil, false, s.err
	}
	a, ok := s.nodes[name]
	return a, ok, nil
}

func TestCheck(t *testing.T) {
	nodes := &staticNodes{nodes: map[string][]netip.Addr{
		"edge-a": {netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::a")},
		"edge-b": {netip.MustParseAddr("192.0.2.20")},
	}}
	cases := []struct {
		name    string
		binder  Binder
		cert    *x509.Certificate
		agentID string
		ids     string
		reason  string   // "" means accepted
		inMsg   []string // substrings of the refusal message
	}{
		{name: "CN form", cert: cert("system:node:edge-a"), agentID: "edge-a", ids: "host=edge-a"},
		{name: "CN form wins over SANs", cert: cert("system:node:edge-a", "edge-b"), agentID: "edge-b",
			reason: ReasonHost, inMsg: []string{"certificate proves node(s) [edge-a]", "agent claims host edge-b"}},
		{name: "SAN form", cert: cert("some-agent", "edge-a", "edge-a.example.com"), agentID: "edge-a",
			ids: "host=edge-a.example.com"},
		{name: "wrong agent ID", cert: cert("system:node:edge-a"), agentID: "edge-b", ids: "host=edge-a",
			reason: ReasonHost, inMsg: []string{"[edge-a]", "agent claims host edge-b"}},
		{name: "wrong host identifier", cert: cert("system:node:edge-a"), agentID: "edge-a", ids: "host=edge-a&host=edge-b",
			reason: ReasonHost, inMsg: []string{"[edge-a]", "host edge-b"}},
		{name: "upper case and trailing dot", cert: cert("system:node:Edge-A"), agentID: "EDGE-A", ids: "host=edge-a."},
		{name: "upper case SAN", cert: cert("x", "EDGE-A.Example.COM."), agentID: "edge-a.example.com"},
		{name: "no node name", cert: cert("agent"), agentID: "edge-a",
			reason: ReasonNoNodeName, inMsg: []string{"system:node:NAME", "agent ID edge-a"}},
		{name: "empty system:node name", cert: cert("system:node:"), agentID: "edge-a", reason: ReasonNoNodeName},
		{name: "no certificate", agentID: "edge-a", reason: ReasonNoCertificate},
		{name: "IP in SAN", cert: cert("system:node:edge-a", "192.0.2.10", "2001:db8::a"), agentID: "edge-a",
			ids: "host=edge-a&ipv4=192.0.2.10&ipv6=2001:db8::a"},
		{name: "IP not in SAN, no API", cert: cert("system:node:edge-a", "192.0.2.10"), agentID: "edge-a",
			ids: "ipv4=192.0.2.20", reason: ReasonAddress,
			inMsg: []string{"[edge-a, 192.0.2.10]", "agent claims address 192.0.2.20", "no API access"}},
		{name: "IP of the Node", binder: Binder{Nodes: nodes}, cert: cert("system:node:edge-a"), agentID: "edge-a",
			ids: "ipv4=192.0.2.10&ipv6=2001:db8::a"},
		{name: "IP of another Node", binder: Binder{Nodes: nodes}, cert: cert("system:node:edge-a"), agentID: "edge-a",
			ids: "ipv4=192.0.2.20", reason: ReasonAddress,
			inMsg: []string{"agent claims address 192.0.2.20", "Node edge-a has addresses [192.0.2.10, 2001:db8::a]"}},
		{name: "no such Node", binder: Binder{Nodes: nodes}, cert: cert("system:node:edge-c"), agentID: "edge-c",
			ids: "ipv4=192.0.2.30", reason: ReasonAddress, inMsg: []string{"no Node edge-c"}},
		{name: "cidr refused", cert: cert("system:node:edge-a"), agentID: "edge-a", ids: "cidr=10.0.0.0/8",
			reason: ReasonNetwork, inMsg: []string{"cidr 10.0.0.0/8", "--agent-identity-allow-networks"}},
		{name: "default route refused", cert: cert("system:node:edge-a"), agentID: "edge-a", ids: "default-route=true",
			reason: ReasonNetwork, inMsg: []string{"default route"}},
		{name: "cidr allowed", binder: Binder{AllowNetworks: true}, cert: cert("system:node:edge-a"), agentID: "edge-a",
			ids: "cidr=10.0.0.0/8&default-route=true"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := identity.Parse(tc.ids)
			if err != nil {
				t.Fatal(err)
			}
			err = tc.binder.Check(context.Background(), Credentials{Certificate: tc.cert}, tc.agentID, ids)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var r *Refusal
			if !errors.As(err, &r) {
				t.Fatalf("got %v, want a refusal with reason %s", err, tc.reason)
			}
			if r.Reason != tc.reason {
				t.Errorf("reason %s, want %s (%v)", r.Reason, tc.reason, err)
			}
			for _, s := range tc.inMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not contain %q", err, s)
				}
			}
		})
	}
}

// TestCheckLookupError: when the API cannot answer, the agent is refused
// with an error that is not a Refusal (the server says "try again").
func TestCheckLookupError(t *testing.T) {
	nodes := &staticNodes{err: errors.New("connection refused")}
	b := Binder{Nodes: nodes}
	ids, _ := identity.Parse("ipv4=192.0.2.10")
	err := b.Check(context.Background(), Credentials{Certificate: cert("system:node:edge-a")}, "edge-a", ids)
	var r *Refusal
	var le *LookupError
	if err == nil || errors.As(err, &r) || !errors.As(err, &le) || le.Reason != ReasonNodeLookup || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("got %v, want a LookupError (%s) with the lookup error", err, ReasonNodeLookup)
	}
	// An address proven by the certificate needs no lookup.
	nodes.asked = nil
	if err := b.Check(context.Background(), Credentials{Certificate: cert("system:node:edge-a", "192.0.2.10")}, "edge-a", ids); err != nil || len(nodes.asked) != 0 {
		t.Fatalf("got %v after %d lookups, want no error and no lookup", err, len(nodes.asked))
	}
}

func TestNodeNames(t *testing.T) {
	for _, tc := range []struct {
		cert *x509.Certificate
		want string
	}{
		{cert("system:node:Edge-1"), "edge-1"},
		{cert("system:node:edge-1", "other"), "edge-1"},
		{cert("cn", "a.example.", "A.example", "b"), "a.example,b"},
		{cert("system:nodes"), ""},
		{nil, ""},
	} {
		if got := strings.Join(NodeNames(tc.cert), ","); got != tc.want {
			t.Errorf("NodeNames(%v) = %q, want %q", tc.cert, got, tc.want)
		}
	}
}
