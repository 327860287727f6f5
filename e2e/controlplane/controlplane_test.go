package controlplane_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/controlplane"
	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

var (
	skipReason string
	tools      controlplane.Tools
	toolsErr   error
)

func TestMain(m *testing.M) {
	skipReason = controlplane.SkipReason()
	if skipReason == "" {
		start := time.Now()
		err := controlplane.Lock()
		var root string
		if err == nil {
			root, err = filepath.Abs(filepath.Join("..", ".."))
		}
		if err == nil {
			tools, err = controlplane.BuildTools(root)
		}
		toolsErr = err
		fmt.Fprintf(os.Stderr, "controlplane: tools ready in %s (kube-apiserver %s)\n", time.Since(start).Round(time.Millisecond), tools.KubernetesVersion)
	}
	harness.Main(m)
}

// setup skips the test when the control plane cannot run here, and
// fails it when the tools could not be built.
func setup(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
	if toolsErr != nil {
		t.Fatalf("build the control-plane tools: %v", toolsErr)
	}
}

// Streaming protocols between kubectl and kube-apiserver. kubectl 1.35
// speaks WebSocket by default (kube-apiserver then speaks SPDY to the
// kubelet); the variables switch kubectl back to SPDY end to end.
var streamProtocols = []struct {
	name string
	env  []string
}{
	{"websocket", nil},
	{"spdy", []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false", "KUBECTL_PORT_FORWARD_WEBSOCKETS=false"}},
}

func logLine(n *controlplane.Node, i int) string {
	return fmt.Sprintf("log line %d of default/%s/app on node %s", i, n.Pod, n.Name)
}

// TestEdgeNodesUnreachableFromCloud shows the premise of every other test:
// the host (the cloud side, where kube-apiserver runs) cannot open a
// connection to an edge node's kubelet, while the kubelet is serving for
// anyone inside the node.
func TestEdgeNodesUnreachableFromCloud(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{})
	for _, n := range c.Nodes {
		addr := net.JoinHostPort(n.Addr.String(), strconv.Itoa(controlplane.KubeletPort))
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			t.Errorf("the host opened a connection to %s (kubelet of %s); the edge node's firewall should drop it", addr, n.Name)
		} else {
			t.Logf("host -> %s: %v (as intended)", addr, err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err = n.DialContext(ctx, "tcp", addr)
		cancel()
		if err != nil {
			t.Errorf("from inside %s, %s is not reachable either (%v): the test above proves nothing", n.Name, addr, err)
		} else {
			conn.Close()
		}
	}
}

// TestKubectl runs kubectl logs, logs -f, exec, attach and port-forward
// (WebSocket and SPDY) and node proxy requests against a pod on every edge
// node, through each egress mode of kube-apiserver.
func TestKubectl(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{})
	for _, mode := range controlplane.EgressModes {
		t.Run(mode.Name, func(t *testing.T) {
			start := time.Now()
			_, k := c.StartAPIServer(t, mode)
			t.Logf("kube-apiserver (%s) up and nodes registered in %s", mode.Name, time.Since(start).Round(time.Millisecond))
			for _, n := range c.Nodes {
				t.Run(n.Name, func(t *testing.T) { kubectlSuite(t, k, n) })
			}
		})
	}
}

func kubectlSuite(t *testing.T, k *controlplane.Kubectl, n *controlplane.Node) {
	t.Run("logs", func(t *testing.T) {
		r := k.Run(controlplane.RunOptions{}, "logs", n.Pod)
		want := strings.Join([]string{logLine(n, 1), logLine(n, 2), logLine(n, 3)}, "\n") + "\n"
		if r.ExitCode != 0 || r.Stdout != want {
			t.Errorf("want stdout %q, exit 0; got %s", want, r)
		}
	})
	t.Run("logs-follow", func(t *testing.T) {
		s := k.Start(t, nil, "logs", "-f", n.Pod)
		// Lines after the third are written while kubectl follows.
		want := logLine(n, 6)
		s.WaitLine(t, 15*time.Second, "followed line "+strconv.Quote(want), func(l string) bool { return l == want })
	})
	t.Run("node-proxy", func(t *testing.T) {
		for path, want := range map[string]string{
			"/api/v1/nodes/" + n.Name + "/proxy/healthz":    "ok", // kubelet port, HTTPS
			"/api/v1/nodes/" + n.Name + ":10255/proxy/pods": `"kind":"PodList"`,
		} {
			r := k.Run(controlplane.RunOptions{}, "get", "--raw", path)
			if r.ExitCode != 0 || !strings.Contains(r.Stdout, want) {
				t.Errorf("want stdout containing %q, exit 0; got %s", want, r)
			}
		}
	})
	for _, proto := range streamProtocols {
		t.Run("exec-"+proto.name, func(t *testing.T) {
			r := k.Run(controlplane.RunOptions{Stdin: "hello through the tunnel\n", Env: proto.env},
				"exec", "-i", n.Pod, "-c", "app", "--",
				"sh", "-c", `cat; echo "node=$NODE_NAME pod=$POD"; echo to-stderr >&2; exit 7`)
			wantOut := "hello through the tunnel\nnode=" + n.Name + " pod=default/" + n.Pod + "\n"
			if r.Err != nil || r.ExitCode != 7 || r.Stdout != wantOut || !strings.Contains(r.Stderr, "to-stderr") {
				t.Errorf("want stdout %q, stderr with \"to-stderr\", exit code 7 (the command's); got %s", wantOut, r)
			}
		})
		t.Run("attach-"+proto.name, func(t *testing.T) {
			r := k.Run(controlplane.RunOptions{Stdin: "ping over attach\n", Env: proto.env}, "attach", "-i", n.Pod, "-c", "app")
			greeting := "attached to default/" + n.Pod + " container app on node " + n.Name
			if r.ExitCode != 0 || !strings.Contains(r.Stdout, greeting) || !strings.Contains(r.Stdout, "ping over attach") {
				t.Errorf("want stdout with %q and the echoed stdin, exit 0; got %s", greeting, r)
			}
		})
		t.Run("port-forward-"+proto.name, func(t *testing.T) {
			s := k.Start(t, proto.env, "port-forward", "--address", "127.0.0.1", "pod/"+n.Pod, ":"+strconv.Itoa(controlplane.LocalhostPort))
			re := regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+) -> ` + strconv.Itoa(controlplane.LocalhostPort))
			line := s.WaitLine(t, 15*time.Second, "the local port", re.MatchString)
			local := re.FindStringSubmatch(line)[1]
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			// Two requests, two connections: two streams over one forward.
			for i := range 2 {
				path := fmt.Sprintf("/through-port-forward/%d", i)
				body, err := get(client, "http://127.0.0.1:"+local+path)
				want := fmt.Sprintf("localhost on node %s: %s\n", n.Name, path)
				if err != nil || body != want {
					t.Fatalf("GET %s through kubectl port-forward: want %q, got %q, %v\nkubectl output:\n%s", path, want, body, err, s.Output())
				}
			}
		})
	}
}

// TestFaults kills and restarts the pieces a user will see fail: an agent
// and the server. kubectl must get an error quickly rather than hang, and
// everything must work again once the piece is back.
func TestFaults(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{})
	_, k := c.StartAPIServer(t, controlplane.EgressModes[0])
	victim, bystander := c.Nodes[0], c.Nodes[1]
	logsWork := func(t *testing.T, n *controlplane.Node, within time.Duration) {
		t.Helper()
		var last controlplane.Result
		deadline := time.Now().Add(within)
		for {
			last = k.Run(controlplane.RunOptions{Timeout: 20 * time.Second}, "logs", n.Pod)
			if last.ExitCode == 0 && strings.HasPrefix(last.Stdout, logLine(n, 1)) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("kubectl logs on %s does not work within %s; last attempt: %s", n.Name, within, last)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	logsWork(t, victim, 0)
	logsWork(t, bystander, 0)

	// The steps share one cluster, so they run in order in this test (an
	// agent started in a subtest would be stopped at its end).
	t.Log("step: kill the agent of " + victim.Name)
	follow := k.Start(t, nil, "logs", "-f", victim.Pod)
	follow.WaitLine(t, 15*time.Second, "the first log line", func(l string) bool { return l == logLine(victim, 1) })
	killed := time.Now()
	victim.Agent.Kill()
	select {
	case <-follow.Done():
		t.Logf("kubectl logs -f ended %s after the agent was killed (%v)", time.Since(killed).Round(time.Millisecond), follow.Err())
	case <-time.After(10 * time.Second):
		t.Errorf("kubectl logs -f still runs 10 s after the agent of %s was killed; output:\n%s", victim.Name, follow.Output())
	}
	r := k.Run(controlplane.RunOptions{Timeout: 40 * time.Second}, "logs", victim.Pod)
	if r.ExitCode == 0 || r.Err != nil {
		t.Errorf("kubectl logs on %s with its agent killed: want a kubectl error; got %s", victim.Name, r)
	}
	if r.Elapsed > 3*time.Second {
		t.Errorf("kubectl logs on %s with its agent killed took %s to fail; want an error within seconds: %s", victim.Name, r.Elapsed, r)
	}
	if !strings.Contains(r.Stderr, "disconnected") {
		t.Errorf("kubectl logs on %s with its agent killed: want the server's message that the agent disconnected; got %s", victim.Name, r)
	}
	t.Logf("kubectl logs on %s without its agent: exit %d after %s: %s", victim.Name, r.ExitCode, r.Elapsed.Round(time.Millisecond), strings.TrimSpace(r.Stderr))
	logsWork(t, bystander, 0)

	t.Log("step: restart the agent of " + victim.Name)
	c.StartAgent(t, victim)
	c.Server.WaitAgents(t, 2)
	logsWork(t, victim, 10*time.Second)

	t.Log("step: restart edge-tunnel-server")
	c.Server.Restart(t)
	c.Server.WaitAgents(t, 2)
	for _, n := range c.Nodes {
		logsWork(t, n, 10*time.Second)
	}
	r = k.Run(controlplane.RunOptions{Stdin: "after restart\n"}, "exec", "-i", victim.Pod, "--", "cat")
	if r.ExitCode != 0 || r.Stdout != "after restart\n" {
		t.Errorf("kubectl exec after the server restart: want stdout %q; got %s", "after restart\n", r)
	}
}

func get(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// TestPortPolicy changes ConfigMap kube-system/edge-tunnel-server-cfg with
// kubectl while everything runs: an edge-node port that is not configured
// is refused with edge-tunnel-server's message, which the kubectl user
// sees; once the ConfigMap names it, the same request works within
// seconds (plain HTTP, TLS end to end, and a service listening only on the
// node's loopback).
func TestPortPolicy(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{PortsFromAPI: true})
	n := c.Nodes[0]
	httpPath := fmt.Sprintf("/api/v1/nodes/%s:%d/proxy/metrics", n.Name, controlplane.ExtraHTTPPort)
	tlsPath := fmt.Sprintf("/api/v1/nodes/https:%s:%d/proxy/secure", n.Name, controlplane.ExtraTLSPort)
	localPath := fmt.Sprintf("/api/v1/nodes/%s:%d/proxy/local", n.Name, controlplane.LocalhostPort)
	configMap := fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: edge-tunnel-server-cfg, namespace: kube-system}
data:
  http-proxy-ports: "%d"
  https-proxy-ports: "%d"
  localhost-proxy-ports: "10250, 10255, 10266, 10267, %d"
`, controlplane.ExtraHTTPPort, controlplane.ExtraTLSPort, controlplane.LocalhostPort)

	for _, mode := range controlplane.EgressModes {
		t.Run(mode.Name, func(t *testing.T) {
			_, k := c.StartAPIServer(t, mode)
			k.MustRun(t, "delete", "configmap", "-n", "kube-system", "edge-tunnel-server-cfg", "--ignore-not-found")
			// kube-apiserver dials the node by its address.
			refused := fmt.Sprintf("port %d of edge node %q is not forwarded", controlplane.ExtraHTTPPort, n.Addr.String())
			r := eventually(t, k, 15*time.Second, httpPath, func(r controlplane.Result) bool {
				return r.ExitCode != 0 && strings.Contains(r.Stderr, refused)
			})
			if !strings.Contains(r.Stderr, "edge-tunnel-server-cfg") {
				t.Errorf("the refusal does not tell the kubectl user which ConfigMap to change: %s", r)
			}
			t.Logf("unconfigured port, as kubectl shows it: %s", strings.TrimSpace(r.Stderr))

			applied := time.Now()
			k.Apply(t, configMap)
			eventually(t, k, 15*time.Second, httpPath, func(r controlplane.Result) bool {
				return r.ExitCode == 0 && r.Stdout == fmt.Sprintf("extra-http on node %s: /metrics\n", n.Name)
			})
			t.Logf("kubectl apply of the ConfigMap took effect within %s", time.Since(applied).Round(100*time.Millisecond))
			for path, want := range map[string]string{
				tlsPath:   fmt.Sprintf("extra-https on node %s: /secure\n", n.Name),
				localPath: fmt.Sprintf("localhost on node %s: /local\n", n.Name),
			} {
				if r := k.Run(controlplane.RunOptions{}, "get", "--raw", path); r.ExitCode != 0 || r.Stdout != want {
					t.Errorf("want stdout %q, exit 0; got %s", want, r)
				}
			}
			// Removing the port again is not checked here: kube-apiserver
			// keeps its proxy connections alive, and connections already
			// open are not cut by a policy change (by design).
		})
	}
}

// eventually runs kubectl get --raw path until ok accepts the result, and
// returns that result; it fails the test with the last result after
// timeout.
func eventually(t *testing.T, k *controlplane.Kubectl, timeout time.Duration, path string, ok func(controlplane.Result) bool) controlplane.Result {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r := k.Run(controlplane.RunOptions{Timeout: 20 * time.Second}, "get", "--raw", path)
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("no expected answer within %s; last: %s", timeout, r)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestMetricsServer runs metrics-server with the edge-tunnel-proxy sidecar
// and shows `kubectl top node` listing the edge nodes with what their
// kubelets report: the scrapes go sidecar -> server -> agent -> kubelet,
// and kube-apiserver reaches metrics-server (in the cloud) through the
// cluster egress, which edge-tunnel-server dials directly.
func TestMetricsServer(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{})
	for i, mode := range []controlplane.EgressMode{controlplane.EgressModes[0], controlplane.EgressModes[2]} {
		via := []string{"uds", "mtls"}[i]
		t.Run(mode.Name+"/sidecar-"+via, func(t *testing.T) {
			_, k := c.StartAPIServer(t, mode)
			c.StartMetricsServer(t, k, via)
			start := time.Now()
			var last controlplane.Result
			for {
				last = k.Run(controlplane.RunOptions{Timeout: 20 * time.Second}, "top", "node", "--no-headers")
				if last.ExitCode == 0 && topShows(last.Stdout, c.Nodes) {
					t.Logf("kubectl top node after %s:\n%s", time.Since(start).Round(100*time.Millisecond), last.Stdout)
					return
				}
				if time.Since(start) > 90*time.Second {
					t.Fatalf("kubectl top node does not list every edge node with 250m CPU and 300Mi memory within 90 s; last: %s", last)
				}
				time.Sleep(time.Second)
			}
		})
	}
}

// topShows reports whether out (kubectl top node --no-headers) has a line
// for every node with the stand-in's 250 millicores (±10) and 300Mi.
// (Nodes report no capacity, so there are no percentage columns.)
func topShows(out string, nodes []*controlplane.Node) bool {
	for _, n := range nodes {
		found := false
		for _, line := range strings.Split(out, "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[0] != n.Name {
				continue
			}
			cpu, err := strconv.Atoi(strings.TrimSuffix(f[1], "m"))
			found = err == nil && cpu >= 240 && cpu <= 260 && strings.Contains(line, "300Mi")
		}
		if !found {
			return false
		}
	}
	return true
}
