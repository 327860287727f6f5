// Command demo shows edge-tunnel working end to end on one machine, on
// loopback only: it makes a throwaway PKI, builds and starts
// edge-tunnel-server and edge-tunnel-agent, puts a small HTTP service
// "on the edge node" behind the agent, and sends one request through each
// frontend the way kube-apiserver would:
//
//   - gRPC (konnectivity-client) over the unix socket,
//   - HTTP CONNECT over the unix socket,
//   - HTTP CONNECT over TCP with mutual TLS.
//
// Run it from the repository: go run ./e2e/demo (or make demo). It exits 0
// only if all three requests worked.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

const nodeName = "demo-node"

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo failed: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	dir, err := os.MkdirTemp("", "edge-tunnel-demo-")
	if err != nil {
		return fmt.Errorf("make temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	step("Making a throwaway PKI (frontend CA for kube-apiserver, cluster CA for agents)")
	certs, err := makePKI(dir)
	if err != nil {
		return err
	}

	step("Building edge-tunnel-server and edge-tunnel-agent")
	serverBin, agentBin, err := buildBinaries(dir)
	if err != nil {
		return err
	}

	ports, err := freePorts(6)
	if err != nil {
		return err
	}
	uds := filepath.Join(dir, "tunnel.sock")
	frontendAddr := "127.0.0.1:" + strconv.Itoa(ports[0])
	serverHealth := "http://127.0.0.1:" + strconv.Itoa(ports[2])
	agentHealth := "http://127.0.0.1:" + strconv.Itoa(ports[4])

	target, stopTarget, err := startTarget()
	if err != nil {
		return err
	}
	defer stopTarget()
	step("Started an HTTP service on the edge node at " + target)

	// Edge-node ports other than kubelet's are forwarded only when the
	// ConfigMap edge-tunnel-server-cfg names them; here it is a file.
	_, targetPort, _ := net.SplitHostPort(target)
	portsFile := filepath.Join(dir, "edge-tunnel-server-cfg.yaml")
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: edge-tunnel-server-cfg, namespace: kube-system}\ndata:\n  http-proxy-ports: \"" + targetPort + "\"\n"
	if err := os.WriteFile(portsFile, []byte(cm), 0o644); err != nil {
		return fmt.Errorf("write the port ConfigMap: %w", err)
	}
	step("Forwarding port " + targetPort + " of the edge node (ConfigMap edge-tunnel-server-cfg, http-proxy-ports)")

	step("Starting edge-tunnel-server (unix socket, TCP frontend " + frontendAddr + ", agent port 127.0.0.1:" + strconv.Itoa(ports[1]) + ")")
	server, err := start(dir, "server", serverBin,
		"--uds-name", uds,
		"--server-bind-address", "127.0.0.1", "--server-port", strconv.Itoa(ports[0]),
		"--server-cert", certs["frontend/server.crt"], "--server-key", certs["frontend/server.key"],
		"--server-ca-cert", certs["frontend/ca.crt"],
		"--agent-bind-address", "127.0.0.1", "--agent-port", strconv.Itoa(ports[1]),
		"--cluster-cert", certs["cluster/server.crt"], "--cluster-key", certs["cluster/server.key"],
		"--cluster-ca-cert", certs["cluster/ca.crt"],
		"--health-bind-address", "127.0.0.1", "--health-port", strconv.Itoa(ports[2]),
		"--admin-port", strconv.Itoa(ports[3]),
		"--server-id", "demo-server", "--server-count", "1",
		"--ports-config", portsFile,
	)
	if err != nil {
		return err
	}
	defer server.stop()
	if err := waitOK(server, serverHealth+"/readyz"); err != nil {
		return err
	}

	step("Starting edge-tunnel-agent for node " + nodeName + " (claims 127.0.0.1)")
	agent, err := start(dir, "agent", agentBin,
		"--proxy-server-host", "127.0.0.1", "--proxy-server-port", strconv.Itoa(ports[1]),
		"--ca-cert", certs["cluster/ca.crt"],
		"--agent-cert", certs["cluster/agent.crt"], "--agent-key", certs["cluster/agent.key"],
		"--agent-id", nodeName, "--agent-identifiers", "host="+nodeName+"&ipv4=127.0.0.1",
		"--health-bind-address", "127.0.0.1", "--health-server-port", strconv.Itoa(ports[4]),
		"--admin-server-port", strconv.Itoa(ports[5]),
	)
	if err != nil {
		return err
	}
	defer agent.stop()
	if err := waitOK(agent, agentHealth+"/readyz"); err != nil {
		return err
	}
	if err := waitAgent(server, serverHealth+"/metrics"); err != nil {
		return err
	}

	frontendTLS, err := frontendClientTLS(certs)
	if err != nil {
		return err
	}
	tries := []struct {
		name string
		dial func(ctx context.Context, addr string) (net.Conn, error)
	}{
		{"gRPC (konnectivity-client " + clientVersion() + ") over the unix socket", func(ctx context.Context, addr string) (net.Conn, error) {
			return dialGRPC(ctx, uds, addr)
		}},
		{"HTTP CONNECT over the unix socket", func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", uds)
			if err != nil {
				return nil, err
			}
			return connect(c, addr)
		}},
		{"HTTP CONNECT over TCP with mutual TLS", func(ctx context.Context, addr string) (net.Conn, error) {
			d := tls.Dialer{Config: frontendTLS}
			c, err := d.DialContext(ctx, "tcp", frontendAddr)
			if err != nil {
				return nil, err
			}
			return connect(c, addr)
		}},
	}
	fmt.Println()
	failed := 0
	for _, try := range tries {
		start := time.Now()
		status, body, err := get(try.dial, "http://"+target+"/containerLogs/default/web/nginx")
		took := time.Since(start).Round(100 * time.Microsecond)
		if err != nil {
			failed++
			fmt.Printf("  FAIL  %s\n        %v\n", try.name, err)
			continue
		}
		fmt.Printf("  OK    %s\n        GET %s -> %d %q in %s\n", try.name, target, status, body, took)
	}
	fmt.Println()
	// The target is on loopback, which the server could also reach itself:
	// make sure the agent really carried the requests.
	if n, err := agentDials(agentHealth + "/metrics"); err != nil || n < float64(len(tries)-failed) {
		failed++
		fmt.Printf("  FAIL  the agent counted %v successful dials (%v); the requests did not go through it\n\n", n, err)
	} else {
		step(fmt.Sprintf("The agent on %s dialed the service %v times: every request went through the tunnel", nodeName, n))
	}
	if failed > 0 {
		fmt.Printf("--- server log (last lines):\n%s\n--- agent log (last lines):\n%s\n", server.tail(20), agent.tail(20))
		return fmt.Errorf("%d check(s) failed", failed)
	}
	step("All frontends worked; stopping everything")
	return nil
}

func step(s string) { fmt.Println("==> " + s) }

// certSpec is one certificate to issue.
type certSpec struct {
	cn    string
	hosts []string
	usage string
}

// makePKI writes two CAs and their certificates, as a real deployment has
// them: the frontend CA (kube-apiserver and the server's TCP frontend) and
// the cluster CA (agents and the server's agent port). The map keys are
// "frontend/FILE" and "cluster/FILE".
func makePKI(dir string) (map[string]string, error) {
	files := map[string]string{}
	loopback := []string{"127.0.0.1", "localhost"}
	sides := []struct {
		name  string
		certs map[string]certSpec
	}{
		{"frontend", map[string]certSpec{
			"server": {"edge-tunnel-server", loopback, pki.UsageServer},
			"client": {"kube-apiserver", nil, pki.UsageClient},
		}},
		{"cluster", map[string]certSpec{
			"server": {"edge-tunnel-server", loopback, pki.UsageServer},
			// A kubelet-style certificate for the node the agent claims,
			// with the address it claims: the server binds the two.
			"agent": {"system:node:" + nodeName, []string{"127.0.0.1"}, pki.UsageClient},
		}},
	}
	for _, side := range sides {
		ca, err := pki.NewCA("edge-tunnel-demo-" + side.name + "-ca")
		if err != nil {
			return nil, fmt.Errorf("%s CA: %w", side.name, err)
		}
		sideDir := filepath.Join(dir, side.name)
		pairs := map[string]pki.Pair{}
		for name, spec := range side.certs {
			if pairs[name], err = ca.Issue(spec.cn, spec.hosts, spec.usage); err != nil {
				return nil, fmt.Errorf("%s %s certificate: %w", side.name, name, err)
			}
			files[side.name+"/"+name+".crt"] = filepath.Join(sideDir, name+".crt")
			files[side.name+"/"+name+".key"] = filepath.Join(sideDir, name+".key")
		}
		if err := pki.WriteFiles(sideDir, ca, pairs); err != nil {
			return nil, err
		}
		files[side.name+"/ca.crt"] = filepath.Join(sideDir, "ca.crt")
	}
	return files, nil
}

func buildBinaries(dir string) (server, agent string, err error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	server, agent = filepath.Join(dir, "edge-tunnel-server"), filepath.Join(dir, "edge-tunnel-agent")
	for bin, pkg := range map[string]string{server: "./cmd/edge-tunnel-server", agent: "./cmd/edge-tunnel-agent"} {
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("go build %s (run the demo from the edge-tunnel checkout): %w\n%s", pkg, err, out)
		}
	}
	return server, agent, nil
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// process is a started binary logging to a file.
type process struct {
	name string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
}

func start(dir, name, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// stop sends SIGTERM and, after 5 s, SIGKILL.
func (p *process) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// poll calls check every 50 ms for up to 15 s, failing early if p exits.
func poll(p *process, what string, check func() (bool, string)) error {
	deadline := time.Now().Add(15 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while waiting for %s:\n%s", p.name, what, p.tail(20))
		default:
		}
		ok, detail := check()
		if ok {
			return nil
		}
		last = detail
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: no %s within 15 s (last: %s):\n%s", p.name, what, last, p.tail(20))
}

var httpc = &http.Client{Timeout: 2 * time.Second}

func waitOK(p *process, url string) error {
	return poll(p, "200 from "+url, func() (bool, string) {
		resp, err := httpc.Get(url)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, resp.Status
	})
}

// waitAgent waits until the server's metrics count a connected agent.
func waitAgent(server *process, metricsURL string) error {
	return poll(server, "connected agent", func() (bool, string) {
		resp, err := httpc.Get(metricsURL)
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, "edge_tunnel_server_connected_agents "); ok {
				n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return n >= 1, "connected_agents " + v
			}
		}
		return false, "no edge_tunnel_server_connected_agents metric"
	})
}

// agentDials reads the agent's count of successful dials.
func agentDials(metricsURL string) (float64, error) {
	resp, err := httpc.Get(metricsURL)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, `edge_tunnel_agent_dials_total{result="ok"} `); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, errors.New("no edge_tunnel_agent_dials_total{result=\"ok\"} metric")
}

func startTarget() (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s, you asked for %s", nodeName, r.URL.Path)
	})}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }, nil
}

func frontendClientTLS(certs map[string]string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certs["frontend/client.crt"], certs["frontend/client.key"])
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(certs["frontend/ca.crt"])
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}, nil
}

// dialGRPC dials as kube-apiserver's egress selector does with
// proxyProtocol GRPC: a new single-use tunnel over the unix socket per dial.
func dialGRPC(ctx context.Context, uds, addr string) (net.Conn, error) {
	contextDialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", uds)
	})
	//nolint:staticcheck // the deprecated calls are exactly what kube-apiserver uses.
	t, err := client.CreateSingleUseGrpcTunnel(context.TODO(), uds, contextDialer,
		grpc.WithBlock(), grpc.WithReturnConnectionError(), grpc.WithTimeout(30*time.Second),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("create tunnel: %w", err)
	}
	return t.DialContext(ctx, "tcp", addr)
}

// connect speaks HTTP CONNECT as kube-apiserver does and applies its checks.
func connect(c net.Conn, addr string) (net.Conn, error) {
	fmt.Fprintf(c, "CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", addr)
	br := bufio.NewReader(io.LimitReader(c, http.DefaultMaxHeaderBytes))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read CONNECT response: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("CONNECT %s: %s", addr, resp.Status)
	}
	if br.Buffered() > 0 {
		c.Close()
		return nil, errors.New("bytes buffered after the CONNECT response")
	}
	return c, nil
}

func get(dial func(context.Context, string) (net.Conn, error), url string) (int, string, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dial(ctx, addr)
		},
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, "", err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, string(body), fmt.Errorf("status %s", resp.Status)
	}
	return resp.StatusCode, string(body), nil
}

// clientVersion is the konnectivity-client version this binary links.
func clientVersion() string {
	if v := moduleVersion("sigs.k8s.io/apiserver-network-proxy/konnectivity-client"); v != "" {
		return v
	}
	return "(unknown version)"
}

func moduleVersion(path string) string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, d := range info.Deps {
		if d.Path == path {
			return d.Version
		}
	}
	return ""
}
