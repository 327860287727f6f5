package app

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
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
	pki := clitest.WritePKI(t, "server")
	uds := pki.Path("s.sock")
	health := clitest.FreePort(t)
	args := []string{
		"--uds-name=" + uds, "--server-port=0",
		"--agent-bind-address=127.0.0.1", "--agent-port=" + strconv.Itoa(clitest.FreePort(t)),
		"--cluster-cert=" + pki.Cert("server"), "--cluster-key=" + pki.Key("server"), "--cluster-ca-cert=" + pki.CA(),
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
	_, err := clitest.Execute(t, NewCommand(), "--server-port=0")
	if err == nil || !strings.Contains(err.Error(), "--uds-name") || !strings.Contains(err.Error(), "--cluster-cert") {
		t.Fatalf("err = %v, want it to name --uds-name and --cluster-cert", err)
	}
	if _, err := clitest.Execute(t, NewCommand(), "uds-name=/tmp/s"); err == nil || !strings.Contains(err.Error(), "takes no arguments") {
		t.Fatalf("positional argument: err = %v", err)
	}
}

func TestVersionAndHelp(t *testing.T) {
	out, err := clitest.Execute(t, NewCommand(), "--version")
	if err != nil || !strings.HasPrefix(out, "edge-tunnel-server v") {
		t.Errorf("--version printed %q, err %v", out, err)
	}

	out, err = clitest.Execute(t, NewCommand(), "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Frontend flags:", "Agent connections flags:", "Logging flags:", "--uds-name", "--logging-format", "-v, --v"} {
		if !strings.Contains(out, want) {
			t.Errorf("--help lacks %q", want)
		}
	}
	if strings.Contains(out, "--proxy-strategies") {
		t.Errorf("--help shows the deprecated --proxy-strategies")
	}
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
