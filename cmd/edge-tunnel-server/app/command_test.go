package app

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

func init() {
	// Every command run in this test binary applies the same logging
	// configuration; a real process applies it once.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

// TestRunAndStop starts the real command from flags, waits until the socket
// and the health port answer, then cancels it as SIGTERM would and expects a
// clean return.
func TestRunAndStop(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.Issue("edge-tunnel-server", []string{"127.0.0.1"}, pki.UsageServer)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"server": srv}); err != nil {
		t.Fatal(err)
	}
	uds := filepath.Join(dir, "s.sock")
	health := freePort(t)
	args := []string{
		"--uds-name=" + uds, "--server-port=0",
		"--agent-bind-address=127.0.0.1", "--agent-port=" + strconv.Itoa(freePort(t)),
		"--cluster-cert=" + filepath.Join(dir, "server.crt"), "--cluster-key=" + filepath.Join(dir, "server.key"),
		"--cluster-ca-cert=" + filepath.Join(dir, "ca.crt"),
		"--health-bind-address=127.0.0.1", "--health-port=" + strconv.Itoa(health), "--admin-port=0",
		"--mode=grpc", // deprecated and ignored, must not fail
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := NewCommand()
	cmd.SetArgs(args)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	waitFor(t, done, func() bool {
		st, err := os.Stat(uds)
		return err == nil && st.Mode()&os.ModeSocket != 0
	}, "the UNIX socket to appear")
	waitFor(t, done, func() bool {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(health) + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "the health port to answer")

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

func TestBadFlagsFailBeforeStarting(t *testing.T) {
	cmd := NewCommand()
	cmd.SetArgs([]string{"--server-port=0"})
	cmd.SetOut(new(bytes.Buffer))
	cmd.SetErr(new(bytes.Buffer))
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "--uds-name") || !strings.Contains(err.Error(), "--cluster-cert") {
		t.Fatalf("err = %v, want it to name --uds-name and --cluster-cert", err)
	}
	cmd = NewCommand()
	cmd.SetArgs([]string{"uds-name=/tmp/s"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "takes no arguments") {
		t.Fatalf("positional argument: err = %v", err)
	}
}

func TestVersionAndHelp(t *testing.T) {
	var out bytes.Buffer
	cmd := NewCommand()
	cmd.SetArgs([]string{"--version"})
	cmd.SetOut(&out)
	t.Cleanup(func() { cmd.Flags().Set("version", "false") }) // the flag is process-global
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "edge-tunnel-server v") {
		t.Errorf("--version printed %q", out.String())
	}

	out.Reset()
	cmd = NewCommand()
	cmd.SetArgs([]string{"--help"})
	cmd.SetOut(&out)
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Frontend flags:", "Agent connections flags:", "Logging flags:", "--uds-name", "--logging-format", "-v, --v"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "--proxy-strategies") {
		t.Errorf("--help shows the deprecated --proxy-strategies")
	}
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// waitFor polls cond for up to 10s, failing early if the command ended.
func waitFor(t *testing.T, done <-chan error, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		select {
		case err := <-done:
			t.Fatalf("command ended while waiting for %s: %v", what, err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
