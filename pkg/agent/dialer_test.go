package agent

import (
	"net"
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

func TestDialerAllowsOnlyItsNode(t *testing.T) {
	ids, err := identity.Parse("host=edge-1&ipv4=10.0.0.5&ipv6=fd00::5")
	if err != nil {
		t.Fatal(err)
	}
	_, extra, _ := net.ParseCIDR("192.168.7.0/24")
	d := newDialer(ids, []*net.IPNet{extra})
	for _, c := range []struct {
		address, want, refusal string
	}{
		{"10.0.0.5:10250", "10.0.0.5:10250", ""},
		{"[fd00::5]:10250", "[fd00::5]:10250", ""},
		{"[::ffff:10.0.0.5]:10250", "10.0.0.5:10250", ""}, // IPv4-mapped form of its own address
		{"127.0.0.1:9100", "127.0.0.1:9100", ""},
		{"localhost:9100", "127.0.0.1:9100", ""},
		{"edge-1:10250", "10.0.0.5:10250", ""},     // the node's name: dialed at its address
		{"EDGE-1.:10250", "10.0.0.5:10250", ""},    // names are case-insensitive, trailing dot ignored
		{"192.168.7.20:80", "192.168.7.20:80", ""}, // widened by --allowed-cidrs
		{"10.0.0.6:10250", "", "not an address of this node"},
		{"edge-2:10250", "", "not a name of this node"},
		{"10.0.0.5", "", "want host:port"},
	} {
		got, err := d.resolve(c.address)
		switch {
		case c.refusal == "" && (err != nil || got != c.want):
			t.Errorf("resolve(%q) = %q, %v; want %q", c.address, got, err, c.want)
		case c.refusal != "" && (err == nil || !strings.Contains(err.Error(), c.refusal)):
			t.Errorf("resolve(%q) = %q, %v; want a refusal saying %q", c.address, got, err, c.refusal)
		}
	}
}

func TestDialerDefaultRouteAllowsAll(t *testing.T) {
	ids, _ := identity.Parse("host=gw&default-route=true")
	d := newDialer(ids, nil)
	if got, err := d.resolve("203.0.113.9:443"); err != nil || got != "203.0.113.9:443" {
		t.Fatalf("default-route agent refused %v (%q)", err, got)
	}
}

// TestDialerRefusesTheRest names each thing the agent must not dial: other
// hosts of the edge LAN, the cloud metadata address, "any address" (which
// reaches every local listener), zoned and translated addresses, UNIX
// sockets, names that are not the node's, and ports that are not numbers.
func TestDialerRefusesTheRest(t *testing.T) {
	ids, err := identity.Parse("host=edge-1&ipv4=10.0.0.5&ipv6=fd00::5")
	if err != nil {
		t.Fatal(err)
	}
	d := newDialer(ids, nil)
	for _, c := range []struct{ address, refusal string }{
		{"10.0.0.1:22", "not an address of this node"},               // the LAN's gateway
		{"10.0.0.6:10250", "not an address of this node"},            // a neighbour
		{"[fd00::6]:10250", "not an address of this node"},           // a neighbour over IPv6
		{"169.254.169.254:80", "not an address of this node"},        // metadata service
		{"0.0.0.0:10250", "not an address of this node"},             // reaches every local listener
		{"[::]:10250", "not an address of this node"},                // same over IPv6
		{"[fe80::1%eth0]:80", "not an address of this node"},         // zoned link-local
		{"[64:ff9b::a00:6]:80", "not an address of this node"},       // NAT64 form of 10.0.0.6
		{"[::ffff:10.0.0.6]:80", "not an address of this node"},      // IPv4-mapped neighbour
		{"10.0.0.5.nip.io:80", "not a name of this node"},            // a name that resolves to the node
		{"gateway.lan:80", "not a name of this node"},                // names are never looked up
		{"/var/run/docker.sock", "want host:port"},                   // a UNIX socket path
		{"unix:///var/run/docker.sock", "bad port"},                  // a UNIX socket URL
		{"unix:/run/containerd/containerd.sock:0", "want host:port"}, // still not a socket
		{"10.0.0.5:ssh", "want a number 1-65535"},                    // service names are not looked up
		{"10.0.0.5:0", "want a number 1-65535"},
		{"10.0.0.5:65536", "want a number 1-65535"},
		{"10.0.0.5:+22", "want a number 1-65535"},
		{"10.0.0.5:", "want a number 1-65535"},
	} {
		got, err := d.resolve(c.address)
		if err == nil || !strings.Contains(err.Error(), c.refusal) {
			t.Errorf("resolve(%q) = %q, %v; want a refusal saying %q", c.address, got, err, c.refusal)
		}
	}
	// Only the listed networks widen it, and only them.
	_, extra, _ := net.ParseCIDR("10.0.1.0/24")
	d = newDialer(ids, []*net.IPNet{extra})
	if _, err := d.resolve("10.0.1.9:80"); err != nil {
		t.Errorf("address in --allowed-cidrs refused: %v", err)
	}
	if _, err := d.resolve("10.0.2.9:80"); err == nil {
		t.Error("address outside --allowed-cidrs allowed")
	}
}
