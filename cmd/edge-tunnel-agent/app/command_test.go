package app

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"

	serveroptions "github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-server/app/options"
	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
)

func init() {
	// Every command run in this test binary applies the same logging
	// configuration; a real process applies it once.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

// TestAgentConnectsToServer runs both real commands from flags and
// environment, as a manifest would, and waits until the agent reports that
// it is connected; then stops both as SIGTERM would.
func TestAgentConnectsToServer(t *testing.T) {
	// The agent's certificate proves node edge-1 (common name) and
	// 127.0.0.1 (IP SAN), what it claims from NODE_NAME and NODE_IP: the
	// server checks that by default (--agent-identity=certificate).
	const agentCert = "system:node:edge-1"
	pki := clitest.WritePKI(t, "server", agentCert)
	agentPort := strconv.Itoa(clitest.FreePort(t))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The server runs in-process from its own flags; only the agent runs as
	// a cobra command (two cobra commands executing at once race on
	// pflag.CommandLine, which a real process never has).
	serverOpts := serveroptions.NewOptions()
	clitest.ParseFlags(t, serverOpts.Flags(),
		"--uds-name="+pki.Path("s.sock"), "--server-port=0",
		"--agent-bind-address=127.0.0.1", "--agent-port="+agentPort,
		"--cluster-cert="+pki.Cert("server"), "--cluster-key="+pki.Key("server"), "--cluster-ca-cert="+pki.CA(),
		"--health-port=0", "--admin-port=0", "--server-id=test-server",
	)
	if errs := serverOpts.Validate(); len(errs) != 0 {
		t.Fatalf("server flags: %v", errs)
	}
	serverCfg, err := serverOpts.Config()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(serverCfg)
	if err != nil {
		t.Fatal(err)
	}

	t.Setenv("NODE_NAME", "edge-1")
	t.Setenv("NODE_IP", "127.0.0.1")
	health := strconv.Itoa(clitest.FreePort(t))
	agentCtx, stopAgent := context.WithCancel(ctx)
	defer stopAgent()
	agent := NewCommand()
	agent.SetArgs([]string{
		"--proxy-server-host=127.0.0.1", "--proxy-server-port=" + agentPort,
		"--ca-cert=" + pki.CA(), "--agent-cert=" + pki.Cert(agentCert), "--agent-key=" + pki.Key(agentCert),
		"--health-bind-address=127.0.0.1", "--health-server-port=" + health, "--admin-server-port=0",
		"--sync-interval=50ms", "--sync-interval-cap=200ms", "--drain-grace=0s",
		"--probe-interval=1s", // deprecated and ignored, must not fail
	})

	serverDone := make(chan error, 1)
	go func() { serverDone <- srv.Run(ctx) }()
	// The agent command configures klog, which is process-wide: start it
	// only once the in-process server has logged its start.
	for start := time.Now(); !srv.Ready(); time.Sleep(10 * time.Millisecond) {
		if time.Since(start) > 10*time.Second {
			t.Fatal("server not ready within 10 s")
		}
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.ExecuteContext(agentCtx) }()

	var last string
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://127.0.0.1:" + health + "/readyz?verbose")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			last = string(body)
		} else {
			last = err.Error()
		}
		select {
		case err := <-agentDone:
			t.Fatalf("agent ended before it was ready: %v", err)
		case err := <-serverDone:
			t.Fatalf("server ended before the agent was ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready within 15s; last /readyz: %s", last)
		}
	}

	// The agent drains first, as in a rolling update of the DaemonSet.
	for _, step := range []struct {
		name string
		stop func()
		done chan error
	}{{"agent", stopAgent, agentDone}, {"server", cancel, serverDone}} {
		name, done := step.name, step.done
		step.stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s returned %v after cancel, want nil", name, err)
			}
		case <-time.After(15 * time.Second):
			t.Fatalf("%s did not stop within 15s of cancel", name)
		}
	}
}

func TestBadFlagsFailBeforeStarting(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	t.Setenv("NODE_IP", "")
	_, err := clitest.Execute(t, NewCommand(), "--proxy-server-host=tunnel.example.com")
	for _, want := range []string{"--ca-cert", "--agent-cert", "NODE_NAME"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to mention %s", err, want)
		}
	}
}

func TestVersion(t *testing.T) {
	out, err := clitest.Execute(t, NewCommand(), "--version")
	if err != nil || !strings.HasPrefix(out, "edge-tunnel-agent v") {
		t.Errorf("--version printed %q, err %v", out, err)
	}
}
