package router

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// noAgents serves no host: every dial in these tests is a direct one.
type noAgents struct{}

func (noAgents) Lookup(string) (Backend, bool)             { return nil, false }
func (noAgents) Departed(string) (string, time.Time, bool) { return "", time.Time{}, false }

func newDirect(t *testing.T, allow ...string) (*Router, *int) {
	t.Helper()
	a, err := ParseAllow(allow)
	if err != nil {
		t.Fatal(err)
	}
	refused := new(int)
	r := New(noAgents{}, true)
	r.SetDirectAllow(a, func() { *refused++ })
	return r, refused
}

func listen(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

func dial(r *Router, address string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	route, err := r.Route(address)
	if err != nil {
		return err
	}
	c, err := route.Dial(ctx)
	if err == nil {
		c.Close()
	}
	return err
}

func TestDirectDialAllowed(t *testing.T) {
	addr := listen(t)
	_, port, _ := net.SplitHostPort(addr)
	r, refused := newDirect(t, DefaultDirectAllow...)
	for _, a := range []string{addr, "[::ffff:127.0.0.1]:" + port} {
		if err := dial(r, a); err != nil {
			t.Errorf("dial %s with the default allow list: %v", a, err)
		}
	}
	// A listed name is dialed whatever it resolves to.
	r2, _ := newDirect(t, "10.0.0.0/8", "LocalHost.")
	if err := dial(r2, "localhost:"+port); err != nil {
		t.Errorf("dial of a listed name: %v", err)
	}
	// An unlisted name whose addresses are in range is dialed.
	r3, _ := newDirect(t, "127.0.0.0/8", "::1/128")
	if err := dial(r3, "localhost:"+port); err != nil {
		t.Errorf("dial of a name resolving into an allowed range: %v", err)
	}
	if *refused != 0 {
		t.Errorf("%d refusals counted for allowed dials", *refused)
	}
}

func TestDirectDialRefused(t *testing.T) {
	addr := listen(t)
	_, port, _ := net.SplitHostPort(addr)
	def, defRefused := newDirect(t, DefaultDirectAllow...)
	narrow, narrowRefused := newDirect(t, "10.96.0.0/12", ".svc")
	for _, c := range []struct {
		r       *Router
		address string
		want    string
	}{
		{def, "169.254.169.254:80", "169.254.169.254 is outside"}, // cloud metadata
		{def, "203.0.113.7:443", "203.0.113.7 is outside"},
		{def, "[2001:db8::1]:443", "2001:db8::1 is outside"},
		{narrow, addr, "127.0.0.1 is outside"},
		{narrow, "[::ffff:127.0.0.1]:" + port, "127.0.0.1 is outside"},
		{narrow, "localhost:" + port, `"localhost" resolves to`}, // resolved (from /etc/hosts), checked, refused
	} {
		err := dial(c.r, c.address)
		if err == nil || tunnel.KindOf(err) != tunnel.KindForbidden || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--direct-dial-allow=") {
			t.Errorf("dial %s: %v (kind %v); want KindForbidden saying %q and naming --direct-dial-allow", c.address, err, tunnel.KindOf(err), c.want)
		}
	}
	if *defRefused != 3 || *narrowRefused != 3 {
		t.Errorf("refusals counted: default %d (want 3), narrow %d (want 3)", *defRefused, *narrowRefused)
	}
}

func TestParseAllow(t *testing.T) {
	a, err := ParseAllow([]string{" 10.96.0.0/12 ", "10.0.0.7", "*.Cluster.Local", ".svc", "webhook.example.com", ""})
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]bool{
		"metrics-server.kube-system.svc": true,
		"a.b.cluster.local":              true,
		"cluster.local":                  false,
		"webhook.example.com":            true,
		"x.webhook.example.com":          false,
		"svc":                            false,
	} {
		if got := a.name(host); got != want {
			t.Errorf("name(%q) = %v, want %v", host, got, want)
		}
	}
	for _, bad := range []string{"10.0.0.0/33", "not a name", "a..b", "fe80::1%eth0", "-/8"} {
		if _, err := ParseAllow([]string{bad}); err == nil {
			t.Errorf("ParseAllow(%q) accepted it", bad)
		} else if !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseAllow(%q): %v; want the error to quote the item", bad, err)
		}
	}
}
