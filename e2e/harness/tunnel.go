package harness

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ReadyTimeout bounds how long a process may take to become ready.
const ReadyTimeout = 20 * time.Second

// ServerOptions tune StartServer.
type ServerOptions struct {
	// ID is --server-id (default "e2e-server").
	ID string
	// ExtraArgs are appended to the command line, e.g. "--direct-dial=false".
	ExtraArgs []string
	// AgentBindAddress is --agent-bind-address (default 127.0.0.1); give
	// the PKI the same address (NewPKI's agentPortHosts).
	AgentBindAddress string
	// Ports is the data of the port ConfigMap, written to the file given as
	// --ports-config. Nil forwards the ephemeral port range, where the
	// harness's targets listen, as plain HTTP ports.
	Ports map[string]string
	// HTTPProxy serves the server's HTTP proxy (--proxy-port) on a free
	// loopback port, at Server.ProxyAddr.
	HTTPProxy bool
	// Kubeconfig, when set, is --kubeconfig: the server takes the port
	// policy from ConfigMap kube-system/edge-tunnel-server-cfg through the
	// Kubernetes API instead of a file, and Ports must be nil.
	Kubeconfig string
}

// ephemeralPorts lists 32768-60999 (Linux's default local port range).
func ephemeralPorts() string {
	var b strings.Builder
	for p := 32768; p <= 60999; p++ {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(p))
	}
	return b.String()
}

// Server is a running edge-tunnel-server.
type Server struct {
	*Process
	// UDS is the unix socket (gRPC and HTTP CONNECT frontend).
	UDS string
	// FrontendAddr is the TCP+mTLS frontend, AgentAddr the agent port.
	FrontendAddr string
	AgentAddr    string
	// HealthURL serves /readyz and /metrics; AdminURL serves pprof.
	HealthURL string
	AdminURL  string
	// PortsFile is --ports-config (empty with ServerOptions.Kubeconfig);
	// WritePorts changes it.
	PortsFile string
	// ProxyAddr is the HTTP proxy's host:port (ServerOptions.HTTPProxy).
	ProxyAddr string

	bin, logDir string
	args        []string
}

// WritePorts replaces the port ConfigMap data the server reads; the server
// applies it within about a second.
func (s *Server) WritePorts(t testing.TB, data map[string]string) {
	t.Helper()
	var b strings.Builder
	for k, v := range data {
		fmt.Fprintf(&b, "%s: %q\n", k, v)
	}
	tmp := s.PortsFile + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, s.PortsFile); err != nil {
		t.Fatal(err)
	}
}

// StartServer starts edge-tunnel-server on loopback with free ports and
// waits until /readyz answers 200.
func StartServer(t testing.TB, bins Binaries, p *PKI, opts ServerOptions) *Server {
	t.Helper()
	if opts.ID == "" {
		opts.ID = "e2e-server"
	}
	if opts.AgentBindAddress == "" {
		opts.AgentBindAddress = "127.0.0.1"
	}
	ports := FreePorts(t, 5) // the fifth for the HTTP proxy
	s := &Server{
		UDS:          filepath.Join(shortTempDir(t), "tunnel.sock"),
		FrontendAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
		AgentAddr:    net.JoinHostPort(opts.AgentBindAddress, strconv.Itoa(ports[1])),
		HealthURL:    fmt.Sprintf("http://127.0.0.1:%d", ports[2]),
		AdminURL:     fmt.Sprintf("http://127.0.0.1:%d", ports[3]),
	}
	var args []string
	if opts.Kubeconfig != "" {
		if opts.Ports != nil {
			t.Fatalf("harness: ServerOptions.Ports and Kubeconfig exclude each other (the server refuses --ports-config with --kubeconfig)")
		}
		args = append(args, "--kubeconfig", opts.Kubeconfig)
	} else {
		if opts.Ports == nil {
			opts.Ports = map[string]string{"http-proxy-ports": ephemeralPorts()}
		}
		s.PortsFile = filepath.Join(t.TempDir(), "ports.yaml")
		s.WritePorts(t, opts.Ports)
		args = append(args, "--ports-config", s.PortsFile)
	}
	args = append(args,
		"--uds-name", s.UDS,
		"--server-bind-address", "127.0.0.1",
		"--server-port", strconv.Itoa(ports[0]),
		"--server-cert", p.FrontendServerCert,
		"--server-key", p.FrontendServerKey,
		"--server-ca-cert", p.FrontendCA,
		"--agent-bind-address", opts.AgentBindAddress,
		"--agent-port", strconv.Itoa(ports[1]),
		"--cluster-cert", p.ClusterServerCert,
		"--cluster-key", p.ClusterServerKey,
		"--cluster-ca-cert", p.ClusterCA,
		"--health-bind-address", "127.0.0.1",
		"--health-port", strconv.Itoa(ports[2]),
		"--admin-port", strconv.Itoa(ports[3]),
		"--server-id", opts.ID,
		"--server-count", "1",
		"-v", "2",
	)
	if opts.HTTPProxy {
		s.ProxyAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[4]))
		args = append(args, "--proxy-bind-address", "127.0.0.1", "--proxy-port", strconv.Itoa(ports[4]))
	}
	args = append(args, opts.ExtraArgs...)
	s.bin, s.logDir, s.args = bins.Server, t.TempDir(), args
	s.Process = startProcess(t, "server-"+opts.ID, s.logDir, s.bin, s.args...)
	if err := s.waitHTTP200(s.HealthURL+"/readyz", ReadyTimeout); err != nil {
		t.Fatalf("edge-tunnel-server not ready: %v\n%s", err, s.LogTail(40))
	}
	return s
}

// Restart stops the server (SIGTERM) and starts it again with the same
// command line, so it comes back on the same socket and ports, and waits
// until it is ready. The old process's log is kept next to the new one.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop(t)
	if err := os.Rename(s.LogPath, s.LogPath+".before-restart"); err != nil {
		t.Fatalf("keep the log of the stopped server: %v", err)
	}
	s.Process = startProcess(t, s.Name, s.logDir, s.bin, s.args...)
	if err := s.waitHTTP200(s.HealthURL+"/readyz", ReadyTimeout); err != nil {
		t.Fatalf("edge-tunnel-server not ready after restart: %v\n%s", err, s.LogTail(40))
	}
}

// ConnectedAgentsMetric is the server gauge of connected agents.
const ConnectedAgentsMetric = "edge_tunnel_server_connected_agents"

// WaitAgents waits until the server counts at least n connected agents.
func (s *Server) WaitAgents(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(ReadyTimeout)
	var last string
	for time.Now().Before(deadline) {
		if s.Exited() {
			t.Fatalf("edge-tunnel-server exited while waiting for %d agents\n%s", n, s.LogTail(40))
		}
		v, err := Metric(s.HealthURL, ConnectedAgentsMetric)
		if err == nil && v >= float64(n) {
			return
		}
		last = fmt.Sprintf("value %v, error %v", v, err)
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("edge-tunnel-server did not count %d connected agents within %s (%s: %s)", n, ReadyTimeout, ConnectedAgentsMetric, last)
}

// Metric reads one metric of the server (see the package-level Metric).
func (s *Server) Metric(name string, labels ...string) (float64, error) {
	return Metric(s.HealthURL, name, labels...)
}

// Goroutines reads the server's goroutine count.
func (s *Server) Goroutines() (int, error) { return Goroutines(s.AdminURL) }

// FDs reads the server's open file descriptor count.
func (s *Server) FDs() (int, error) { return FDCount(s.PID()) }

// AgentOptions tune StartAgent.
type AgentOptions struct {
	// Name is --agent-id and the host= identifier (default "edge-node-1").
	Name string
	// IPv4 is the node address the agent claims (default 127.0.0.1); any
	// 127.x.y.z address works on Linux loopback, which lets several agents
	// serve distinct "nodes" on one machine.
	IPv4 string
	// SingleStream starts the agent with --conn-streams=false: the plain
	// upstream konnectivity protocol, one stream for all connections.
	SingleStream bool
	// CertCN is the common name of the agent's client certificate
	// (default "system:node:" + Name, as a kubelet client certificate).
	CertCN string
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
	// Node, when set, runs the agent inside that edge node's network
	// namespace, dialing the server at the host end of the server's
	// AgentAddr; the agent's health and admin ports are then on the
	// namespace's loopback, reachable through Node.DialContext.
	Node *EdgeNode
	// ServerAddr, when set, is the host:port the agent dials instead of
	// the server's AgentAddr: a load balancer in front of several server
	// replicas. StartAgent's server may then be nil.
	ServerAddr string
}

// Agent is a running edge-tunnel-agent.
type Agent struct {
	*Process
	Name      string
	IPv4      string
	HealthURL string
	AdminURL  string
	// CertFile and KeyFile are the agent's client certificate and key
	// (--agent-cert, --agent-key), for common name CertCN; PKI.RenewAgentCert
	// replaces them.
	CertFile, KeyFile, CertCN string
}

// StartAgent starts edge-tunnel-agent against s (or opts.ServerAddr) and
// waits until its /readyz answers 200. Use s.WaitAgents to wait until the
// server counts it.
func StartAgent(t testing.TB, bins Binaries, p *PKI, s *Server, opts AgentOptions) *Agent {
	t.Helper()
	if opts.Name == "" {
		opts.Name = "edge-node-1"
	}
	if opts.IPv4 == "" {
		opts.IPv4 = "127.0.0.1"
	}
	if opts.CertCN == "" {
		opts.CertCN = "system:node:" + opts.Name
	}
	// The address the agent claims is an IP SAN, as the server's
	// --agent-identity=certificate (the default) requires.
	cert, key := p.AgentCert(t, "agent-"+opts.Name, opts.CertCN, opts.IPv4)
	ports := FreePorts(t, 2)
	serverAddr := opts.ServerAddr
	if serverAddr == "" {
		if s == nil {
			t.Fatalf("harness: StartAgent needs a server or AgentOptions.ServerAddr")
		}
		serverAddr = s.AgentAddr
	}
	serverHost, agentPort, err := net.SplitHostPort(serverAddr)
	if err != nil {
		t.Fatalf("server agent address %q: %v", serverAddr, err)
	}
	a := &Agent{
		Name:      opts.Name,
		IPv4:      opts.IPv4,
		HealthURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		AdminURL:  fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
		CertFile:  cert,
		KeyFile:   key,
		CertCN:    opts.CertCN,
	}
	args := []string{
		"--proxy-server-host", serverHost,
		"--proxy-server-port", agentPort,
		"--ca-cert", p.ClusterCA,
		"--agent-cert", cert,
		"--agent-key", key,
		"--agent-id", opts.Name,
		"--agent-identifiers", "host=" + opts.Name + "&ipv4=" + opts.IPv4,
		"--health-bind-address", "127.0.0.1",
		"--health-server-port", strconv.Itoa(ports[0]),
		"--admin-server-port", strconv.Itoa(ports[1]),
		"--conn-streams=" + strconv.FormatBool(!opts.SingleStream),
		"-v", "2",
	}
	args = append(args, opts.ExtraArgs...)
	bin := bins.Agent
	if opts.Node != nil {
		bin, args = opts.Node.Command(bin, args...)
	}
	a.Process = startProcess(t, "agent-"+opts.Name, t.TempDir(), bin, args...)
	client := probeClient
	if opts.Node != nil {
		client = opts.Node.HTTPClient(time.Second)
	}
	if err := a.waitHTTP200Client(client, a.HealthURL+"/readyz", ReadyTimeout); err != nil {
		t.Fatalf("edge-tunnel-agent %s not ready: %v\n%s", opts.Name, err, a.LogTail(40))
	}
	return a
}

// Metric reads one metric of the agent (see the package-level Metric).
func (a *Agent) Metric(name string, labels ...string) (float64, error) {
	return Metric(a.HealthURL, name, labels...)
}

// Goroutines reads the agent's goroutine count.
func (a *Agent) Goroutines() (int, error) { return Goroutines(a.AdminURL) }

// FDs reads the agent's open file descriptor count.
func (a *Agent) FDs() (int, error) { return FDCount(a.PID()) }
