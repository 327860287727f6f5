package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// adminServer runs a server with health and admin ports whose port policy
// follows the given Kubernetes client, and returns the two base URLs.
func adminServer(t *testing.T, client *fake.Clientset) (srv *server.Server, health, admin string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("edge-tunnel-test")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue("server", []string{"127.0.0.1"}, "server")
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"server": p}); err != nil {
		t.Fatal(err)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	agentTLS, err := tlsutil.ServerConfig(f("server.crt"), f("server.key"), f("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	srv, err = server.New(server.Config{
		UDSName: filepath.Join(dir, "s.sock"), AgentAddr: "127.0.0.1:0", AgentTLS: agentTLS, ServerID: "s1",
		HealthAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", ShutdownGrace: time.Second,
		Registry:  prometheus.NewRegistry(),
		PortsKube: &ports.KubeSource{Client: client, Namespace: "kube-system", Name: ports.DefaultName, MaxBackoff: 100 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, srv.Run)
	waitFor(t, "server listeners", srv.Ready)
	return srv, "http://" + srv.Addr("health").String(), "http://" + srv.Addr("admin").String()
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func portsPage(t *testing.T, admin string) server.PortsView {
	t.Helper()
	status, body := httpGet(t, admin+"/ports")
	if status != http.StatusOK {
		t.Fatalf("GET /ports: %d %s", status, body)
	}
	var v server.PortsView
	if err := json.Unmarshal([]byte(body), &v); err != nil {
		t.Fatalf("GET /ports: %v in %s", err, body)
	}
	return v
}

// metricLine returns the line of an unlabelled metric in /metrics.
func metricLine(t *testing.T, health, name string) string {
	t.Helper()
	_, body := httpGet(t, health+"/metrics")
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name+" ") {
			return l
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return ""
}

// TestPortsAdminFollowsTheAPI: a change of the ConfigMap through the API
// shows on the admin endpoint /ports and in the generation metric within
// 2 s; bad items are warned about once, not on every change; deletion
// returns to the defaults.
func TestPortsAdminFollowsTheAPI(t *testing.T) {
	client := fake.NewClientset()
	watching := make(chan struct{}, 10)
	client.PrependWatchReactor("configmaps", func(a k8stesting.Action) (bool, watch.Interface, error) {
		w, err := client.Tracker().Watch(a.GetResource(), a.GetNamespace())
		watching <- struct{}{}
		return true, w, err
	})
	_, health, admin := adminServer(t, client)

	waitFor(t, "the initial list", func() bool { return portsPage(t, admin).Generation == 1 })
	select { // the fake does not replay events a late watch missed
	case <-watching:
	case <-time.After(5 * time.Second):
		t.Fatal("no watch opened")
	}
	v := portsPage(t, admin)
	if !strings.Contains(v.Source, "absent: defaults") || !v.SourceUp || len(v.HTTP) != 0 ||
		!slices.Equal(v.Always, []int{10250, 10255}) || !slices.Equal(v.Localhost, ports.DefaultLocalhost) {
		t.Fatalf("before the ConfigMap exists: %+v", v)
	}

	cms := client.CoreV1().ConfigMaps("kube-system")
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: ports.DefaultName},
		Data: map[string]string{ports.KeyHTTP: "9051, bogus", "http-proxy-port": "9052"}}
	ctx := context.Background()
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "generation 2 on /ports", func() bool { return portsPage(t, admin).Generation == 2 })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the change took %v to show, want <= 2 s", d)
	}
	v = portsPage(t, admin)
	if v.Source != "configmap kube-system/edge-tunnel-server-cfg" || !slices.Equal(v.HTTP, []int{9051}) || len(v.Warnings) != 2 ||
		!strings.Contains(strings.Join(v.Warnings, "\n"), `"bogus"`) || !strings.Contains(strings.Join(v.Warnings, "\n"), "http-proxy-port:") {
		t.Fatalf("after the create: %+v", v)
	}
	if v.Applied.IsZero() || time.Since(v.Applied) > 10*time.Second {
		t.Errorf("applied time %v", v.Applied)
	}
	if l := metricLine(t, health, "edge_tunnel_server_ports_config_generation"); l != "edge_tunnel_server_ports_config_generation 2" {
		t.Errorf("metric: %q", l)
	}
	if l := metricLine(t, health, "edge_tunnel_server_ports_config_warnings_total"); l != "edge_tunnel_server_ports_config_warnings_total 2" {
		t.Errorf("metric: %q", l)
	}

	// Another change keeps the two bad items: they are not counted again.
	cm.Data[ports.KeyHTTPS] = "8443"
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "generation 3", func() bool { return portsPage(t, admin).Generation == 3 })
	if v := portsPage(t, admin); !slices.Equal(v.HTTPS, []int{8443}) || len(v.Warnings) != 2 {
		t.Fatalf("after the update: %+v", v)
	}
	if l := metricLine(t, health, "edge_tunnel_server_ports_config_warnings_total"); l != "edge_tunnel_server_ports_config_warnings_total 2" {
		t.Errorf("repeated warnings counted again: %q", l)
	}

	if err := cms.Delete(ctx, ports.DefaultName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "generation 4", func() bool { return portsPage(t, admin).Generation == 4 })
	if v := portsPage(t, admin); len(v.HTTP)+len(v.HTTPS) != 0 || len(v.Warnings) != 0 || !strings.Contains(v.Source, "absent: defaults") {
		t.Fatalf("after the delete: %+v", v)
	}
	if l := metricLine(t, health, "edge_tunnel_server_ports_config_generation"); l != "edge_tunnel_server_ports_config_generation 4" {
		t.Errorf("metric: %q", l)
	}
	// pprof is still on the admin port beside /ports.
	if status, _ := httpGet(t, admin+"/debug/pprof/cmdline"); status != http.StatusOK {
		t.Errorf("pprof: %d", status)
	}
}

// TestPortsAPIDownIsReportedNotFatal: an API that cannot be reached leaves
// the server ready with its start-up policy, and says so on /readyz?verbose,
// /ports and the source_up metric.
func TestPortsAPIDownIsReportedNotFatal(t *testing.T) {
	client := fake.NewClientset()
	refuse := func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
	}
	client.PrependReactor("list", "configmaps", refuse)
	client.PrependWatchReactor("configmaps", func(k8stesting.Action) (bool, watch.Interface, error) {
		return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
	})
	_, health, admin := adminServer(t, client)

	waitFor(t, "source_up 0", func() bool {
		return metricLine(t, health, "edge_tunnel_server_ports_config_source_up") == "edge_tunnel_server_ports_config_source_up 0"
	})
	if status, body := httpGet(t, health+"/readyz"); status != http.StatusOK || body != "ok" {
		t.Errorf("/readyz with the API down: %d %q, want 200 ok", status, body)
	}
	status, body := httpGet(t, health+"/readyz?verbose")
	if status != http.StatusOK || !strings.Contains(body, "[+]ports-config ok (warning: the port configuration cannot be read since") ||
		!strings.Contains(body, "connection refused") || !strings.Contains(body, "still using generation 0") {
		t.Errorf("/readyz?verbose: %d %q", status, body)
	}
	v := portsPage(t, admin)
	if v.SourceUp || !strings.Contains(v.LastError, "connection refused") || v.LastErrorTime == nil || v.Generation != 0 {
		t.Errorf("/ports with the API down: %+v", v)
	}
}

func TestTwoPortSourcesRefused(t *testing.T) {
	_, err := server.New(server.Config{UDSName: "/x", AgentAddr: "127.0.0.1:0", AgentTLS: &tls.Config{}, ServerID: "s",
		PortsFile: "/etc/edge-tunnel/ports", PortsKube: &ports.KubeSource{Client: fake.NewClientset()}})
	if err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Fatalf("New with two port sources: %v", err)
	}
}
