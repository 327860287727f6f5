package server_test

import (
	"context"
	"crypto/tls"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	konn "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// env is a server and its agents in this process, with real mTLS between
// them, for tests and benchmarks of the whole data path.
type env struct {
	dir      string
	uds      string
	srv      *server.Server
	clientTL *tls.Config // frontend client (kube-apiserver) TLS
	agentTLS *tls.Config // CN "agent": proves no node
	srvTLS   *tls.Config
	ca       *pki.CA
	agentAdr string
	opts     envOptions
}

type envOptions struct {
	connStreams bool // server side: offer the extensions (mux and conn-streams)
	noMux       bool // server side: offer conn-streams only
	directDial  bool
	registry    *prometheus.Registry // server metrics; nil means a private registry
	serverCount int                  // announced to agents; 0 means 1
	portsFile   string               // --ports-config; empty means testPorts
	// agentIdentity is --agent-identity=certificate; nil accepts every
	// claim, so that tests can run agents for any node with one certificate.
	agentIdentity *agentauth.Binder
	// configure, when set, changes the server's Config before it starts
	// (limits, the HTTP proxy).
	configure func(*server.Config)
}

func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("edge-tunnel-test")
	if err != nil {
		t.Fatal(err)
	}
	pairs := map[string]pki.Pair{}
	for name, usage := range map[string]string{"server": "server", "frontend-client": "client", "agent": "client"} {
		p, err := ca.Issue(name, []string{"127.0.0.1", "localhost"}, usage)
		if err != nil {
			t.Fatal(err)
		}
		pairs[name] = p
	}
	if err := pki.WriteFiles(dir, ca, pairs); err != nil {
		t.Fatal(err)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	srvTLS, err := tlsutil.ServerConfig(f("server.crt"), f("server.key"), f("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{dir: dir, srvTLS: srvTLS, opts: o, ca: ca}
	if e.clientTL, err = tlsutil.ClientConfig(f("ca.crt"), f("frontend-client.crt"), f("frontend-client.key"), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	if e.agentTLS, err = tlsutil.ClientConfig(f("ca.crt"), f("agent.crt"), f("agent.key"), "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	e.startServer(t, "s1", o.registry)
	return e
}

// testPorts forwards the ephemeral port range, where the tests' targets
// listen, and a few fixed ports the tests name, as plain HTTP ports: these
// tests exercise the data path; the port policy has tests of its own.
var testPorts = func() *ports.Config {
	ps := []int{1, 81, 443}
	for p := 32768; p <= 60999; p++ {
		ps = append(ps, p)
	}
	return ports.New(ps, nil, nil)
}()

// replica starts another server with the same certificates and options, as
// one more replica of a Deployment.
func (e *env) replica(t testing.TB, id string) *env {
	r := *e
	r.startServer(t, id, nil)
	return &r
}

func (e *env) startServer(t testing.TB, id string, reg *prometheus.Registry) {
	t.Helper()
	e.uds = filepath.Join(e.dir, id+".sock")
	cfg := server.Config{
		UDSName: e.uds, FrontendAddr: "127.0.0.1:0", FrontendTLS: e.srvTLS,
		AgentAddr: "127.0.0.1:0", AgentTLS: e.srvTLS, ServerID: id, ServerCount: max(1, e.opts.serverCount),
		DialTimeout: 5 * time.Second, ShutdownGrace: time.Second, DirectDial: e.opts.directDial, ConnStreams: e.opts.connStreams,
		Mux:      e.opts.connStreams && !e.opts.noMux,
		Registry: reg, Ports: testPorts, PortsFile: e.opts.portsFile, AgentIdentity: e.opts.agentIdentity,
	}
	if e.opts.configure != nil {
		e.opts.configure(&cfg)
	}
	var err error
	e.srv, err = server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, e.srv.Run)
	waitFor(t, "server listeners", e.srv.Ready)
	e.agentAdr = e.srv.Addr("agent").String()
}

// addAgent starts an agent for node name with the given addresses and waits
// until the server routes to it.
func (e *env) addAgent(t testing.TB, name string, connStreams bool, addrs ...string) {
	t.Helper()
	startAgent(t, e, name, connStreams, nil, addrs...)
}

// startAgent is addAgent with the agent's metrics on reg (nil: private).
func startAgent(t testing.TB, e *env, name string, connStreams bool, reg *prometheus.Registry, addrs ...string) {
	t.Helper()
	q := "host=" + name
	for _, a := range addrs {
		q += "&ipv4=" + a
	}
	ids, err := identity.Parse(q)
	if err != nil {
		t.Fatal(err)
	}
	a, err := agent.New(agent.Config{ServerAddr: e.agentAdr, TLS: e.nodeTLS(t, "system:node:"+name, addrs...), AgentID: name,
		Identifiers: ids, SyncInterval: 100 * time.Millisecond, DrainGrace: time.Second, ConnStreams: connStreams, Mux: connStreams, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, a.Run)
	waitFor(t, "agent "+name+" routable", func() bool {
		c, err := e.dialGRPC(context.Background(), net.JoinHostPort(name, "10250"))
		if c != nil {
			c.Close()
		}
		return err == nil || !strings.Contains(err.Error(), "no edge-tunnel-agent is connected")
	})
}

// nodeTLS is an agent's TLS config with a client certificate of its own,
// as a kubelet client certificate is: common name cn (system:node:NAME)
// and sans (the node's addresses) as subject alternative names.
func (e *env) nodeTLS(t testing.TB, cn string, sans ...string) *tls.Config {
	t.Helper()
	p, err := e.ca.Issue(cn, sans, pki.UsageClient)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, e.ca, map[string]pki.Pair{"agent": p}); err != nil {
		t.Fatal(err)
	}
	f := func(n string) string { return filepath.Join(dir, n) }
	c, err := tlsutil.ClientConfig(f("ca.crt"), f("agent.crt"), f("agent.key"), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// dialGRPC dials through the UNIX socket exactly as kube-apiserver does with
// proxyProtocol GRPC: a new single-use tunnel per dial.
func (e *env) dialGRPC(ctx context.Context, address string) (net.Conn, error) {
	tun, err := konn.CreateSingleUseGrpcTunnelWithContext(ctx, context.Background(), e.uds,
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", e.uds)
		}),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return tun.DialContext(ctx, "tcp", address)
}

func runUntilCleanup(t testing.TB, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run returned %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("run did not return within 20 s of cancel")
		}
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
