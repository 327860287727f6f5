package controlplane_test

import (
	"context"
	"fmt"
	"math"
	"net"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/controlplane"
)

// TestPrometheus scrapes every edge node's kubelet stand-in with a real
// Prometheus through proxy_url, as operators set it up: the read-only port
// (plain HTTP, absolute-form requests) and the kubelet port (HTTPS with
// the kubelet CA and a client certificate, CONNECT, TLS end to end),
// through the edge-tunnel-proxy sidecar and through the server's own HTTP
// proxy. The host cannot reach the edge network, so a target that is up
// was reached through the tunnel. A port the port policy does not forward
// is down, with edge-tunnel-server's reason in Prometheus' lastError, over
// plain HTTP and over CONNECT.
func TestPrometheus(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{HTTPProxy: true})
	sidecar := c.StartProxy(t, "uds")
	ca, cert, key := c.KubeletScrapeTLS()
	proxies := map[string]string{"sidecar": sidecar.Addr, "server": c.Server.ProxyAddr}
	refusedNode := c.Nodes[0]

	// want is the health each job's targets must reach.
	want := map[string]string{}
	var cfg strings.Builder
	cfg.WriteString("global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n")
	job := func(name, proxy, scheme string, port int, nodes []*controlplane.Node, health string) {
		want[name] = health
		fmt.Fprintf(&cfg, "- job_name: %s\n  metrics_path: /metrics/resource\n  scheme: %s\n  proxy_url: http://%s\n", name, scheme, proxy)
		if scheme == "https" {
			fmt.Fprintf(&cfg, "  tls_config: {ca_file: %q, cert_file: %q, key_file: %q}\n", ca, cert, key)
		}
		cfg.WriteString("  static_configs:\n")
		for _, n := range nodes {
			fmt.Fprintf(&cfg, "  - targets: [%q]\n    labels: {node: %s}\n", net.JoinHostPort(n.Addr.String(), strconv.Itoa(port)), n.Name)
		}
	}
	for _, via := range []string{"sidecar", "server"} {
		job("edge-readonly-"+via, proxies[via], "http", controlplane.ReadOnlyPort, c.Nodes, "up")
		job("edge-kubelet-"+via, proxies[via], "https", controlplane.KubeletPort, c.Nodes, "up")
		job("edge-refused-http-"+via, proxies[via], "http", controlplane.ExtraHTTPPort, c.Nodes[:1], "down")
		job("edge-refused-tls-"+via, proxies[via], "https", controlplane.ExtraTLSPort, c.Nodes[:1], "down")
	}
	t.Logf("prometheus.yml:\n%s", cfg.String())
	p := c.StartPrometheus(t, cfg.String())

	refusal := func(port int) string {
		return fmt.Sprintf("port %d of edge node %q is not forwarded", port, refusedNode.Addr.String())
	}
	// check reports what is not yet as wanted, or "".
	check := func(targets []controlplane.Target) string {
		var problems []string
		seen := map[string]int{}
		for _, tg := range targets {
			name := tg.Labels["job"]
			seen[name]++
			switch {
			case want[name] == "":
				problems = append(problems, "unexpected job "+name)
			case tg.Health != want[name]:
				problems = append(problems, fmt.Sprintf("%s %s: health %q (lastError %q), want %q", name, tg.ScrapeURL, tg.Health, tg.LastError, want[name]))
			case want[name] == "down":
				port := controlplane.ExtraHTTPPort
				if strings.Contains(name, "-tls-") {
					port = controlplane.ExtraTLSPort
				}
				// "403 Forbidden: reason" for a plain request,
				// "Forbidden: reason" for a refused CONNECT.
				if !strings.Contains(tg.LastError, "Forbidden: ") || !strings.Contains(tg.LastError, refusal(port)) {
					problems = append(problems, fmt.Sprintf("%s %s: lastError %q, want a 403 with %q", name, tg.ScrapeURL, tg.LastError, refusal(port)))
				}
			}
		}
		for name := range want {
			if seen[name] == 0 {
				problems = append(problems, "no target of job "+name)
			}
		}
		sort.Strings(problems)
		return strings.Join(problems, "\n")
	}

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		targets []controlplane.Target
		last    string
	)
	for {
		var err error
		targets, err = p.Targets(ctx)
		if err != nil {
			last = err.Error()
		} else if last = check(targets); last == "" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Prometheus' targets not as wanted within 60 s:\n%s\n--- prometheus log:\n%s\n--- sidecar log:\n%s",
				last, p.LogTail(40), sidecar.LogTail(20))
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Logf("every target as wanted after %s", time.Since(start).Round(100*time.Millisecond))
	for _, tg := range targets {
		if tg.Health == "down" {
			t.Logf("%s %s: down: %s", tg.Labels["job"], tg.ScrapeURL, tg.LastError)
		}
	}

	// The scraped values: every up target reports the stand-in's working
	// set, and its CPU counter grows by 250 millicores (which needs two
	// scrapes a second apart, so it is polled too).
	upJobs := 0
	for _, h := range want {
		if h == "up" {
			upJobs++
		}
	}
	wantSeries := upJobs * len(c.Nodes)
	queries := []struct {
		expr string
		ok   func(float64) bool
		what string
	}{
		{`node_memory_working_set_bytes{job=~"edge-.*"}`, func(v float64) bool { return v == 300<<20 }, "300Mi"},
		{`rate(node_cpu_usage_seconds_total{job=~"edge-.*"}[10s])`, func(v float64) bool { return math.Abs(v-0.25) < 0.01 }, "0.25 cores"},
	}
	for _, q := range queries {
		for {
			samples, err := p.Query(ctx, q.expr)
			good := 0
			for _, s := range samples {
				if q.ok(s.Value) {
					good++
				}
			}
			if err == nil && good == wantSeries && len(samples) == wantSeries {
				t.Logf("%s: %d series, each %s", q.expr, good, q.what)
				break
			}
			last = fmt.Sprintf("%d series, %d of them %s, want %d (err %v): %v", len(samples), good, q.what, wantSeries, err, samples)
			select {
			case <-ctx.Done():
				t.Fatalf("query %s within 60 s of the start: %s", q.expr, last)
			case <-time.After(500 * time.Millisecond):
			}
		}
	}
}
