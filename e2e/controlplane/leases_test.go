package controlplane_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/controlplane"
	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// leaseSelector is the label selector of the replica Leases (pkg/leases).
const leaseSelector = "app.kubernetes.io/component=replica-lease,app.kubernetes.io/name=edge-tunnel-server"

// TestServerCountFromLeases scales edge-tunnel-server under a real
// kube-apiserver with --enable-lease-controller, the agent reaching the
// replicas through one load-balanced address: the agent reaches each new
// replica within seconds without a restart, and forgets a replica that
// stopped (its Lease deleted at shutdown) or crashed (its Lease expired),
// after which it stops looking for it.
func TestServerCountFromLeases(t *testing.T) {
	setup(t)
	const leaseDuration = 6 * time.Second
	leaseArgs := []string{"--enable-lease-controller", "--lease-duration=6s", "--lease-renewal-interval=1s"}
	c := controlplane.NewCluster(t, tools, controlplane.Options{Nodes: 1, PortsFromAPI: true, ServerArgs: leaseArgs})
	s1 := c.Server

	// The server started before any kube-apiserver: it serves, and says
	// that it cannot keep its Lease yet.
	if !strings.Contains(s1.Log(), "Cannot renew this replica's Lease") {
		t.Errorf("the server did not log that its Lease could not be kept while the API was down:\n%s", s1.LogTail(30))
	}
	_, k := c.StartAPIServer(t, controlplane.EgressModes[0])
	waitLeases(t, k, "edge-tunnel-server-e2e-server")

	n := c.Nodes[0]
	lb := startBalancer(t, c.Net.HostAddr.String())
	lb.set(s1.AgentAddr)
	n.Agent.Stop(t)
	c.StartAgentVia(t, n, lb.addr(), "--sync-interval=200ms", "--sync-interval-cap=2s")
	waitConnected(t, s1, 1, 20*time.Second)

	// Scale up to three replicas.
	start := time.Now()
	s2 := c.StartReplica(t, "s2", leaseArgs...)
	s3 := c.StartReplica(t, "s3", leaseArgs...)
	lb.set(s1.AgentAddr, s2.AgentAddr, s3.AgentAddr)
	for _, s := range []*harness.Server{s2, s3} {
		waitConnected(t, s, 1, 20*time.Second)
	}
	t.Logf("the agent reached both new replicas %s after they were started", time.Since(start).Round(time.Millisecond))
	waitLeases(t, k, "edge-tunnel-server-e2e-server", "edge-tunnel-server-s2", "edge-tunnel-server-s3")
	waitConnected(t, s1, 1, time.Second)
	for _, s := range []*harness.Server{s1, s2, s3} {
		getThrough(t, s, net.JoinHostPort(n.Addr.String(), strconv.Itoa(controlplane.ReadOnlyPort)))
	}
	waitLog(t, n.Agent, `"Server count changed".* from=\d to=3 `, 10*time.Second)

	// s3 stops gracefully: its Lease goes at once, the others count 2,
	// and the agent stops looking for a third replica.
	lb.set(s1.AgentAddr, s2.AgentAddr)
	stopped := time.Now()
	// SIGTERM; the server may take its whole shutdown grace to exit, as
	// agents hold their streams open, but its Lease goes at the start.
	go s3.Stop(t)
	waitLeases(t, k, "edge-tunnel-server-e2e-server", "edge-tunnel-server-s2")
	t.Logf("s3's Lease was deleted %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	waitLog(t, n.Agent, `"Server count changed".* from=3 to=2 `, 15*time.Second)
	t.Logf("the agent lowered its target to 2 replicas %s after s3 was stopped", time.Since(stopped).Round(time.Millisecond))
	<-s3.Done()
	assertSettled(t, n.Agent, 4*time.Second)
	for _, s := range []*harness.Server{s1, s2} {
		waitConnected(t, s, 1, time.Second)
	}

	// s2 crashes: its Lease counts until it expires, then the agent's
	// target drops to 1, and s1 deletes the expired Lease a lease
	// duration later.
	lb.set(s1.AgentAddr)
	killed := time.Now()
	s2.Kill()
	waitLog(t, n.Agent, `"Server count changed".* from=2 to=1 `, leaseDuration+15*time.Second)
	if d := time.Since(killed); d < leaseDuration-2*time.Second {
		t.Errorf("the agent's target dropped %s after s2 was killed, before its Lease (%s) can have expired", d, leaseDuration)
	}
	t.Logf("the agent lowered its target to 1 replica %s after s2 was killed", time.Since(killed).Round(time.Millisecond))
	assertSettled(t, n.Agent, 3*time.Second)
	waitLeases(t, k, "edge-tunnel-server-e2e-server")
	if !strings.Contains(s1.Log(), "Deleted the expired Lease of a replica that is gone") {
		t.Errorf("s1 did not log deleting s2's expired Lease")
	}
	waitConnected(t, s1, 1, time.Second)
	getThrough(t, s1, net.JoinHostPort(n.Addr.String(), strconv.Itoa(controlplane.ReadOnlyPort)))
}

// waitLeases waits until the replica Leases in kube-system are exactly names.
func waitLeases(t *testing.T, k *controlplane.Kubectl, names ...string) {
	t.Helper()
	slices.Sort(names)
	want := strings.Join(names, " ")
	var got string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r := k.Run(controlplane.RunOptions{}, "get", "leases", "-n", "kube-system", "-l", leaseSelector, "-o", "jsonpath={.items[*].metadata.name}")
		if r.Err == nil && r.ExitCode == 0 {
			f := strings.Fields(r.Stdout)
			slices.Sort(f)
			if got = strings.Join(f, " "); got == want {
				return
			}
		} else {
			got = r.String()
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("replica Leases: want %q, have %q", want, got)
}

// waitConnected waits until s counts at least n connected agents.
func waitConnected(t *testing.T, s *harness.Server, n int, timeout time.Duration) {
	t.Helper()
	var v float64
	var err error
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if v, err = s.Metric(harness.ConnectedAgentsMetric); err == nil && v >= float64(n) {
			return
		}
	}
	t.Fatalf("%s: %s = %v (%v) after %s, want %d\n%s", s.Name, harness.ConnectedAgentsMetric, v, err, timeout, n, s.LogTail(20))
}

// waitLog waits until the agent's log matches re.
func waitLog(t *testing.T, a *harness.Agent, re string, timeout time.Duration) {
	t.Helper()
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if rx.MatchString(a.Log()) {
			return
		}
	}
	t.Fatalf("the agent's log has no line matching %s within %s:\n%s", re, timeout, a.LogTail(30))
}

// assertSettled checks that the agent makes no connection attempt for d:
// it holds as many replicas as it is told exist and stopped looking.
func assertSettled(t *testing.T, a *harness.Agent, d time.Duration) {
	t.Helper()
	const retry = "Not connected to every server yet"
	time.Sleep(time.Second) // attempts already under way end
	before := strings.Count(a.Log(), retry)
	time.Sleep(d)
	if after := strings.Count(a.Log(), retry); after != before {
		t.Errorf("the agent still looks for a replica that is gone (%d more attempts in %s):\n%s", after-before, d, a.LogTail(20))
	}
}

// getThrough asks s's UNIX socket for a CONNECT to target (the node's
// kubelet read-only port) and GETs /healthz through it.
func getThrough(t *testing.T, s *harness.Server, target string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := s.DialUDS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := harness.Connect(conn, target); err != nil {
		t.Fatalf("through %s: %v", s.Name, err)
	}
	fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("GET /healthz through %s: %v", s.Name, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz through %s: %s", s.Name, resp.Status)
	}
}

// balancer is a round-robin TCP load balancer, as agents meet in front of
// the server replicas: each new connection goes to the next backend that
// answers.
type balancer struct {
	ln net.Listener
	wg sync.WaitGroup

	mu       sync.Mutex
	backends []string
	next     int
	conns    map[net.Conn]bool
}

// startBalancer listens on a free port of host.
func startBalancer(t *testing.T, host string) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, conns: map[net.Conn]bool{}}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.conns = nil
		b.mu.Unlock()
		b.wg.Wait()
	})
	return b
}

func (b *balancer) addr() string { return b.ln.Addr().String() }

// set replaces the backends.
func (b *balancer) set(backends ...string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = backends
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.forward(c)
		}()
	}
}

func (b *balancer) forward(c net.Conn) {
	b.mu.Lock()
	backends, start := b.backends, b.next
	b.next++
	b.mu.Unlock()
	var up net.Conn
	for i := range backends {
		var err error
		if up, err = net.DialTimeout("tcp", backends[(start+i)%len(backends)], time.Second); err == nil {
			break
		}
	}
	if up == nil {
		c.Close()
		return
	}
	if !b.track(c, up) {
		c.Close()
		up.Close()
		return
	}
	done := make(chan struct{})
	go func() { io.Copy(up, c); up.Close(); close(done) }()
	io.Copy(c, up)
	c.Close()
	<-done
	b.untrack(c, up)
}

// track records an open pair so that cleanup can close it; false once the
// balancer is closed.
func (b *balancer) track(cs ...net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conns == nil {
		return false
	}
	for _, c := range cs {
		b.conns[c] = true
	}
	return true
}

func (b *balancer) untrack(cs ...net.Conn) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range cs {
		delete(b.conns, c)
	}
}
