package router

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// DefaultDirectAllow is where the server dials by itself unless told
// otherwise: loopback and the private ranges (RFC 1918, IPv6 unique local)
// that pod and Service networks are taken from. The server cannot learn the
// cluster's own ranges, so this is the widest default that still keeps the
// public internet and link-local addresses, the cloud metadata endpoint
// 169.254.169.254 among them, out of reach. Operators narrow it to their
// Service and pod CIDRs.
var DefaultDirectAllow = []string{"127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"}

// Allow is where direct dials may go: address ranges, and host names that
// are trusted whatever they resolve to. A name that is not listed is
// resolved, and only its addresses inside the ranges are dialed, so a DNS
// answer cannot lead the server elsewhere.
type Allow struct {
	prefixes []netip.Prefix
	names    []string // exact names, or suffixes starting with "."
	text     string
}

// ParseAllow reads a list of CIDRs (10.96.0.0/12), addresses (10.0.0.7),
// host names (webhook.example.com) and domain suffixes (.svc,
// *.cluster.local: every name under it). Names are compared
// case-insensitively, a trailing dot ignored.
func ParseAllow(items []string) (*Allow, error) {
	a := &Allow{}
	var shown []string
	for _, raw := range items {
		it := strings.TrimSpace(raw)
		if it == "" {
			continue
		}
		shown = append(shown, it)
		if p, err := netip.ParsePrefix(it); err == nil {
			a.prefixes = append(a.prefixes, p.Masked())
			continue
		}
		if ip, err := netip.ParseAddr(it); err == nil {
			if ip.Zone() != "" {
				return nil, fmt.Errorf("%q: an address with a zone cannot be allowed; give the address without %%%s", it, ip.Zone())
			}
			ip = ip.Unmap()
			a.prefixes = append(a.prefixes, netip.PrefixFrom(ip, ip.BitLen()))
			continue
		}
		if strings.Contains(it, "/") {
			return nil, fmt.Errorf("%q is not a CIDR: want an address range such as 10.96.0.0/12", it)
		}
		name := strings.TrimSuffix(strings.ToLower(it), ".")
		if strings.HasPrefix(name, "*.") {
			name = name[1:] // a suffix, like ".svc"
		}
		if !validName(strings.TrimPrefix(name, ".")) {
			return nil, fmt.Errorf("%q is neither a CIDR, an address nor a host name: want e.g. 10.96.0.0/12, 10.0.0.7, webhook.example.com or .svc", it)
		}
		a.names = append(a.names, name)
	}
	a.text = strings.Join(shown, ",")
	return a, nil
}

// validName accepts DNS names made of letters, digits, '-', '_' and dots.
func validName(s string) bool {
	if s == "" || len(s) > 253 || strings.Contains(s, "..") || strings.HasPrefix(s, ".") {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}

// AllowsAll reports whether a range covers every address (0.0.0.0/0, ::/0).
func (a *Allow) AllowsAll() bool {
	for _, p := range a.prefixes {
		if p.Bits() == 0 {
			return true
		}
	}
	return false
}

// String is the list as given.
func (a *Allow) String() string { return a.text }

// addr reports whether ip is inside an allowed range.
func (a *Allow) addr(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range a.prefixes {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// name reports whether the normalized host name is listed.
func (a *Allow) name(host string) bool {
	for _, n := range a.names {
		if n[0] == '.' {
			if strings.HasSuffix(host, n) {
				return true
			}
		} else if host == n {
			return true
		}
	}
	return false
}

// SetDirectAllow limits direct dials to a (nil: anywhere). refused, when
// set, is called for each dial refused by it, to count it. Call it before
// the first Route.
func (r *Router) SetDirectAllow(a *Allow, refused func()) {
	r.allow = a
	r.refused = refused
}

// checkDirect is the part of the direct-dial policy that needs no DNS: an
// address must be in a range; a name listed is dialed as it is, any other
// is resolved at dial time (resolve true).
func (r *Router) checkDirect(address, host string) (resolve bool, err error) {
	if r.allow == nil {
		return false, nil
	}
	key := identity.NormalizeHost(host)
	if ip, perr := netip.ParseAddr(key); perr == nil {
		if r.allow.addr(ip) {
			return false, nil
		}
		r.count()
		return false, tunnel.Errorf(tunnel.KindForbidden,
			"edge-tunnel-server: direct dial of %s refused: %s is outside --direct-dial-allow=%s; no edge-tunnel-agent serves that address, and the server dials by itself only into that list (add the destination there if it is a cloud service the cluster needs)",
			address, ip, r.allow)
	}
	if r.allow.name(key) {
		return false, nil
	}
	return true, nil
}

// count counts a refused direct dial.
func (r *Router) count() {
	if r.refused != nil {
		r.refused()
	}
}

// dialChecked resolves the host of address and dials its first allowed
// address that answers. Only checked addresses are dialed, so a name cannot
// be pointed elsewhere between the check and the dial.
func (r *Router) dialChecked(ctx context.Context, d *net.Dialer, address string) (io.ReadWriteCloser, error) {
	host, port, _ := net.SplitHostPort(address)
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		if ctx.Err() != nil {
			return nil, tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-server: direct dial of %s timed out resolving %q", address, host)
		}
		return nil, tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-server: direct dial of %s failed: %v", address, err)
	}
	var allowed []netip.Addr
	for _, ip := range ips {
		if r.allow.addr(ip) {
			allowed = append(allowed, ip.Unmap())
		}
	}
	if len(allowed) == 0 {
		r.count()
		return nil, tunnel.Errorf(tunnel.KindForbidden,
			"edge-tunnel-server: direct dial of %s refused: %q resolves to %s, all outside --direct-dial-allow=%s; list the name itself there if the server may dial it wherever it points",
			address, host, addrsText(ips), r.allow)
	}
	var last error
	for _, ip := range allowed {
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), port))
		if err == nil {
			return c, nil
		}
		last = err
		if ctx.Err() != nil {
			break
		}
	}
	if ctx.Err() != nil {
		return nil, tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-server: direct dial of %s timed out", address)
	}
	return nil, tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-server: direct dial of %s failed: %v", address, last)
}

func addrsText(ips []netip.Addr) string {
	s := make([]string, len(ips))
	for i, ip := range ips {
		s[i] = ip.String()
	}
	return strings.Join(s, ", ")
}
