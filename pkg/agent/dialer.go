package agent

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// dialer dials the targets the server asks for, but only on this agent's own
// node: its identifiers' addresses, loopback, and whatever the operator
// widened it to. Without that check any client of any server could use the
// agent to reach the whole edge LAN.
type dialer struct {
	allowed []netip.Prefix
	hosts   map[string]string // normalized host names of this node -> the address they mean
	any     bool              // identifiers say default-route: the agent serves everything
	net     net.Dialer
}

func newDialer(ids identity.Identifiers, extra []*net.IPNet) *dialer {
	d := &dialer{hosts: map[string]string{}, any: ids.DefaultRoute}
	d.allowed = append(d.allowed, netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128"))
	for _, a := range ids.Addrs() {
		d.allowed = append(d.allowed, netip.PrefixFrom(a, a.BitLen()))
	}
	// A dial by node name reaches the node's first address (kubelet and
	// most node services listen on all of them), or loopback if it has none.
	self := "127.0.0.1"
	if v4 := ids.IPv4; len(v4) > 0 {
		self = v4[0].String()
	} else if v6 := ids.IPv6; len(v6) > 0 {
		self = v6[0].String()
	}
	d.allowed = append(d.allowed, ids.CIDRs...)
	for _, n := range extra {
		if p, err := netip.ParsePrefix(n.String()); err == nil {
			d.allowed = append(d.allowed, p.Masked())
		}
	}
	for _, h := range ids.Hosts {
		d.hosts[identity.NormalizeHost(h)] = self
	}
	d.hosts["localhost"] = "127.0.0.1"
	return d
}

// resolve turns a requested address into the one to dial, or says why it is
// refused. A host name of this node is dialed at the node's own address.
func (d *dialer) resolve(address string) (string, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return "", fmt.Errorf("bad address %q: want host:port", address)
	}
	// A number only: the dialer would look a service name up ("ssh"),
	// and the server's port policy speaks numbers.
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
		return "", fmt.Errorf("bad port %q in address %q: want a number 1-65535", port, address)
	}
	key := identity.NormalizeHost(host)
	if ip, err := netip.ParseAddr(key); err == nil {
		if d.any || d.allows(ip) {
			return net.JoinHostPort(ip.String(), port), nil
		}
		return "", fmt.Errorf("refusing to dial %s: %s is not an address of this node (allowed: %s; widen with --allowed-cidrs)", address, ip, d.allowedText())
	}
	if addr, ok := d.hosts[key]; ok {
		return net.JoinHostPort(addr, port), nil
	}
	if d.any {
		return address, nil
	}
	return "", fmt.Errorf("refusing to dial %s: host %q is not a name of this node (its names: %s)", address, host, d.hostsText())
}

func (d *dialer) allows(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, p := range d.allowed {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// dial opens a TCP connection to a resolved address: TCP only, whatever
// the request said, so no UNIX socket or other network of the node is ever
// reachable through the agent.
func (d *dialer) dial(ctx context.Context, address string) (net.Conn, error) {
	return d.net.DialContext(ctx, "tcp", address)
}

func (d *dialer) allowedText() string {
	s := make([]string, len(d.allowed))
	for i, p := range d.allowed {
		s[i] = p.String()
	}
	return strings.Join(s, ", ")
}

func (d *dialer) hostsText() string {
	s := make([]string, 0, len(d.hosts))
	for h := range d.hosts {
		s = append(s, h)
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}
