package identity

import (
	"reflect"
	"strings"
	"testing"
)

// FuzzParse checks Parse on any agentIdentifiers metadata an agent (or
// anything posing as one) may send:
//   - an error names what was wrong: the item's key, or the whole value
//     when it is not a URL query;
//   - what parses round-trips: Parse(id.String()) gives id back, and
//     String is then stable;
//   - what it accepts is what the router may index: hosts are valid
//     DNS-1123 names, IPv4 are 4-byte, IPv6 neither mapped nor zoned, and
//     Keys has no duplicates.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			msg := err.Error()
			known := false
			for _, k := range []string{"agent identifiers ", keyHost + " ", keyIPv4 + " ", keyIPv6 + " ", keyCIDR + " ", keyDefaultRoute + " "} {
				known = known || strings.HasPrefix(msg, k)
			}
			if !known || !strings.Contains(msg, "\"") {
				t.Fatalf("Parse(%q): error %q does not quote the item and say which key it was", s, msg)
			}
			if !reflect.DeepEqual(id, Identifiers{}) {
				t.Fatalf("Parse(%q) failed but returned %+v", s, id)
			}
			return
		}
		for _, h := range id.Hosts {
			if err := validateHost(h); err != nil {
				t.Fatalf("Parse(%q) accepted host %q: %v", s, h, err)
			}
		}
		for _, a := range id.IPv4 {
			if !a.Is4() {
				t.Fatalf("Parse(%q) accepted %v as ipv4", s, a)
			}
		}
		for _, a := range id.IPv6 {
			if !a.Is6() || a.Is4In6() || a.Zone() != "" {
				t.Fatalf("Parse(%q) accepted %v as ipv6", s, a)
			}
		}
		text := id.String()
		again, err := Parse(text)
		if err != nil {
			t.Fatalf("Parse(%q) = %+v, whose String %q does not parse: %v", s, id, text, err)
		}
		if !sameIdentifiers(id, again) {
			t.Fatalf("round trip of %q: %+v, then %q, then %+v", s, id, text, again)
		}
		if again.String() != text {
			t.Fatalf("String is not stable: %q, then %q", text, again.String())
		}
		seen := map[string]bool{}
		for _, k := range id.Keys() {
			if k == "" || seen[k] {
				t.Fatalf("Keys of %q has an empty or repeated key %q: %q", s, k, id.Keys())
			}
			seen[k] = true
		}
		if id.IsEmpty() != (text == "") {
			t.Fatalf("IsEmpty %v for %+v, whose String is %q", id.IsEmpty(), id, text)
		}
	})
}

// sameIdentifiers compares two Identifiers; nil and empty lists are the
// same.
func sameIdentifiers(a, b Identifiers) bool {
	return len(a.Hosts) == len(b.Hosts) && (len(a.Hosts) == 0 || reflect.DeepEqual(a.Hosts, b.Hosts)) &&
		len(a.IPv4) == len(b.IPv4) && (len(a.IPv4) == 0 || reflect.DeepEqual(a.IPv4, b.IPv4)) &&
		len(a.IPv6) == len(b.IPv6) && (len(a.IPv6) == 0 || reflect.DeepEqual(a.IPv6, b.IPv6)) &&
		len(a.CIDRs) == len(b.CIDRs) && (len(a.CIDRs) == 0 || reflect.DeepEqual(a.CIDRs, b.CIDRs)) &&
		a.DefaultRoute == b.DefaultRoute
}
