package identity

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Identifiers
	}{
		{"empty", "", Identifiers{}},
		{"blank", "  ", Identifiers{}},
		{"one host", "host=node-1", Identifiers{Hosts: []string{"node-1"}}},
		{
			"everything",
			"host=node-1&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.0.0.0/24&default-route=true",
			Identifiers{
				Hosts:        []string{"node-1"},
				IPv4:         addrs("10.0.0.5"),
				IPv6:         addrs("fd00::5"),
				CIDRs:        prefixes("10.0.0.0/24"),
				DefaultRoute: true,
			},
		},
		{
			"repeated keys keep order",
			"host=a&ipv4=10.0.0.1&host=b.example.com&ipv4=10.0.0.2&cidr=fd00::/64&cidr=192.168.0.0/16",
			Identifiers{
				Hosts: []string{"a", "b.example.com"},
				IPv4:  addrs("10.0.0.1", "10.0.0.2"),
				CIDRs: prefixes("fd00::/64", "192.168.0.0/16"),
			},
		},
		{"unknown keys ignored", "zone=eu&host=n1&foo", Identifiers{Hosts: []string{"n1"}}},
		{"escaped ipv6", "ipv6=fd00%3A%3A1", Identifiers{IPv6: addrs("fd00::1")}},
		{"uppercase host kept", "host=Node-1.Example.COM.", Identifiers{Hosts: []string{"Node-1.Example.COM."}}},
		{"host that is an IP literal", "host=10.1.2.3", Identifiers{Hosts: []string{"10.1.2.3"}}},
		{"default-route false", "default-route=false", Identifiers{}},
		{"default-route 1", "default-route=1", Identifiers{DefaultRoute: true}},
		{"cidr host bits kept", "cidr=10.0.0.7/24", Identifiers{CIDRs: prefixes("10.0.0.7/24")}},
		{"63-char label", "host=" + strings.Repeat("a", 63), Identifiers{Hosts: []string{strings.Repeat("a", 63)}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	long := strings.Repeat(strings.Repeat("a", 60)+".", 5) // 305 characters
	tests := []struct {
		name, in, wantErr string
	}{
		{"bad ipv4", "ipv4=1.2.3", `ipv4 "1.2.3": not an IPv4 address`},
		{"ipv6 in ipv4", "ipv4=fd00::1", `ipv4 "fd00::1": not an IPv4 address`},
		{"mapped in ipv4", "ipv4=::ffff:10.0.0.1", `ipv4 "::ffff:10.0.0.1": not an IPv4 address`},
		{"empty ipv4", "ipv4=", `ipv4 "": not an IPv4 address`},
		{"bad ipv6", "ipv6=fd00:::1", `ipv6 "fd00:::1": not an IPv6 address`},
		{"ipv4 in ipv6", "ipv6=10.0.0.1", `ipv6 "10.0.0.1": not an IPv6 address`},
		{"mapped ipv6", "ipv6=::ffff:10.0.0.1", `ipv6 "::ffff:10.0.0.1": an IPv4-mapped address; list it as ipv4=10.0.0.1 instead`},
		{"zoned ipv6", "ipv6=fe80::1%25eth0", `ipv6 "fe80::1%eth0": zoned addresses are not supported`},
		{"bad cidr", "cidr=10.0.0.0", `cidr "10.0.0.0": not a network`},
		{"cidr bits", "cidr=10.0.0.0/33", `cidr "10.0.0.0/33": not a network`},
		{"empty host", "host=", `host "": empty name`},
		{"underscore", "host=node_1", `host "node_1": character '_' not allowed`},
		{"space", "host=node+1", `host "node 1": character ' ' not allowed`},
		{"slash", "host=a%2Fb", `host "a/b": character '/' not allowed`},
		{"leading dash", "host=-node", `host "-node": label "-node" starts or ends with '-'`},
		{"trailing dash label", "host=node-.example", `label "node-" starts or ends with '-'`},
		{"double dot", "host=a..b", `host "a..b": empty label`},
		{"leading dot", "host=.a", `host ".a": empty label`},
		{"long label", "host=" + strings.Repeat("a", 64), `longer than 63 characters`},
		{"too long", "host=" + long, `longer than 253 characters`},
		{"bad default-route", "default-route=yes", `default-route "yes": want true or false`},
		{"bad escape", "host=%zz", `not a URL query`},
		{"good then bad", "host=ok&ipv4=300.1.1.1", `ipv4 "300.1.1.1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error containing %q", tt.in, got, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse(%q) error = %q, want it to contain %q", tt.in, err, tt.wantErr)
			}
			if !got.IsEmpty() {
				t.Fatalf("Parse(%q) returned %+v together with an error", tt.in, got)
			}
		})
	}
}

func TestStringRoundTrip(t *testing.T) {
	for _, in := range []string{
		"",
		"host=node-1",
		"host=node-1&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.0.0.0/24&default-route=true",
		"cidr=fd00::/64&host=b&ipv6=2001:db8::1&host=a&ipv4=192.168.1.1&ipv4=10.0.0.1",
		"default-route=true",
		"host=Node.Example.",
	} {
		id, err := Parse(in)
		if err != nil {
			t.Fatalf("Parse(%q): %v", in, err)
		}
		s := id.String()
		back, err := Parse(s)
		if err != nil {
			t.Fatalf("Parse(String() = %q): %v", s, err)
		}
		if !reflect.DeepEqual(back, id) {
			t.Fatalf("round trip of %q through %q: got %+v, want %+v", in, s, back, id)
		}
		if s2 := back.String(); s2 != s {
			t.Fatalf("String not stable: %q then %q", s, s2)
		}
	}
}

func TestStringOrder(t *testing.T) {
	id := Identifiers{
		Hosts:        []string{"n1"},
		IPv4:         addrs("10.0.0.5"),
		IPv6:         addrs("fd00::5"),
		CIDRs:        prefixes("10.0.0.0/24"),
		DefaultRoute: true,
	}
	want := "host=n1&ipv4=10.0.0.5&ipv6=fd00%3A%3A5&cidr=10.0.0.0%2F24&default-route=true"
	if got := id.String(); got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
	if got := (Identifiers{}).String(); got != "" {
		t.Fatalf("empty String() = %q, want \"\"", got)
	}
}

func TestKeys(t *testing.T) {
	id, err := Parse("host=Node-1.&host=node-1&host=10.0.0.5&ipv4=10.0.0.5&ipv6=FD00:0:0::5&cidr=10.0.0.0/8&default-route=true")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"node-1", "10.0.0.5", "fd00::5"}
	if got := id.Keys(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Keys() = %q, want %q", got, want)
	}
	if got := (Identifiers{}).Keys(); len(got) != 0 {
		t.Fatalf("empty Keys() = %q", got)
	}
	// Every key must be a fixed point of NormalizeHost, so that a router
	// lookup of NormalizeHost(requested) finds it.
	for _, k := range id.Keys() {
		if NormalizeHost(k) != k {
			t.Errorf("key %q is not normalized (NormalizeHost gives %q)", k, NormalizeHost(k))
		}
	}
}

func TestNormalizeHost(t *testing.T) {
	tests := []struct{ in, want string }{
		{"node-1", "node-1"},
		{"Node-1.Example.COM.", "node-1.example.com"},
		{"[fd00::1]", "fd00::1"},
		{"[FD00:0000::0001]", "fd00::1"},
		{"fd00:0::1", "fd00::1"},
		{"::ffff:10.0.0.1", "10.0.0.1"},
		{"[::ffff:10.0.0.1]", "10.0.0.1"},
		{"10.0.0.1", "10.0.0.1"},
		{" 10.0.0.1 ", "10.0.0.1"},
		{"", ""},
		{"[", "["},
		{"[node]", "[node]"},
		{"[10.0.0.1]", "[10.0.0.1]"},
	}
	for _, tt := range tests {
		if got := NormalizeHost(tt.in); got != tt.want {
			t.Errorf("NormalizeHost(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestAddrsAndIsEmpty(t *testing.T) {
	id := Identifiers{IPv4: addrs("10.0.0.1"), IPv6: addrs("fd00::1")}
	if got, want := id.Addrs(), addrs("10.0.0.1", "fd00::1"); !reflect.DeepEqual(got, want) {
		t.Fatalf("Addrs() = %v, want %v", got, want)
	}
	if len((Identifiers{}).Addrs()) != 0 {
		t.Fatal("Addrs of empty identifiers is not empty")
	}
	for _, tt := range []struct {
		id   Identifiers
		want bool
	}{
		{Identifiers{}, true},
		{Identifiers{Hosts: []string{"a"}}, false},
		{Identifiers{IPv4: addrs("10.0.0.1")}, false},
		{Identifiers{IPv6: addrs("fd00::1")}, false},
		{Identifiers{CIDRs: prefixes("10.0.0.0/8")}, false},
		{Identifiers{DefaultRoute: true}, false},
	} {
		if got := tt.id.IsEmpty(); got != tt.want {
			t.Errorf("%+v.IsEmpty() = %v, want %v", tt.id, got, tt.want)
		}
	}
}
