package ports

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		name                   string
		data                   map[string]string
		http, https, localhost []int
		warnings               []string // substrings, one per expected warning, in order
	}{
		{name: "absent keys: defaults", data: map[string]string{},
			localhost: DefaultLocalhost},
		{name: "the documented example",
			data: map[string]string{KeyHTTP: "9051", KeyHTTPS: "9052, 8080", KeyLocalhost: "10250, 10255, 10266, 10267, 8080"},
			http: []int{9051}, https: []int{8080, 9052}, localhost: []int{8080, 10250, 10255, 10266, 10267}},
		{name: "legacy dnat pair", data: map[string]string{KeyDNAT: "9051=10264"},
			http: []int{9051}, localhost: DefaultLocalhost},
		{name: "spaces and empty items", data: map[string]string{KeyHTTP: " 9051 ,, ,9100,  "},
			http: []int{9051, 9100}, localhost: DefaultLocalhost},
		{name: "empty localhost value replaces the default", data: map[string]string{KeyLocalhost: ""}},
		{name: "bad numbers and out of range skip only that item",
			data: map[string]string{KeyHTTP: "9051, abc, 0, 65536, -1, 9.5, 65535"},
			http: []int{9051, 65535}, localhost: DefaultLocalhost,
			warnings: []string{`"abc"`, `"0"`, `"65536"`, `"-1"`, `"9.5"`}},
		{name: "localhost ports are validated too",
			data:      map[string]string{KeyLocalhost: "10250, x10255"},
			localhost: []int{10250}, warnings: []string{`localhost-proxy-ports: item "x10255" is not a port`}},
		{name: "mixed pair and non-pair items keep the good ones",
			data: map[string]string{KeyDNAT: "9051=10264, 9100, 9200=10264, =10264, 9300=80"},
			http: []int{9051, 9200, 9300}, localhost: DefaultLocalhost,
			warnings: []string{`"9100" is not a PORT=10264 pair`, `"=10264" is not a port number`, `"9300=80" maps to "80"`}},
		{name: "duplicates", data: map[string]string{KeyHTTPS: "9052, 9052", KeyHTTP: "9051", KeyDNAT: "9051=10264"},
			http: []int{9051}, https: []int{9052}, localhost: DefaultLocalhost,
			warnings: []string{`"9052" is listed twice`}},
		{name: "a port in both http and https is TLS",
			data: map[string]string{KeyHTTP: "9051, 8443", KeyHTTPS: "8443"},
			http: []int{9051}, https: []int{8443}, localhost: DefaultLocalhost,
			warnings: []string{`http-proxy-ports: item "8443" is also in https-proxy-ports`}},
		{name: "unknown keys", data: map[string]string{"https-proxy-port": "9052", "zz": "1"},
			localhost: DefaultLocalhost,
			warnings:  []string{`https-proxy-port: is not a key`, `zz: is not a key`}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, warns := Parse(c.data)
			check := func(what string, got, want []int) {
				if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			check("http", cfg.HTTP(), c.http)
			check("https", cfg.HTTPS(), c.https)
			check("localhost", cfg.Localhost(), sortedCopy(c.localhost))
			if len(warns) != len(c.warnings) {
				t.Fatalf("warnings %v, want %d like %q", warns, len(c.warnings), c.warnings)
			}
			for i, w := range warns {
				if !strings.Contains(w.String(), c.warnings[i]) {
					t.Errorf("warning %d = %q, want it to contain %q", i, w, c.warnings[i])
				}
			}
		})
	}
}

func sortedCopy(p []int) []int {
	c := slices.Clone(p)
	slices.Sort(c)
	return c
}

func TestPolicy(t *testing.T) {
	cfg, _ := Parse(map[string]string{KeyHTTP: "9051", KeyHTTPS: "9052", KeyLocalhost: "10250, 8080"})
	for _, c := range []struct {
		port                     int
		allowed, loopback, plain bool
	}{
		{10250, true, true, false},
		{10255, true, false, true}, // always allowed; localhost list replaced
		{9051, true, false, true},
		{9052, true, false, false},
		{8080, true, true, false},
		{22, false, false, false},
	} {
		if got := cfg.Allowed(c.port); got != c.allowed {
			t.Errorf("Allowed(%d) = %v", c.port, got)
		}
		if got := cfg.Loopback(c.port); got != c.loopback {
			t.Errorf("Loopback(%d) = %v", c.port, got)
		}
		if got := cfg.PlainHTTP(c.port); got != c.plain {
			t.Errorf("PlainHTTP(%d) = %v", c.port, got)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("9051, 9052", "9051=10264, x")
	f.Fuzz(func(t *testing.T, a, b string) {
		cfg, _ := Parse(map[string]string{KeyHTTP: a, KeyDNAT: b, KeyLocalhost: a})
		for _, p := range cfg.HTTP() {
			if p < 1 || p > 65535 {
				t.Fatalf("port %d out of range accepted", p)
			}
		}
	})
}
