package docscheck

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
)

// root is the repository root, relative to this package's directory.
var root = filepath.Join("..", "..")

func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatalf("reading %s: %v", rel, err)
	}
	return string(b)
}

// describer is a Registerer that records the names of the metrics
// registered on it. Describe, unlike Gather, also sees vectors that have no
// series yet (a CounterVec whose label values appear with the first event).
type describer struct{ names map[string]bool }

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d *describer) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil {
			d.names[m[1]] = true
		}
	}
	return nil
}

func (d *describer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		d.Register(c)
	}
}

func (d *describer) Unregister(prometheus.Collector) bool { return false }

// registeredMetrics returns the names of every metric of the server and
// the agent, with the type of those that already have a series.
func registeredMetrics(t *testing.T) (names map[string]bool, types map[string]string) {
	t.Helper()
	d := &describer{names: map[string]bool{}}
	metrics.NewServer(d)
	metrics.NewAgent(d)
	if len(d.names) < 10 {
		t.Fatalf("only %d metrics found (%v); the descriptor parsing broke", len(d.names), d.names)
	}
	reg := prometheus.NewRegistry()
	metrics.NewServer(reg)
	metrics.NewAgent(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	types = map[string]string{}
	for _, mf := range mfs {
		types[mf.GetName()] = strings.ToLower(mf.GetType().String())
	}
	return d.names, types
}

var metricName = regexp.MustCompile(`edge_tunnel_[a-z0-9_]+`)

// TestMetricsDocumented: every registered metric has a row in
// docs/metrics.md with the right type, and every edge_tunnel_ name the page
// mentions exists.
func TestMetricsDocumented(t *testing.T) {
	names, types := registeredMetrics(t)
	doc := readRepoFile(t, "docs/metrics.md")
	rows := map[string]string{} // name -> type column
	for _, line := range strings.Split(doc, "\n") {
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			continue
		}
		name := strings.Trim(strings.TrimSpace(cells[1]), "`")
		if metricName.MatchString(name) && metricName.FindString(name) == name {
			rows[name] = strings.TrimSpace(cells[2])
		}
	}
	for name := range names {
		typ, ok := rows[name]
		if !ok {
			t.Errorf("metric %s is registered but has no row in docs/metrics.md (name | type | labels | meaning)", name)
			continue
		}
		if want, known := types[name]; known && typ != want {
			t.Errorf("docs/metrics.md says %s is a %s; it is a %s", name, typ, want)
		}
	}
	for _, name := range metricName.FindAllString(doc, -1) {
		if !names[baseName(name, names)] {
			t.Errorf("docs/metrics.md mentions %s, which is not registered", name)
		}
	}
}

// baseName strips the suffixes of a histogram's series.
func baseName(name string, names map[string]bool) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(name, suffix); ok && names[b] {
			return b
		}
	}
	return name
}

// TestDashboardUsesRealMetrics: every expression of the Grafana dashboard
// queries edge-tunnel metrics, and only names that are registered.
func TestDashboardUsesRealMetrics(t *testing.T) {
	names, _ := registeredMetrics(t)
	var dash any
	if err := json.Unmarshal([]byte(readRepoFile(t, "manifests/grafana/edge-tunnel.json")), &dash); err != nil {
		t.Fatalf("manifests/grafana/edge-tunnel.json: %v", err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
					exprs = append(exprs, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(dash)
	if len(exprs) < 10 {
		t.Fatalf("only %d expressions found in the dashboard", len(exprs))
	}
	used := map[string]bool{}
	for _, e := range exprs {
		found := metricName.FindAllString(e, -1)
		if len(found) == 0 {
			t.Errorf("dashboard expression %q uses no edge_tunnel_ metric", e)
		}
		for _, n := range found {
			b := baseName(n, names)
			if !names[b] {
				t.Errorf("dashboard expression %q uses %s, which pkg/metrics does not register", e, n)
			}
			used[b] = true
		}
	}
	for n := range names {
		if !used[n] {
			t.Logf("metric %s is not on the dashboard", n)
		}
	}
}
