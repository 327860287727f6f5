package health

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var client = &http.Client{Timeout: 5 * time.Second}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
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

func ok(*http.Request) error { return nil }

func TestHandler(t *testing.T) {
	var logFailing, sawRequest atomic.Bool
	logFailing.Store(true)
	live := []Check{
		{Name: "ping", Fn: func(r *http.Request) error {
			sawRequest.Store(r != nil && r.Context() != nil)
			return nil
		}},
		{Name: "log", Fn: func(*http.Request) error {
			if logFailing.Load() {
				return errors.New("disk full")
			}
			return nil
		}},
	}
	ready := []Check{{Name: "listeners", Fn: ok}, {Name: "agents", Fn: ok}}
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "test_things_total", Help: "Things."})
	reg.MustRegister(c)
	c.Add(3)
	srv := httptest.NewServer(Handler(live, ready, reg))
	defer srv.Close()

	tests := []struct {
		path       string
		wantStatus int
		want       []string
		notWant    []string
	}{
		{"/healthz", 500, []string{"[-]log failed: disk full\n", "healthz check failed\n"}, []string{"ping"}},
		{"/livez", 500, []string{"[-]log failed: disk full\n", "livez check failed\n"}, []string{"ping"}},
		{"/livez?verbose", 500, []string{"[+]ping ok\n[-]log failed: disk full\nlivez check failed\n"}, nil},
		{"/livez?exclude=log", 200, []string{"ok"}, []string{"log"}},
		{"/livez?exclude=log&verbose", 200, []string{"[+]ping ok\n[+]log excluded: ok\nlivez check passed\n"}, nil},
		{"/livez?exclude=nope&exclude=log&verbose", 200, []string{`no matches for "nope"`}, nil},
		{"/readyz", 200, []string{"ok"}, []string{"[+]"}},
		{"/readyz?verbose", 200, []string{"[+]listeners ok\n[+]agents ok\nreadyz check passed\n"}, nil},
		{"/readyz?verbose=1", 200, []string{"[+]listeners ok"}, nil},
		{"/readyz/agents", 200, []string{"ok"}, nil},
		{"/livez/log", 500, []string{"[-]log failed: disk full"}, nil},
		{"/livez/ping", 200, []string{"ok"}, nil},
		{"/readyz/nope", 404, nil, nil},
		{"/metrics", 200, []string{"test_things_total 3"}, nil},
		{"/", 404, nil, nil},
	}
	for _, tt := range tests {
		status, body := get(t, srv.URL+tt.path)
		if status != tt.wantStatus {
			t.Errorf("GET %s: status %d, want %d (body %q)", tt.path, status, tt.wantStatus, body)
		}
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s: body %q does not contain %q", tt.path, body, w)
			}
		}
		for _, w := range tt.notWant {
			if strings.Contains(body, w) {
				t.Errorf("GET %s: body %q contains %q", tt.path, body, w)
			}
		}
	}
	if !sawRequest.Load() {
		t.Error("check function did not get the request")
	}

	// Exact bodies once the failing check recovers.
	logFailing.Store(false)
	if status, body := get(t, srv.URL+"/healthz"); status != 200 || body != "ok" {
		t.Errorf("GET /healthz after recovery: %d %q, want 200 \"ok\"", status, body)
	}
	resp, err := client.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
}

func TestHandlerWithoutMetrics(t *testing.T) {
	var nilReg *prometheus.Registry
	for name, g := range map[string]prometheus.Gatherer{"nil": nil, "typed nil": nilReg} {
		srv := httptest.NewServer(Handler(nil, []Check{{Name: "broken"}}, g))
		if status, _ := get(t, srv.URL+"/metrics"); status != 404 {
			t.Errorf("%s gatherer: /metrics status %d, want 404", name, status)
		}
		if status, body := get(t, srv.URL+"/healthz"); status != 200 || body != "ok" {
			t.Errorf("%s gatherer: no live checks: %d %q, want 200 ok", name, status, body)
		}
		if status, body := get(t, srv.URL+"/readyz"); status != 500 || !strings.Contains(body, "[-]broken failed: no check function") {
			t.Errorf("%s gatherer: check without Fn: %d %q", name, status, body)
		}
		srv.Close()
	}
}

func TestServe(t *testing.T) {
	release := make(chan struct{})
	inHandler := make(chan struct{})
	h := http.NewServeMux()
	h.Handle("/", Handler([]Check{{Name: "ping", Fn: ok}}, nil, nil))
	h.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		close(inHandler)
		<-release
		io.WriteString(w, "done")
	})

	// Find a free port, then let Serve bind it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, addr, h, ready) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("ready not closed")
	}
	if status, body := get(t, "http://"+addr+"/livez"); status != 200 || body != "ok" {
		t.Fatalf("GET /livez: %d %q", status, body)
	}

	// A second Serve on the same port fails at once.
	start := time.Now()
	err = Serve(context.Background(), addr, h, nil)
	if err == nil || !strings.Contains(err.Error(), "listen on "+addr) {
		t.Fatalf("Serve on a busy port: %v, want a listen error", err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("Serve on a busy port took %v", time.Since(start))
	}

	// A request in flight finishes during shutdown.
	slow := make(chan string, 1)
	go func() {
		resp, err := client.Get("http://" + addr + "/slow")
		if err != nil {
			slow <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		slow <- string(b)
	}()
	<-inHandler
	cancel()
	// Shutdown closes the listener first, then waits for the handler.
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("listener still accepting 2 s after ctx ended")
		}
	}
	close(release)
	if got := <-slow; got != "done" {
		t.Fatalf("in-flight request: %q", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve returned %v after a clean shutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
}

func TestServeBadAddr(t *testing.T) {
	err := Serve(context.Background(), "127.0.0.1:notaport", http.NotFoundHandler(), nil)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:notaport") {
		t.Fatalf("Serve on a bad address: %v", err)
	}
}

func TestAdminHandler(t *testing.T) {
	srv := httptest.NewServer(AdminHandler())
	defer srv.Close()
	for _, tt := range []struct {
		path, want string
		status     int
	}{
		{"/debug/pprof/", "goroutine", 200},
		{"/debug/pprof/goroutine?debug=1", "goroutine profile", 200},
		{"/debug/pprof/cmdline", "", 200},
		{"/debug/pprof/symbol", "num_symbols", 200},
		{"/metrics", "", 404},
		{"/healthz", "", 404},
	} {
		status, body := get(t, srv.URL+tt.path)
		if status != tt.status || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s: %d, body contains %q: %v", tt.path, status, tt.want, strings.Contains(body, tt.want))
		}
	}
}

// TestInformationalCheck: an informational check shows its problem as a
// warning and never fails the endpoint; a real failure still does.
func TestInformationalCheck(t *testing.T) {
	var apiDown, listenersDown atomic.Bool
	apiDown.Store(true)
	ready := []Check{
		{Name: "listeners", Fn: func(*http.Request) error {
			if listenersDown.Load() {
				return errors.New("not bound")
			}
			return nil
		}},
		{Name: "ports-config", Informational: true, Fn: func(*http.Request) error {
			if apiDown.Load() {
				return errors.New("the Kubernetes API cannot be read; keeping generation 3")
			}
			return nil
		}},
	}
	srv := httptest.NewServer(Handler(nil, ready, nil))
	defer srv.Close()

	for _, tc := range []struct {
		path   string
		status int
		body   string
	}{
		{"/readyz", 200, "ok"},
		{"/readyz?verbose", 200, "[+]listeners ok\n[+]ports-config ok (warning: the Kubernetes API cannot be read; keeping generation 3)\nreadyz check passed\n"},
		{"/readyz/ports-config", 200, "ok (warning: the Kubernetes API cannot be read; keeping generation 3)\n"},
	} {
		if status, body := get(t, srv.URL+tc.path); status != tc.status || body != tc.body {
			t.Errorf("GET %s = %d %q, want %d %q", tc.path, status, body, tc.status, tc.body)
		}
	}

	apiDown.Store(false)
	if status, body := get(t, srv.URL+"/readyz?verbose"); status != 200 || !strings.Contains(body, "[+]ports-config ok\n") {
		t.Errorf("recovered: %d %q", status, body)
	}
	if status, body := get(t, srv.URL+"/readyz/ports-config"); status != 200 || body != "ok" {
		t.Errorf("recovered, one check: %d %q", status, body)
	}

	apiDown.Store(true)
	listenersDown.Store(true)
	if status, body := get(t, srv.URL+"/readyz"); status != 500 || !strings.Contains(body, "[-]listeners failed: not bound") || strings.Contains(body, "ports-config") {
		t.Errorf("with a real failure: %d %q", status, body)
	}
}
