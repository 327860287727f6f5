package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// TestCertsFilesWork runs `edge-tunnel-server certs` through the real
// command and proves the files with the TLS code the binaries use: an agent
// with agent.crt connects to a server with server.crt (by a name in
// --server-hosts), and a frontend client with frontend-client.crt to the
// frontend; an agent certificate is refused as a server certificate.
func TestCertsFilesWork(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	out, err := clitest.Execute(t, NewCommand(), "certs", "--out-dir", dir, "--server-hosts", "edge-tunnel.example.com,127.0.0.1")
	if err != nil {
		t.Fatalf("certs: %v\n%s", err, out)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	for name, mode := range map[string]os.FileMode{
		"ca.crt": 0o644, "ca.key": 0o600, "server.crt": 0o644, "server.key": 0o600, "agent.crt": 0o644, "agent.key": 0o600,
		"frontend.crt": 0o644, "frontend.key": 0o600, "frontend-client.crt": 0o644, "frontend-client.key": 0o600,
	} {
		st, err := os.Stat(f(name))
		if err != nil {
			t.Fatalf("%s not written: %v", name, err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s has mode %v, want %v", name, st.Mode().Perm(), mode)
		}
	}

	handshake := func(srvCert, srvKey, cliCert, cliKey, name string) error {
		t.Helper()
		srv, err := tlsutil.ServerConfig(f(srvCert), f(srvKey), f("ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		cli, err := tlsutil.ClientConfig(f("ca.crt"), f(cliCert), f(cliKey), name)
		if err != nil {
			t.Fatal(err)
		}
		return clitest.Handshake(t, srv, cli)
	}
	if err := handshake("server.crt", "server.key", "agent.crt", "agent.key", "edge-tunnel.example.com"); err != nil {
		t.Errorf("agent -> agent port by name: %v", err)
	}
	if err := handshake("server.crt", "server.key", "agent.crt", "agent.key", "127.0.0.1"); err != nil {
		t.Errorf("agent -> agent port by address: %v", err)
	}
	if err := handshake("frontend.crt", "frontend.key", "frontend-client.crt", "frontend-client.key", "edge-tunnel-server.kube-system.svc"); err != nil {
		t.Errorf("client -> frontend: %v", err)
	}
	if err := handshake("server.crt", "server.key", "agent.crt", "agent.key", "other.example.com"); err == nil {
		t.Error("the agent port's certificate was accepted for a name not in --server-hosts")
	}
	if err := handshake("agent.crt", "agent.key", "server.crt", "server.key", "127.0.0.1"); err == nil {
		t.Error("a client certificate was accepted as a server certificate")
	}
}

func TestCertsFlagErrors(t *testing.T) {
	_, err := clitest.Execute(t, NewCommand(), "certs", "--ca-cert", "x", "--frontend-hosts", "")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"--out-dir is required", "--server-hosts is required", "--frontend-hosts must not be empty", "--ca-cert and --ca-key go together"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
}
