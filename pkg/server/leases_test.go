package server_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	"github.com/edge-tunnel/edge-tunnel/pkg/leases"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// TestServerCountFollowsLeases: replicas that share their Leases (a fake
// API here; e2e/controlplane has the real one) announce the live count, and
// an agent behind a round-robin balancer follows it both ways without a
// restart: it reaches replicas started after it connected, and once one is
// stopped it holds the others and stops dialing.
func TestServerCountFollowsLeases(t *testing.T) {
	e := newEnv(t, envOptions{connStreams: true})
	api := fake.NewClientset()
	start := func(id string) (string, func()) {
		return startLeaseReplica(t, e, id, &leases.Config{Client: api, Duration: 3 * time.Second, RenewInterval: 100 * time.Millisecond})
	}
	s1, _ := start("s1")
	lb := newCountingBalancer(t)
	lb.set(s1)

	ids, err := identity.Parse("host=node-a&ipv4=127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := agent.New(agent.Config{ServerAddr: lb.addr(), TLS: e.nodeTLS(t, "system:node:node-a", "127.0.0.1"), AgentID: "node-a",
		Identifiers: ids, SyncInterval: 50 * time.Millisecond, SyncIntervalCap: 300 * time.Millisecond, ConnStreams: true, Mux: true, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, a.Run)
	waitConns := func(n int) {
		t.Helper()
		waitFor(t, "agent connected to "+string(rune('0'+n))+" servers", func() bool { return gauge(t, reg, "edge_tunnel_agent_server_connections") == float64(n) })
	}
	waitConns(1)

	s2, _ := start("s2")
	s3, stop3 := start("s3")
	lb.set(s1, s2, s3)
	began := time.Now()
	waitConns(3)
	t.Logf("the agent reached the two new replicas %s after the balancer offered them", time.Since(began).Round(time.Millisecond))

	lb.set(s1, s2)
	stop3()
	l, err := api.CoordinationV1().Leases("kube-system").List(context.Background(), metav1.ListOptions{})
	if err != nil || len(l.Items) != 2 {
		t.Fatalf("Leases after s3 stopped: %d (%v), want 2 (s3 deletes its own)", len(l.Items), err)
	}
	waitConns(2)
	// The agent stops dialing once the servers announce 2: the balancer
	// sees no new connection for a while (count probes use the
	// connections the agent holds).
	waitFor(t, "the agent to stop dialing the balancer", func() bool {
		before := lb.accepted()
		time.Sleep(time.Second)
		return lb.accepted() == before
	})
	if n := gauge(t, reg, "edge_tunnel_agent_server_connections"); n != 2 {
		t.Errorf("agent holds %v server connections, want 2", n)
	}
}

// startLeaseReplica starts a server replica with ID id, keeping and
// counting Leases with lc (nil: neither; it announces a count of 1), and
// returns its agent address and a stop function.
func startLeaseReplica(t *testing.T, e *env, id string, lc *leases.Config) (addr string, stop func()) {
	t.Helper()
	srv, err := server.New(server.Config{
		UDSName: filepath.Join(e.dir, "lease-"+id+".sock"), AgentAddr: "127.0.0.1:0", AgentTLS: e.srvTLS,
		ServerID: id, ServerCount: 1, ShutdownGrace: time.Second, ConnStreams: true, Mux: true, Ports: testPorts, Leases: lc,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server %s: %v", id, err)
		}
	}
	t.Cleanup(func() {
		if ctx.Err() == nil {
			stop()
		}
	})
	waitFor(t, "server "+id+" listening", srv.Ready)
	return srv.Addr("agent").String(), stop
}

// TestAgentCountsLeases: an agent with its own Lease watcher
// (--count-server-leases) follows the Leases, not the servers: these
// replicas announce a count of 1, their Leases say 3, and the agent holds
// all three; when one replica's Lease goes, it stops looking for a third.
func TestAgentCountsLeases(t *testing.T) {
	e := newEnv(t, envOptions{connStreams: true})
	api := fake.NewClientset()
	lb := newCountingBalancer(t)
	var addrs []string
	renewers := map[string]context.CancelFunc{}
	for _, id := range []string{"s1", "s2", "s3"} {
		addr, _ := startLeaseReplica(t, e, id, nil)
		addrs = append(addrs, addr)
		// The replica's Lease, kept as its --enable-lease-controller would.
		r, err := leases.NewRenewer(leases.Config{Client: api, Holder: id, Duration: 3 * time.Second, RenewInterval: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { r.Run(ctx); close(done) }()
		renewers[id] = func() { cancel(); <-done }
		t.Cleanup(renewers[id])
	}
	lb.set(addrs...)

	counter, err := leases.NewWatcher(leases.WatchConfig{Client: api})
	if err != nil {
		t.Fatal(err)
	}
	ids, err := identity.Parse("host=node-a&ipv4=127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := agent.New(agent.Config{ServerAddr: lb.addr(), TLS: e.nodeTLS(t, "system:node:node-a", "127.0.0.1"), AgentID: "node-a",
		Identifiers: ids, SyncInterval: 50 * time.Millisecond, SyncIntervalCap: 300 * time.Millisecond, ConnStreams: true, Mux: true,
		Registry: reg, ServerCounter: counter})
	if err != nil {
		t.Fatal(err)
	}
	runUntilCleanup(t, a.Run)
	waitFor(t, "the agent connected to all three replicas", func() bool {
		return gauge(t, reg, "edge_tunnel_agent_server_connections") == 3
	})
	if n := gauge(t, reg, "edge_tunnel_agent_target_server_connections"); n != 3 {
		t.Errorf("the agent aims for %v servers, want 3 (its Lease count)", n)
	}

	// s3 goes: its Lease is deleted, the balancer stops offering it.
	lb.set(addrs[:2]...)
	renewers["s3"]()
	waitFor(t, "the agent aiming for 2", func() bool { return gauge(t, reg, "edge_tunnel_agent_target_server_connections") == 2 })
	// The agent, still holding s3's connection, is above its target and
	// does not dial; once that connection ends it holds 2 and still does
	// not dial (a target of 3 would make it dial every 50-300 ms).
	waitFor(t, "the agent to stop dialing the balancer", func() bool {
		before := lb.accepted()
		time.Sleep(time.Second)
		return lb.accepted() == before
	})
}

// TestCountProbe: a count probe is answered with the handshake header
// alone, only on the connection of the agent's control stream, and leaves
// the agent's routing to that control stream.
func TestCountProbe(t *testing.T) {
	e := newEnv(t, envOptions{connStreams: true, serverCount: 2})
	cc := agentClient(t, e)
	probe := func() (metadata.MD, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		md := metadata.Pairs(agentpb.AgentIDKey, "node-p", agentpb.CountProbeKey, "1")
		s, err := agentpb.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(ctx, md))
		if err != nil {
			return nil, err
		}
		hdr, err := s.Header()
		if err != nil {
			return nil, err
		}
		if _, err := s.Recv(); err != io.EOF {
			return hdr, err
		}
		return hdr, nil
	}
	if _, err := probe(); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("probe before any control stream: %v, want FailedPrecondition", err)
	}

	ctl := openAgentStream(t, cc, metadata.Pairs(agentpb.AgentIDKey, "node-p", agentpb.AgentIdentifiersKey, "host=node-p"))
	var hdr metadata.MD
	waitFor(t, "a probe answered", func() bool {
		var err error
		hdr, err = probe()
		return err == nil
	})
	if got := hdr.Get(agentpb.ServerCountKey); len(got) != 1 || got[0] != "2" {
		t.Errorf("probe answer serverCount %q, want \"2\"", got)
	}
	if got := hdr.Get(agentpb.ServerIDKey); len(got) != 1 || got[0] != "s1" {
		t.Errorf("probe answer serverID %q, want \"s1\"", got)
	}
	if agentpb.HasFeature(hdr.Get(agentpb.FeaturesKey), agentpb.FeatureLiveCount) {
		t.Errorf("a server without Leases offers %s: %q", agentpb.FeatureLiveCount, hdr.Get(agentpb.FeaturesKey))
	}
	// Dials for node-p still reach its control stream.
	go func() {
		c, _ := e.dialGRPC(context.Background(), "node-p:10250")
		if c != nil {
			c.Close()
		}
	}()
	ctl.await(t, "the DIAL_REQ on the control stream after probes", func(p *client.Packet) bool { return p.Type == client.PacketType_DIAL_REQ })

	// From another connection, the same agent ID gets no answer.
	cc = agentClient(t, e)
	if _, err := probe(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("probe on a connection without the control stream: %v, want FailedPrecondition", err)
	}
}

// gauge reads an unlabelled gauge from reg.
func gauge(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// countingBalancer is a round-robin TCP balancer on loopback whose
// backends can change, and which counts the connections it accepted.
type countingBalancer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu       sync.Mutex
	backends []string
	n        int
	open     map[net.Conn]bool
}

func newCountingBalancer(t testing.TB) *countingBalancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &countingBalancer{ln: ln, open: map[net.Conn]bool{}}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.open {
			c.Close()
		}
		b.open = nil
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *countingBalancer) addr() string { return b.ln.Addr().String() }

func (b *countingBalancer) set(backends ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = backends
}

func (b *countingBalancer) accepted() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

func (b *countingBalancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.mu.Lock()
		backend := ""
		if len(b.backends) > 0 {
			backend = b.backends[b.n%len(b.backends)]
		}
		b.n++
		b.mu.Unlock()
		up, err := net.Dial("tcp", backend)
		if err != nil {
			c.Close()
			continue
		}
		b.mu.Lock()
		if b.open == nil {
			b.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		b.open[c], b.open[up] = true, true
		b.mu.Unlock()
		b.wg.Add(2)
		go func() { defer b.wg.Done(); io.Copy(up, c); up.Close() }()
		go func() { defer b.wg.Done(); io.Copy(c, up); c.Close() }()
	}
}
