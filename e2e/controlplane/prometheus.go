package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// Prometheus is a running Prometheus server on loopback, the cloud side.
type Prometheus struct {
	*harness.Process
	// URL is its HTTP API's base, http://127.0.0.1:PORT.
	URL    string
	client *http.Client
}

// StartProxy starts an edge-tunnel-proxy sidecar for the cluster's server,
// reaching its gRPC frontend via "uds" or "mtls".
func (c *Cluster) StartProxy(t testing.TB, via string) *harness.Proxy {
	t.Helper()
	return harness.StartProxy(t, c.bins, c.tunnelPKI, c.Server, harness.ProxyOptions{Via: via})
}

// KubeletScrapeTLS are the files a scraper of the kubelets' 10250 needs:
// the kubelet CA that signed their serving certificates, and a client
// certificate (metrics-server's) from the cluster CA they accept.
func (c *Cluster) KubeletScrapeTLS() (caFile, certFile, keyFile string) {
	return c.certs.KubeletCA, c.certs.MetricsClient, c.certs.MetricsClientKy
}

// StartPrometheus runs Prometheus (Tools.Prometheus) with config as its
// prometheus.yml, on a free loopback port with a fresh TSDB, and waits
// until it is ready. Its targets are whatever config names; edge targets
// are reachable only through a proxy_url, since the host cannot reach the
// edge network.
func (c *Cluster) StartPrometheus(t testing.TB, config string) *Prometheus {
	t.Helper()
	if c.Tools.Prometheus == "" {
		t.Fatal("StartPrometheus: Tools.Prometheus is empty; BuildTools builds it")
	}
	dir := filepath.Join(c.dir, "prometheus")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("prometheus directory: %v", err)
	}
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatalf("write prometheus.yml: %v", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(harness.FreePorts(t, 1)[0])
	p := &Prometheus{URL: "http://" + addr, client: &http.Client{Timeout: 5 * time.Second}}
	p.Process = harness.StartProcess(t, "prometheus", dir, c.Tools.Prometheus,
		"--config.file", cfg,
		"--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr,
		"--log.level", "debug",
	)
	err := poll(30*time.Second, 200*time.Millisecond, func() (bool, error) {
		if p.Exited() {
			return false, fmt.Errorf("prometheus exited")
		}
		resp, err := p.client.Get(p.URL + "/-/ready")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("prometheus not ready: %v\n--- last lines of its log:\n%s", err, p.LogTail(40))
	}
	return p
}

// Target is one active target of /api/v1/targets.
type Target struct {
	Labels    map[string]string `json:"labels"`
	ScrapeURL string            `json:"scrapeUrl"`
	Health    string            `json:"health"` // "up", "down" or "unknown"
	LastError string            `json:"lastError"`
}

// Targets returns Prometheus' active targets.
func (p *Prometheus) Targets(ctx context.Context) ([]Target, error) {
	var data struct {
		ActiveTargets []Target `json:"activeTargets"`
	}
	if err := p.api(ctx, "/api/v1/targets?state=active", &data); err != nil {
		return nil, err
	}
	return data.ActiveTargets, nil
}

// Sample is one element of an instant vector.
type Sample struct {
	Metric map[string]string
	Value  float64
}

// Query evaluates expr now and returns the instant vector it yields.
func (p *Prometheus) Query(ctx context.Context, expr string) ([]Sample, error) {
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"` // [unix seconds, "value"]
		} `json:"result"`
	}
	if err := p.api(ctx, "/api/v1/query?query="+url.QueryEscape(expr), &data); err != nil {
		return nil, err
	}
	if data.ResultType != "vector" {
		return nil, fmt.Errorf("query %q: result type %q, want vector", expr, data.ResultType)
	}
	out := make([]Sample, 0, len(data.Result))
	for _, r := range data.Result {
		s, ok := r.Value[1].(string)
		if !ok {
			return nil, fmt.Errorf("query %q: value %v is not a string", expr, r.Value[1])
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("query %q: value %q: %w", expr, s, err)
		}
		out = append(out, Sample{Metric: r.Metric, Value: v})
	}
	return out, nil
}

// api GETs path and decodes the "data" of Prometheus' API envelope into v.
func (p *Prometheus) api(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+path, nil)
	if err != nil {
		return err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("prometheus API %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("prometheus API %s: read: %w", path, err)
	}
	var env struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return fmt.Errorf("prometheus API %s: %s: not JSON: %w: %.200q", path, resp.Status, err, body)
	}
	if env.Status != "success" {
		return fmt.Errorf("prometheus API %s: %s: %s", path, resp.Status, env.Error)
	}
	if err := json.Unmarshal(env.Data, v); err != nil {
		return fmt.Errorf("prometheus API %s: data: %w", path, err)
	}
	return nil
}
