package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

func init() {
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

// TestRunAndStop starts the real command against a socket nobody serves:
// the proxy comes up, answers with the reason it cannot reach the server,
// and stops cleanly when cancelled as SIGTERM would.
func TestRunAndStop(t *testing.T) {
	port := clitest.FreePort(t)
	uds := t.TempDir() + "/missing.sock"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := NewCommand()
	cmd.SetArgs([]string{"--uds-name=" + uds, "--port=" + strconv.Itoa(port), "--dial-timeout=2s"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	proxyURL := &url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	deadline := time.Now().Add(10 * time.Second)
	var resp *http.Response
	var err error
	for {
		resp, err = client.Get("http://127.0.0.1:10255/pods")
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("command ended early: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("the proxy never answered: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "cannot reach edge-tunnel-server at "+uds) {
		t.Errorf("got %s %q, want 502 saying the server is unreachable", resp.Status, body)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("command returned %v after cancel, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("command did not stop within 15s of cancel")
	}
}

func TestBadFlagsAndHelp(t *testing.T) {
	if _, err := clitest.Execute(t, NewCommand()); err == nil || !strings.Contains(err.Error(), "--uds-name") {
		t.Errorf("no server: err = %v", err)
	}
	out, err := clitest.Execute(t, NewCommand(), "--version")
	if err != nil || !strings.HasPrefix(out, "edge-tunnel-proxy v") {
		t.Errorf("--version printed %q, err %v", out, err)
	}
	out, err = clitest.Execute(t, NewCommand(), "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Proxy flags:", "Server connection flags:", "--bind-address", "--server-host", "HTTPS_PROXY"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
}
