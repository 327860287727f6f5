package options

import (
	"context"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

// fakeAPIServer answers the two requests the ConfigMap watch makes (a list
// by field selector, then a watch, held open) over TLS, and records them.
type fakeAPIServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []*http.Request
}

func newFakeAPIServer(t *testing.T) *fakeAPIServer {
	f := &fakeAPIServer{}
	f.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Clone(context.Background()))
		f.mu.Unlock()
		if r.URL.Path != "/api/v1/namespaces/kube-system/configmaps" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if r.URL.Query().Get("watch") == "true" {
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			<-r.Context().Done()
			return
		}
		w.Write([]byte(`{"kind":"ConfigMapList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[
			{"metadata":{"name":"edge-tunnel-server-cfg","namespace":"kube-system","resourceVersion":"6"},
			 "data":{"http-proxy-ports":"9051","https-proxy-ports":"9052, 8080"}}]}`))
	}))
	t.Cleanup(f.Close)
	return f
}

// writeKubeconfig writes a plain kubeconfig file for srv: CA data, a
// bearer token, one context, as kubectl would use it.
func writeKubeconfig(t *testing.T, srv *httptest.Server) string {
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	kc := `apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: ` + srv.URL + `
    certificate-authority-data: ` + base64.StdEncoding.EncodeToString(caPEM) + `
users:
- name: edge-tunnel-server
  user:
    token: secret-token
contexts:
- name: test
  context: {cluster: test, user: edge-tunnel-server}
current-context: test
`
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func baseArgs(t *testing.T) []string {
	p := clitest.WritePKI(t, "leaf")
	return []string{"--uds-name=/s", "--server-port=0", "--cluster-cert=" + p.Cert("leaf"), "--cluster-key=" + p.Key("leaf")}
}

// TestKubeconfigWatchesTheConfigMap: --kubeconfig with a plain kubeconfig
// file gives a source that lists and watches exactly the named ConfigMap,
// authenticated as the file says.
func TestKubeconfigWatchesTheConfigMap(t *testing.T) {
	api := newFakeAPIServer(t)
	o, _ := parse(t, append(baseArgs(t), "--kubeconfig="+writeKubeconfig(t, api.Server))...)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatal(errors.Join(errs...))
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	src := cfg.PortsKube
	if src == nil || src.Namespace != "kube-system" || src.Name != "edge-tunnel-server-cfg" || cfg.PortsFile != "" {
		t.Fatalf("PortsKube = %+v, PortsFile = %q", src, cfg.PortsFile)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	applied := make(chan map[string]string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Run(ctx, func(d map[string]string) { applied <- d }, func(err error) { t.Errorf("report(%v)", err) })
	}()
	select {
	case d := <-applied:
		if d["http-proxy-ports"] != "9051" || d["https-proxy-ports"] != "9052, 8080" {
			t.Errorf("applied %v", d)
		}
	case <-ctx.Done():
		t.Fatal("nothing applied within 10 s")
	}
	waitForRequests := time.Now().Add(5 * time.Second)
	for {
		api.mu.Lock()
		n := len(api.requests)
		api.mu.Unlock()
		if n >= 2 || time.Now().After(waitForRequests) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done

	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.requests) < 2 {
		t.Fatalf("%d requests, want a list and a watch", len(api.requests))
	}
	for i, r := range api.requests[:2] {
		q := r.URL.Query()
		if q.Get("fieldSelector") != "metadata.name=edge-tunnel-server-cfg" {
			t.Errorf("request %d: fieldSelector %q", i, q.Get("fieldSelector"))
		}
		if r.Header.Get("Authorization") != "Bearer secret-token" {
			t.Errorf("request %d: Authorization %q", i, r.Header.Get("Authorization"))
		}
		if !strings.HasPrefix(r.UserAgent(), "edge-tunnel-server") {
			t.Errorf("request %d: User-Agent %q", i, r.UserAgent())
		}
	}
	if q := api.requests[1].URL.Query(); q.Get("watch") != "true" || q.Get("resourceVersion") != "7" {
		t.Errorf("second request is not a watch from the list's resourceVersion: %s", api.requests[1].URL)
	}
}

// TestPortSourceChoice: which source the flags give.
func TestPortSourceChoice(t *testing.T) {
	api := newFakeAPIServer(t)
	kc := writeKubeconfig(t, api.Server)
	inPod := func(k string) string {
		if k == "KUBERNETES_SERVICE_HOST" {
			return "10.96.0.1"
		}
		return ""
	}
	for _, tc := range []struct {
		name     string
		args     []string
		getenv   func(string) string
		wantKube string // namespace/name, or "" for none
		wantFile string
		wantErr  string
	}{
		{name: "outside a pod, no kubeconfig: none", args: nil},
		{name: "kubeconfig", args: []string{"--kubeconfig=" + kc}, wantKube: "kube-system/edge-tunnel-server-cfg"},
		{name: "kubeconfig, other ConfigMap", args: []string{"--kubeconfig=" + kc, "--ports-configmap=edge/ports"}, wantKube: "edge/ports"},
		{name: "watch off", args: []string{"--kubeconfig=" + kc, "--ports-configmap="}},
		{name: "file", args: []string{"--ports-config=/etc/ports"}, wantFile: "/etc/ports"},
		{name: "file wins over in-cluster", args: []string{"--ports-config=/etc/ports"}, getenv: inPod, wantFile: "/etc/ports"},
		// In a pod without a ServiceAccount token the server still starts
		// (with the defaults, and a warning in the log).
		{name: "in a pod without a token", getenv: inPod},
		{name: "missing kubeconfig", args: []string{"--kubeconfig=/nonexistent/kubeconfig"}, wantErr: "--kubeconfig /nonexistent/kubeconfig"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.getenv != nil && os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
				t.Skip("this test runs in a real pod, whose in-cluster config may work")
			}
			o, _ := parse(t, append(baseArgs(t), tc.args...)...)
			if tc.getenv != nil {
				o.getenv = tc.getenv
			}
			if errs := o.Validate(); len(errs) != 0 {
				t.Fatal(errors.Join(errs...))
			}
			cfg, err := o.Config()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Config: %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			gotKube := ""
			if cfg.PortsKube != nil {
				gotKube = cfg.PortsKube.Namespace + "/" + cfg.PortsKube.Name
			}
			if gotKube != tc.wantKube || cfg.PortsFile != tc.wantFile {
				t.Errorf("kube source %q, file %q; want %q, %q", gotKube, cfg.PortsFile, tc.wantKube, tc.wantFile)
			}
		})
	}
}
