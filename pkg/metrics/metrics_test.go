package metrics

import (
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// families gathers reg and returns metric name -> number of series.
func families(t *testing.T, reg *prometheus.Registry) map[string]int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]int)
	for _, mf := range mfs {
		out[mf.GetName()] = len(mf.GetMetric())
	}
	return out
}

func TestServerNames(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewServer(reg)
	// Vectors with free-form labels have no series until used.
	m.BadPackets.WithLabelValues("agent", "DATA").Inc()

	want := map[string]int{
		"edge_tunnel_server_dials_total":                      3 * 3 * 5,
		"edge_tunnel_server_dial_duration_seconds":            3 * 3,
		"edge_tunnel_server_open_connections":                 3,
		"edge_tunnel_server_connected_agents":                 1,
		"edge_tunnel_server_agent_connections":                3,
		"edge_tunnel_server_mux_streams":                      1,
		"edge_tunnel_server_bytes_total":                      2,
		"edge_tunnel_server_stalled_connections_closed_total": 1,
		"edge_tunnel_server_bad_packets_total":                1,
		"edge_tunnel_server_refusals_total":                   7,
		"edge_tunnel_server_ports_config_generation":          1,
		"edge_tunnel_server_ports_config_warnings_total":      1,
		"edge_tunnel_server_ports_config_source_up":           1,
	}
	got := families(t, reg)
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s: %d series, want %d", name, got[name], n)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected metric %s", name)
		}
	}

	// Labels are the documented ones, in order.
	m.Dials.WithLabelValues(FrontendConnect, RouteAgent, ResultTimeout).Inc()
	m.DialLatency.WithLabelValues(FrontendGRPC, RouteDirect).Observe(0.002)
	m.OpenConns.WithLabelValues(FrontendHTTPProxy).Set(4)
	m.Agents.Set(2)
	m.Bytes.WithLabelValues(DirectionToAgent).Add(10)
	expected := `
# HELP edge_tunnel_server_bytes_total Tunneled payload bytes, by direction (to_agent or from_agent).
# TYPE edge_tunnel_server_bytes_total counter
edge_tunnel_server_bytes_total{direction="from_agent"} 0
edge_tunnel_server_bytes_total{direction="to_agent"} 10
# HELP edge_tunnel_server_connected_agents Agents currently connected to this server.
# TYPE edge_tunnel_server_connected_agents gauge
edge_tunnel_server_connected_agents 2
# HELP edge_tunnel_server_open_connections Tunneled connections currently open, by frontend.
# TYPE edge_tunnel_server_open_connections gauge
edge_tunnel_server_open_connections{frontend="connect"} 0
edge_tunnel_server_open_connections{frontend="grpc"} 0
edge_tunnel_server_open_connections{frontend="http-proxy"} 4
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(expected),
		"edge_tunnel_server_bytes_total", "edge_tunnel_server_connected_agents", "edge_tunnel_server_open_connections"); err != nil {
		t.Fatal(err)
	}
	if v := testutil.ToFloat64(m.Dials.WithLabelValues("connect", "agent", "timeout")); v != 1 {
		t.Fatalf("dials{connect,agent,timeout} = %v", v)
	}
	if n := testutil.CollectAndCount(m.DialLatency, "edge_tunnel_server_dial_duration_seconds"); n != 9 {
		t.Fatalf("dial latency series = %d", n)
	}
}

func TestDialBuckets(t *testing.T) {
	if dialBuckets[0] != 0.0005 || dialBuckets[len(dialBuckets)-1] != 30 {
		t.Fatalf("buckets %v do not span 0.0005 s to 30 s", dialBuckets)
	}
	if !sort.Float64sAreSorted(dialBuckets) {
		t.Fatalf("buckets %v not sorted", dialBuckets)
	}
	reg := prometheus.NewRegistry()
	m := NewAgent(reg)
	m.DialLatency.Observe(0.0004)
	m.DialLatency.Observe(31)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "edge_tunnel_agent_dial_duration_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		if len(h.GetBucket()) != len(dialBuckets) || h.GetSampleCount() != 2 || h.GetBucket()[0].GetCumulativeCount() != 1 {
			t.Fatalf("histogram: %d buckets, %d samples, first bucket %d", len(h.GetBucket()), h.GetSampleCount(), h.GetBucket()[0].GetCumulativeCount())
		}
		return
	}
	t.Fatal("agent dial histogram not gathered")
}

func TestAgentNames(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewAgent(reg)
	m.ConnectErrors.WithLabelValues("tls").Inc()
	want := map[string]int{
		"edge_tunnel_agent_server_connections":        1,
		"edge_tunnel_agent_dials_total":               4,
		"edge_tunnel_agent_dial_duration_seconds":     1,
		"edge_tunnel_agent_open_connections":          1,
		"edge_tunnel_agent_target_server_connections": 1,
		"edge_tunnel_agent_bytes_total":               2,
		"edge_tunnel_agent_connect_errors_total":      1,
	}
	got := families(t, reg)
	for name, n := range want {
		if got[name] != n {
			t.Errorf("%s: %d series, want %d", name, got[name], n)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected metric %s", name)
		}
	}
	for _, r := range []string{"ok", "refused", "error", "cancelled"} {
		if n := testutil.CollectAndCount(m.Dials); n != 4 {
			t.Fatalf("agent dials series = %d", n)
		}
		if v := testutil.ToFloat64(m.Dials.WithLabelValues(r)); v != 0 {
			t.Errorf("dials{%s} = %v at start", r, v)
		}
	}
	for _, d := range []string{"to_server", "from_server"} {
		m.Bytes.WithLabelValues(d).Add(3)
	}
	if n := testutil.CollectAndCount(m.Bytes); n != 2 {
		t.Fatalf("agent bytes series = %d, want 2", n)
	}
}

func TestSeparateRegistries(t *testing.T) {
	r1, r2 := prometheus.NewRegistry(), prometheus.NewRegistry()
	s1, s2 := NewServer(r1), NewServer(r2)
	a1, a2 := NewAgent(r1), NewAgent(r2) // server and agent metrics share a registry
	s1.Agents.Set(5)
	a1.OpenConns.Inc()
	if testutil.ToFloat64(s2.Agents) != 0 || testutil.ToFloat64(a2.OpenConns) != 0 {
		t.Fatal("metrics leaked between registries")
	}
	if testutil.ToFloat64(s1.Agents) != 5 {
		t.Fatal("server metric not set")
	}
	// nil registerer: usable, registered nowhere.
	NewServer(nil).Agents.Inc()
	NewAgent(nil).OpenConns.Inc()
}

func TestDuplicateRegistrationPanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewServer(reg)
	defer func() {
		if recover() == nil {
			t.Fatal("registering the server metrics twice on one registry did not panic")
		}
	}()
	NewServer(reg)
}

func TestLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	NewServer(reg)
	NewAgent(reg)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestPortsSourceUpStartsAtOne: with no source (or before its first read)
// nothing has failed, so an alert on source_up == 0 stays quiet.
func TestPortsSourceUpStartsAtOne(t *testing.T) {
	m := NewServer(prometheus.NewRegistry())
	if v := testutil.ToFloat64(m.PortsSourceUp); v != 1 {
		t.Fatalf("ports_config_source_up = %v at start, want 1", v)
	}
	if v := testutil.ToFloat64(m.PortsGeneration); v != 0 {
		t.Fatalf("ports_config_generation = %v at start, want 0", v)
	}
}
