package server_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writePorts(t *testing.T, path, yaml string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

// TestPortPolicy: edge-node ports follow ConfigMap edge-tunnel-server-cfg
// (here mounted as a file): unconfigured ports are refused with a message
// that says how to allow them, localhost-proxy-ports are dialed on the
// node's loopback by either kind of agent, and a change applies within 2 s
// without cutting open connections.
func TestPortPolicy(t *testing.T) {
	cm := filepath.Join(t.TempDir(), "edge-tunnel-server-cfg.yaml")
	target := echoServer(t) // listens on 127.0.0.1 only
	_, port, _ := net.SplitHostPort(target)
	writePorts(t, cm, "kind: ConfigMap\ndata:\n  localhost-proxy-ports: \""+port+"\"\n")

	e := newEnv(t, envOptions{connStreams: true, portsFile: cm})
	// Two nodes whose address is 127.0.0.2 / 127.0.0.3: the target is not
	// listening there, only on the nodes' loopback.
	e.addAgent(t, "node-new", true, "127.0.0.2")
	e.addAgent(t, "node-upstream", false, "127.0.0.3")

	for _, node := range []string{"127.0.0.2", "127.0.0.3", "node-new"} {
		c, err := e.dialGRPC(context.Background(), net.JoinHostPort(node, port))
		if err != nil {
			t.Fatalf("%s:%s (localhost-proxy-ports): %v", node, port, err)
		}
		echoRoundTrip(t, c, 1000)
		c.Close()
	}

	start := time.Now()
	_, err := e.dialGRPC(context.Background(), "127.0.0.2:22")
	if err == nil || !strings.Contains(err.Error(), "port 22 of edge node") || !strings.Contains(err.Error(), "http-proxy-ports") {
		t.Fatalf("dial of an unconfigured port: %v; want a refusal naming the port and the key", err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("refusal took %v", time.Since(start))
	}

	// Live change: the localhost port is removed and a plain http port is
	// added. The open connection survives; new dials follow the new policy.
	open, err := e.dialGRPC(context.Background(), net.JoinHostPort("127.0.0.2", port))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	other := echoServerOn(t, "127.0.0.2:0") // a service on the node's address
	_, otherPort, _ := net.SplitHostPort(other)
	writePorts(t, cm, "kind: ConfigMap\ndata:\n  http-proxy-ports: \""+otherPort+"\"\n")
	changed := time.Now()
	waitFor(t, "the new port policy", func() bool {
		c, err := e.dialGRPC(context.Background(), other)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	if d := time.Since(changed); d > 2*time.Second {
		t.Fatalf("the change took %v to apply, want <= 2 s", d)
	}
	if _, err := e.dialGRPC(context.Background(), net.JoinHostPort("127.0.0.2", port)); err == nil || !strings.Contains(err.Error(), "not forwarded") {
		t.Fatalf("removed port still dialable: %v", err)
	}
	echoRoundTrip(t, open, 1000)

	// Deleting the ConfigMap returns to the defaults.
	os.Remove(cm)
	waitFor(t, "defaults after the ConfigMap is gone", func() bool {
		_, err := e.dialGRPC(context.Background(), other)
		return err != nil && strings.Contains(err.Error(), "not forwarded")
	})
}
