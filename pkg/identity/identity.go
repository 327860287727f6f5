// Package identity parses and prints the identifiers an agent announces for its
// node: upstream konnectivity's "agentIdentifiers" gRPC metadata, a URL query
// such as
//
//	host=node-1&ipv4=10.0.0.5&ipv6=fd00::5&cidr=10.0.0.0/24&default-route=true
//
// Keys may repeat. Unknown keys are ignored so that newer agents can add keys
// without breaking older servers.
package identity

import (
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Query keys of the agentIdentifiers format.
const (
	keyHost         = "host"
	keyIPv4         = "ipv4"
	keyIPv6         = "ipv6"
	keyCIDR         = "cidr"
	keyDefaultRoute = "default-route"
)

// maxHostLen is the longest DNS name (RFC 1123) and Kubernetes node name.
const maxHostLen = 253

// Identifiers are the names and addresses an agent serves. The router sends a
// dial for a destination host to the agents whose identifiers match it.
type Identifiers struct {
	// Hosts are node names or DNS names, as the agent gave them.
	Hosts []string
	// IPv4 are 4-byte addresses; IPv6 are 16-byte, never IPv4-mapped.
	IPv4 []netip.Addr
	IPv6 []netip.Addr
	// CIDRs are networks the agent can reach.
	CIDRs []netip.Prefix
	// DefaultRoute marks an agent that takes dials nobody else matches.
	DefaultRoute bool
}

// Parse reads the agentIdentifiers format. An empty string gives empty
// Identifiers. The error names the first bad item.
func Parse(s string) (Identifiers, error) {
	var id Identifiers
	if strings.TrimSpace(s) == "" {
		return id, nil
	}
	q, err := url.ParseQuery(s)
	if err != nil {
		return Identifiers{}, fmt.Errorf("agent identifiers %q: not a URL query (want host=NAME&ipv4=ADDR&...): %w", s, err)
	}
	for _, h := range q[keyHost] {
		if err := validateHost(h); err != nil {
			return Identifiers{}, fmt.Errorf("host %q: %w", h, err)
		}
		id.Hosts = append(id.Hosts, h)
	}
	for _, v := range q[keyIPv4] {
		a, err := netip.ParseAddr(v)
		if err != nil || !a.Is4() {
			return Identifiers{}, fmt.Errorf("ipv4 %q: not an IPv4 address", v)
		}
		id.IPv4 = append(id.IPv4, a)
	}
	for _, v := range q[keyIPv6] {
		a, err := netip.ParseAddr(v)
		switch {
		case err != nil || !a.Is6():
			return Identifiers{}, fmt.Errorf("ipv6 %q: not an IPv6 address", v)
		case a.Is4In6():
			return Identifiers{}, fmt.Errorf("ipv6 %q: an IPv4-mapped address; list it as ipv4=%s instead", v, a.Unmap())
		case a.Zone() != "":
			return Identifiers{}, fmt.Errorf("ipv6 %q: zoned addresses are not supported; drop the %%zone", v)
		}
		id.IPv6 = append(id.IPv6, a)
	}
	for _, v := range q[keyCIDR] {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return Identifiers{}, fmt.Errorf("cidr %q: not a network in ADDR/BITS form: %w", v, err)
		}
		id.CIDRs = append(id.CIDRs, p)
	}
	for _, v := range q[keyDefaultRoute] {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return Identifiers{}, fmt.Errorf("default-route %q: want true or false", v)
		}
		id.DefaultRoute = id.DefaultRoute || b
	}
	return id, nil
}

// validateHost accepts DNS-1123-style names: letters, digits, '-' and '.',
// labels of 1 to 63 characters that neither start nor end with '-', at most
// 253 characters in all. One trailing dot (a fully qualified name) is allowed.
func validateHost(h string) error {
	if h == "" {
		return fmt.Errorf("empty name")
	}
	name := strings.TrimSuffix(h, ".")
	if len(name) > maxHostLen {
		return fmt.Errorf("longer than %d characters", maxHostLen)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return fmt.Errorf("empty label (two dots in a row, or a leading dot)")
		}
		if len(label) > 63 {
			return fmt.Errorf("label %q longer than 63 characters", label)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("character %q not allowed (use letters, digits, '-' and '.')", c)
			}
		}
	}
	return nil
}

// String encodes id in the agentIdentifiers format, keys in the order host,
// ipv4, ipv6, cidr, default-route. Parse(id.String()) gives id back.
func (id Identifiers) String() string {
	var parts []string
	add := func(k, v string) { parts = append(parts, k+"="+url.QueryEscape(v)) }
	for _, h := range id.Hosts {
		add(keyHost, h)
	}
	for _, a := range id.IPv4 {
		add(keyIPv4, a.String())
	}
	for _, a := range id.IPv6 {
		add(keyIPv6, a.String())
	}
	for _, p := range id.CIDRs {
		add(keyCIDR, p.String())
	}
	if id.DefaultRoute {
		add(keyDefaultRoute, "true")
	}
	return strings.Join(parts, "&")
}

// Keys are the exact-match lookup keys a router indexes the agent under: each
// host through NormalizeHost and each address in its canonical form, without
// duplicates, in the order of String. CIDRs and DefaultRoute are not keys;
// they need a prefix or fallback lookup.
func (id Identifiers) Keys() []string {
	seen := make(map[string]bool)
	var keys []string
	add := func(k string) {
		if k != "" && !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	for _, h := range id.Hosts {
		add(NormalizeHost(h))
	}
	for _, a := range id.Addrs() {
		add(a.Unmap().String())
	}
	return keys
}

// NormalizeHost gives the canonical form of a requested host so that it can
// be compared with Keys: brackets around an IPv6 literal are removed, an IP
// is printed the netip way (IPv4-mapped IPv6 becomes IPv4), and a name is
// lowercased with any trailing dot removed. It does not split off a port.
func NormalizeHost(host string) string {
	h := strings.TrimSpace(host)
	if len(h) >= 2 && h[0] == '[' && h[len(h)-1] == ']' {
		if a, err := netip.ParseAddr(h[1 : len(h)-1]); err == nil && a.Is6() {
			return a.Unmap().String()
		}
	}
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap().String()
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// Addrs returns the IPv4 and then the IPv6 addresses.
func (id Identifiers) Addrs() []netip.Addr {
	out := make([]netip.Addr, 0, len(id.IPv4)+len(id.IPv6))
	out = append(out, id.IPv4...)
	return append(out, id.IPv6...)
}

// IsEmpty reports whether id names nothing at all, so no dial can be routed
// to the agent.
func (id Identifiers) IsEmpty() bool {
	return len(id.Hosts) == 0 && len(id.IPv4) == 0 && len(id.IPv6) == 0 &&
		len(id.CIDRs) == 0 && !id.DefaultRoute
}
