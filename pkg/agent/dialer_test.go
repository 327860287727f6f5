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
