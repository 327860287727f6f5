// Package ports is the edge-node port policy from ConfigMap
// kube-system/edge-tunnel-server-cfg: which ports of an edge node the cloud
// may reach, over plain HTTP or TLS, and which are dialed on the node's
// loopback. See docs/ports.md for the keys and their parsing rules.
package ports

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Always-forwarded kubelet ports.
const (
	KubeletPort         = 10250 // TLS
	KubeletReadOnlyPort = 10255 // plain HTTP
)

// ConfigMap keys.
const (
	KeyHTTP      = "http-proxy-ports"
	KeyHTTPS     = "https-proxy-ports"
	KeyLocalhost = "localhost-proxy-ports"
	KeyDNAT      = "dnat-ports-pair" // legacy: PORT=10264 items, plain HTTP
)

// DefaultLocalhost is localhost-proxy-ports when the key is absent.
var DefaultLocalhost = []int{10250, 10255, 10266, 10267}

// Config is one effective port policy. It is immutable once built; a change
// produces a new Config with a higher Generation.
type Config struct {
	http, https, localhost map[int]bool
	// Generation counts the changes applied since start (0: the defaults).
	Generation int64
	// Source says where the config came from, for logs and the admin page.
	Source string
}

// Default is the policy without a ConfigMap: kubelet's two ports, and the
// default localhost ports.
func Default() *Config {
	return New(nil, nil, DefaultLocalhost)
}

// New builds a Config from port lists.
func New(http, https, localhost []int) *Config {
	set := func(ps []int) map[int]bool {
		m := make(map[int]bool, len(ps))
		for _, p := range ps {
			m[p] = true
		}
		return m
	}
	return &Config{http: set(http), https: set(https), localhost: set(localhost), Source: "defaults"}
}

// Allowed reports whether port of an edge node may be dialed: the kubelet
// ports, and every port the ConfigMap names.
func (c *Config) Allowed(port int) bool {
	return port == KubeletPort || port == KubeletReadOnlyPort || c.http[port] || c.https[port] || c.localhost[port]
}

// Loopback reports whether the agent dials port on the node's 127.0.0.1
// instead of the address the client asked for.
func (c *Config) Loopback(port int) bool { return c.localhost[port] }

// PlainHTTP reports whether port speaks plain HTTP, so the HTTP proxy may
// forward absolute-form requests to it (TLS ports are reached by CONNECT).
func (c *Config) PlainHTTP(port int) bool {
	return port == KubeletReadOnlyPort || c.http[port]
}

// HTTP, HTTPS and Localhost return the configured ports, sorted.
func (c *Config) HTTP() []int      { return sorted(c.http) }
func (c *Config) HTTPS() []int     { return sorted(c.https) }
func (c *Config) Localhost() []int { return sorted(c.localhost) }

func sorted(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// String is the one-line form used in logs.
func (c *Config) String() string {
	return fmt.Sprintf("generation=%d source=%s always=%d,%d %s=%s %s=%s %s=%s", c.Generation, c.Source,
		KubeletPort, KubeletReadOnlyPort, KeyHTTP, join(c.HTTP()), KeyHTTPS, join(c.HTTPS()), KeyLocalhost, join(c.Localhost()))
}

func join(ps []int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}
