package ha_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	konn "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

const (
	// replicas is the number of edge-tunnel-server processes.
	replicas = 3
	// serverKeepalive is the servers' --keepalive-time: a dead agent
	// connection is noticed after about twice this.
	serverKeepalive = time.Second
	// opTimeout bounds every tunneled operation: an operation that hits it
	// is a hang, which no failure may cause.
	opTimeout = 5 * time.Second
	// meshTimeout bounds how long agents may take to hold a connection to
	// every replica.
	meshTimeout = 15 * time.Second

	// The edge network of the network-cut test: TEST-NET-3 (RFC 5737) and
	// names apart from e2e/controlplane's (etcp, 198.51.100.0/24).
	netPrefix = "etha"
	netSubnet = "203.0.113.0/24"
)

// Short timings, so that the failures under test play out in seconds. The
// agents ping every 2 s: pings closer than the servers' enforcement minimum
// (1 s) would be refused as a ping flood.
var (
	serverArgs = []string{
		fmt.Sprintf("--server-count=%d", replicas),
		"--keepalive-time=" + serverKeepalive.String(),
		// Dials must go through agents: a direct dial to a loopback
		// target would succeed and hide a routing failure.
		"--direct-dial=false",
	}
	agentArgs = []string{"--sync-interval=200ms", "--sync-interval-cap=1s", "--keepalive-time=2s", "--drain-grace=5s"}
)

// cluster is three replicas behind HAProxy, and the agents started on it.
type cluster struct {
	bins    harness.Binaries
	pki     *harness.PKI
	servers []*harness.Server
	lb      *haproxy
	// clientTLS is kube-apiserver's TLS configuration for the TCP
	// frontends (the frontend CA's client certificate).
	clientTLS *tls.Config
	// net is the edge network (clusterOptions.edgeNetwork), else nil.
	net *harness.EdgeNetwork
}

type clusterOptions struct {
	// edgeNetwork makes an edge network of network namespaces for agents
	// that must be cut off; HAProxy's agent frontend also listens on its
	// host address. Needs root; the test skips without.
	edgeNetwork bool
}

func newCluster(t *testing.T, opts clusterOptions) *cluster {
	t.Helper()
	haproxyBinary(t) // skips early when missing
	c := &cluster{bins: harness.Build(t)}
	var hosts []string
	nodeHost := ""
	if opts.edgeNetwork {
		if why := harness.NetworkTools(); why != "" {
			t.Skip(why)
		}
		c.net = harness.NewEdgeNetwork(t, netPrefix, netSubnet)
		nodeHost = c.net.HostAddr.String()
		hosts = append(hosts, nodeHost)
	}
	c.pki = harness.NewPKI(t, hosts...)
	c.clientTLS = c.pki.FrontendClientTLS(t)
	for i := range replicas {
		c.servers = append(c.servers, harness.StartServer(t, c.bins, c.pki, harness.ServerOptions{
			ID:        fmt.Sprintf("ha-%d", i+1),
			ExtraArgs: serverArgs,
		}))
	}
	c.lb = startHAProxy(t, c.servers, nodeHost)
	return c
}

// node is an agent and the echo server on its node address.
type node struct {
	name  string
	agent *harness.Agent
	echo  *harness.Echo
	opts  harness.AgentOptions
}

// addr is the echo server as a client asks for it: by node name.
func (n *node) addr() string {
	_, port, _ := net.SplitHostPort(n.echo.Addr)
	return net.JoinHostPort(n.name, port)
}

// addNode starts an echo server on ipv4 (a loopback address) and an agent
// for node name that dials the replicas through HAProxy.
func (c *cluster) addNode(t *testing.T, name, ipv4 string) *node {
	t.Helper()
	n := &node{name: name, echo: harness.StartEcho(t, ipv4),
		opts: harness.AgentOptions{Name: name, IPv4: ipv4, ServerAddr: c.lb.AgentAddr, ExtraArgs: agentArgs}}
	n.agent = harness.StartAgent(t, c.bins, c.pki, nil, n.opts)
	return n
}

// restartAgent starts n's agent again with the same options (its old
// process must have ended).
func (c *cluster) restartAgent(t *testing.T, n *node) {
	t.Helper()
	n.agent = harness.StartAgent(t, c.bins, c.pki, nil, n.opts)
}

// waitMesh waits until every replica counts agents distinct agents and
// every agent in agents holds a connection to every replica.
func (c *cluster) waitMesh(t *testing.T, agents int, nodes ...*node) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(meshTimeout)
	for {
		problems := c.meshProblems(agents, nodes...)
		if len(problems) == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no full mesh within %s: %s", meshTimeout, strings.Join(problems, "; "))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *cluster) meshProblems(agents int, nodes ...*node) []string {
	var problems []string
	for _, s := range c.servers {
		if v, err := s.Metric(harness.ConnectedAgentsMetric); err != nil || v != float64(agents) {
			problems = append(problems, fmt.Sprintf("%s counts %v agents (want %d, error %v)", serverName(s), v, agents, err))
		}
	}
	for _, n := range nodes {
		if v, err := n.agent.Metric("edge_tunnel_agent_server_connections"); err != nil || v != replicas {
			problems = append(problems, fmt.Sprintf("agent %s holds %v server connections (want %d, error %v)", n.name, v, replicas, err))
		}
	}
	return problems
}

// dialsOK is how many dials an agent has completed.
func dialsOK(t *testing.T, a *harness.Agent) float64 {
	t.Helper()
	v, err := a.Metric("edge_tunnel_agent_dials_total", `result="ok"`)
	if err != nil {
		t.Fatalf("agent %s: %v", a.Name, err)
	}
	return v
}

// tunnelVia opens a tunnel to addr with HTTP CONNECT on replica s's unix
// socket. The connection's deadline is opTimeout.
func tunnelVia(ctx context.Context, s *harness.Server, addr string) (net.Conn, error) {
	c, err := s.DialUDS(ctx)
	if err != nil {
		return nil, err
	}
	return connect(c, addr)
}

// tunnelViaLB opens a tunnel to addr with HTTP CONNECT through HAProxy's
// client frontend, with mutual TLS to whichever replica HAProxy picks.
func tunnelViaLB(ctx context.Context, lb *haproxy, cfg *tls.Config, addr string) (net.Conn, error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", lb.FrontendAddr)
	if err != nil {
		return nil, fmt.Errorf("TLS through haproxy %s: %w", lb.FrontendAddr, err)
	}
	return connect(c, addr)
}

func connect(c net.Conn, addr string) (net.Conn, error) {
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	if _, err := harness.Connect(c, addr); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// echoVia opens a tunnel to n's echo server through replica s, checks an
// echo and closes it.
func echoVia(s *harness.Server, n *node) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	c, err := tunnelVia(ctx, s, n.addr())
	if err != nil {
		return err
	}
	defer c.Close()
	return harness.CheckEcho(c, 16<<10)
}

// isHang reports whether err is a deadline: the operation hung instead of
// failing.
func isHang(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// terminate sends SIGTERM and returns without waiting.
func terminate(t *testing.T, p *harness.Process) {
	t.Helper()
	if err := syscall.Kill(p.PID(), syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", p.Name, err)
	}
}

// waitExit waits until p has ended, at most within.
func waitExit(t *testing.T, p *harness.Process, within time.Duration) {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(within):
		t.Fatalf("%s still runs %s after SIGTERM\n%s", p.Name, within, p.LogTail(30))
	}
}

// echoBounded is echo with a watchdog for connections without deadlines
// (konnectivity-client's): a round trip longer than timeout closes c and
// returns errHang.
func echoBounded(c net.Conn, size int, timeout time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(timeout)) // where supported
	var hung atomic.Bool
	watchdog := time.AfterFunc(timeout, func() { hung.Store(true); c.Close() })
	err := harness.CheckEcho(c, size)
	watchdog.Stop()
	if hung.Load() {
		return fmt.Errorf("%w: no echo within %s (%v)", errHang, timeout, err)
	}
	return err
}

var errHang = errors.New("hung")

// heldTunnel is a tunnel kept open and echoing every 100 ms, to see that
// it keeps working and how it ends.
type heldTunnel struct {
	name string
	mu   sync.Mutex
	// lastOK is when the last echo came back; ended when the tunnel
	// failed, with err.
	lastOK, ended time.Time
	err           error
	done          chan struct{}
}

// hold starts echoing through c until it fails or stop is closed. Each
// round trip must finish within opTimeout.
func hold(name string, c net.Conn, stop <-chan struct{}) *heldTunnel {
	h := &heldTunnel{name: name, lastOK: time.Now(), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		defer c.Close()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			err := echoBounded(c, 1024, opTimeout)
			now := time.Now()
			h.mu.Lock()
			if err != nil {
				h.ended, h.err = now, err
				h.mu.Unlock()
				return
			}
			h.lastOK = now
			h.mu.Unlock()
		}
	}()
	return h
}

func (h *heldTunnel) state() (lastOK, ended time.Time, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lastOK, h.ended, h.err
}

// checkCut requires that h ended with an error, not a hang, at the latest
// a second after its server exited at exited; with wantGrace, it must have
// worked until shortly before that.
func (h *heldTunnel) checkCut(t *testing.T, exited time.Time, wantGrace bool) {
	t.Helper()
	select {
	case <-h.done:
	case <-time.After(opTimeout + time.Second):
		t.Fatalf("%s: still open %s after its server exited", h.name, opTimeout+time.Second)
	}
	lastOK, ended, err := h.state()
	if err == nil {
		t.Fatalf("%s: ended without an error", h.name)
	}
	if isHang(err) || errors.Is(err, errHang) {
		t.Errorf("%s: hung instead of failing when its server went away: %v", h.name, err)
	}
	if took := ended.Sub(exited); took > time.Second {
		t.Errorf("%s: the client saw the end %s after its server exited, want < 1 s", h.name, took.Round(time.Millisecond))
	}
	if gap := exited.Sub(lastOK); wantGrace && gap > time.Second {
		t.Errorf("%s: last echo %s before its server exited; open tunnels must keep working for the grace period", h.name, gap.Round(time.Millisecond))
	}
	t.Logf("%s: last echo %s before its server exited; the client saw the end %s %s it: %v", h.name,
		exited.Sub(lastOK).Round(time.Millisecond), absDuration(ended.Sub(exited)).Round(time.Millisecond), beforeAfter(ended.Sub(exited)), err)
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

func beforeAfter(d time.Duration) string {
	if d < 0 {
		return "before"
	}
	return "after"
}

// grpcTunnelVia opens a tunnel to addr through replica s's unix socket
// with konnectivity-client, as kube-apiserver's egress selector does in
// gRPC mode: one single-use gRPC tunnel per connection.
func grpcTunnelVia(ctx context.Context, s *harness.Server, addr string) (net.Conn, error) {
	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", s.UDS)
	})
	// The tunnel's own context is the connection's lifetime, not the
	// dial's: kube-apiserver passes context.TODO().
	//nolint:staticcheck // deprecated, and what kube-apiserver calls.
	tun, err := konn.CreateSingleUseGrpcTunnel(context.Background(), s.UDS, dialer, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("gRPC tunnel over %s: %w", s.UDS, err)
	}
	c, err := tun.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("gRPC dial of %s through %s: %w", addr, serverName(s), err)
	}
	return c, nil
}
