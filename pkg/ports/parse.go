package ports

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Warning is one item of the ConfigMap that was not applied, or a key that
// means nothing. The rest of the value still applies.
type Warning struct {
	Key  string
	Item string // empty for a whole-key warning
	Msg  string
}

func (w Warning) String() string {
	if w.Item == "" {
		return fmt.Sprintf("%s: %s", w.Key, w.Msg)
	}
	return fmt.Sprintf("%s: item %q %s", w.Key, w.Item, w.Msg)
}

// legacyHTTPPort is the right side of dnat-ports-pair items: the plain-HTTP
// port of the older design's server. edge-tunnel's HTTP proxy takes its place.
const legacyHTTPPort = 10264

// Parse builds the policy from a ConfigMap's data. It never fails: a bad
// item is skipped with a Warning naming the key and the item, and the rest
// applies (see docs/ports.md for each rule).
func Parse(data map[string]string) (*Config, []Warning) {
	var warns []Warning
	warn := func(key, item, format string, args ...any) {
		warns = append(warns, Warning{Key: key, Item: item, Msg: fmt.Sprintf(format, args...)})
	}
	list := func(key string, pair bool) []int {
		var out []int
		seen := map[int]bool{}
		for _, item := range strings.Split(data[key], ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			portText := item
			if pair {
				left, right, ok := strings.Cut(item, "=")
				if !ok {
					warn(key, item, "is not a PORT=%d pair; skipped", legacyHTTPPort)
					continue
				}
				portText = strings.TrimSpace(left)
				if r := strings.TrimSpace(right); r != strconv.Itoa(legacyHTTPPort) {
					warn(key, item, "maps to %q; edge-tunnel serves every http port through its proxy, so only the left side (%s) is used", r, portText)
				}
			}
			p, err := strconv.Atoi(portText)
			if err != nil || p < 1 || p > 65535 {
				warn(key, item, "is not a port number 1-65535; skipped")
				continue
			}
			if seen[p] {
				warn(key, item, "is listed twice; once is enough")
				continue
			}
			seen[p] = true
			out = append(out, p)
		}
		return out
	}

	http := append(list(KeyHTTP, false), list(KeyDNAT, true)...)
	https := list(KeyHTTPS, false)
	localhost := DefaultLocalhost
	if _, ok := data[KeyLocalhost]; ok {
		localhost = list(KeyLocalhost, false)
	}

	// A port that is both http and https: TLS wins (the HTTP proxy then
	// reaches it by CONNECT only), since a plain request to a TLS port
	// would fail anyway.
	tls := map[int]bool{}
	for _, p := range https {
		tls[p] = true
	}
	var plain []int
	seen := map[int]bool{}
	for _, p := range http {
		switch {
		case tls[p]:
			warn(KeyHTTP, strconv.Itoa(p), "is also in %s; treated as a TLS port", KeyHTTPS)
		case seen[p]:
			// in both http-proxy-ports and dnat-ports-pair: fine
		default:
			seen[p] = true
			plain = append(plain, p)
		}
	}

	var unknown []string
	for k := range data {
		switch k {
		case KeyHTTP, KeyHTTPS, KeyLocalhost, KeyDNAT:
		default:
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	for _, k := range unknown {
		warn(k, "", "is not a key edge-tunnel knows (%s, %s, %s, %s); ignored", KeyHTTP, KeyHTTPS, KeyLocalhost, KeyDNAT)
	}
	c := New(plain, https, localhost)
	c.Source = "configmap"
	return c, warns
}
