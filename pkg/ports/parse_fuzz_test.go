package ports

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzParseRoundTrip checks Parse on any ConfigMap data (the four keys and
// one unknown key), beyond FuzzParse's range check:
//   - every warning names its key and says what is wrong;
//   - no item is lost silently: each non-empty item of a list becomes a
//     port of the policy or draws a warning that quotes it;
//   - the policy is consistent: ports 1-65535, http and https disjoint;
//   - printing the policy back as ConfigMap data and parsing that gives
//     the same policy, without warnings.
func FuzzParseRoundTrip(f *testing.F) {
	f.Fuzz(func(t *testing.T, http, https, localhost, dnat, unknown string) {
		data := map[string]string{KeyHTTP: http, KeyHTTPS: https, KeyLocalhost: localhost, KeyDNAT: dnat}
		if unknown != "" {
			data["x-"+unknown] = "1"
		}
		cfg, warns := Parse(data)
		for _, w := range warns {
			if w.Key == "" || w.Msg == "" {
				t.Fatalf("warning %+v does not say which key and what is wrong", w)
			}
			if _, ok := data[w.Key]; !ok {
				t.Fatalf("warning %q names key %q, which the data does not have", w, w.Key)
			}
		}
		all := map[int]bool{}
		for _, ps := range [][]int{cfg.HTTP(), cfg.HTTPS(), cfg.Localhost()} {
			for _, p := range ps {
				if p < 1 || p > 65535 {
					t.Fatalf("port %d out of range accepted", p)
				}
				all[p] = true
			}
		}
		for _, p := range cfg.HTTP() {
			if slices.Contains(cfg.HTTPS(), p) {
				t.Fatalf("port %d is both http and https: %s", p, cfg)
			}
		}
		for key, value := range data {
			if strings.HasPrefix(key, "x-") {
				continue
			}
			for _, item := range strings.Split(value, ",") {
				item = strings.TrimSpace(item)
				if item == "" {
					continue
				}
				port := item
				if key == KeyDNAT {
					port, _, _ = strings.Cut(item, "=")
				}
				p, err := strconv.Atoi(strings.TrimSpace(port))
				if err == nil && all[p] {
					continue
				}
				if !warned(warns, key, item) {
					t.Fatalf("%s item %q is neither a port of the policy nor warned about (warnings: %q)", key, item, warns)
				}
			}
		}

		printed := map[string]string{KeyHTTP: join(cfg.HTTP()), KeyHTTPS: join(cfg.HTTPS()), KeyLocalhost: join(cfg.Localhost())}
		again, warns := Parse(printed)
		if len(warns) != 0 {
			t.Fatalf("the policy of %q printed as %q parses with warnings %q", data, printed, warns)
		}
		if !slices.Equal(again.HTTP(), cfg.HTTP()) || !slices.Equal(again.HTTPS(), cfg.HTTPS()) || !slices.Equal(again.Localhost(), cfg.Localhost()) {
			t.Fatalf("round trip: %s, printed as %q, parses as %s", cfg, printed, again)
		}
	})
}

func warned(warns []Warning, key, item string) bool {
	for _, w := range warns {
		if w.Key == key && w.Item == item {
			return true
		}
	}
	return false
}
