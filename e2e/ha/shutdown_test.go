package ha_test

import (
	"context"
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// serverGrace is edge-tunnel-server's shutdown grace period (not a flag):
// how long open tunnels may finish after SIGTERM.
const serverGrace = 10 * time.Second

// TestServerGracefulShutdown: after SIGTERM a replica refuses new
// connections on its frontends at once, HAProxy sends clients to the other
// replicas, tunnels already open through it keep working for the grace
// period, and the process exits after it, ending those tunnels with an
// error the client sees at once.
func TestServerGracefulShutdown(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	nodes := threeNodes(t, c)
	victim := c.servers[0]
	n := nodes[0]

	stop := make(chan struct{})
	defer close(stop)
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var held []*heldTunnel
	for _, via := range []struct {
		name string
		dial func(context.Context) (net.Conn, error)
	}{
		{"CONNECT tunnel over the unix socket", func(ctx context.Context) (net.Conn, error) { return tunnelVia(ctx, victim, n.addr()) }},
		{"CONNECT tunnel over the TCP frontend", func(ctx context.Context) (net.Conn, error) { return tunnelTCP(ctx, c, victim, n.addr()) }},
		{"gRPC tunnel over the unix socket", func(ctx context.Context) (net.Conn, error) { return grpcTunnelVia(ctx, victim, n.addr()) }},
	} {
		conn, err := via.dial(ctx)
		if err != nil {
			t.Fatalf("%s of %s: %v", via.name, serverName(victim), err)
		}
		held = append(held, hold(via.name, conn, stop))
	}

	terminated := time.Now()
	terminate(t, victim.Process)

	// New connections are refused on both frontends.
	deadline := terminated.Add(time.Second)
	for {
		connUDS, errUDS := victim.DialUDS(ctx)
		connTCP, errTCP := tunnelTCP(ctx, c, victim, n.addr())
		for _, conn := range []net.Conn{connUDS, connTCP} {
			if conn != nil {
				conn.Close()
			}
		}
		refusedUDS := errors.Is(errUDS, syscall.ECONNREFUSED) || errors.Is(errUDS, syscall.ENOENT)
		refusedTCP := errors.Is(errTCP, syscall.ECONNREFUSED)
		if refusedUDS && refusedTCP {
			t.Logf("%s after SIGTERM new connections are refused: unix socket: %v; TCP frontend: %v",
				time.Since(terminated).Round(time.Millisecond), errUDS, errTCP)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("1 s after SIGTERM %s still accepts connections: unix socket: %v; TCP frontend: %v", serverName(victim), errUDS, errTCP)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Clients of the load balancer do not notice: the other replicas
	// take every new connection.
	lbDials := 0
	for time.Since(terminated) < serverGrace-2*time.Second {
		for _, n := range nodes {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			conn, err := tunnelViaLB(ctx, c.lb, c.clientTLS, n.addr())
			cancel()
			if err == nil {
				err = harness.CheckEcho(conn, 4<<10)
				conn.Close()
			}
			if err != nil {
				t.Fatalf("through haproxy to %s, %s after SIGTERM to %s: %v", n.addr(), time.Since(terminated).Round(time.Millisecond), serverName(victim), err)
			}
			lbDials++
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d tunnels through haproxy during the grace period, all of them fine", lbDials)

	waitExit(t, victim.Process, serverGrace+5*time.Second)
	exited := time.Now()
	took := exited.Sub(terminated)
	t.Logf("%s exited %s after SIGTERM (grace period %s)", serverName(victim), took.Round(time.Millisecond), serverGrace)
	if took < serverGrace-time.Second {
		t.Errorf("%s exited %s after SIGTERM, before the grace period of %s was over, while tunnels were open", serverName(victim), took.Round(time.Millisecond), serverGrace)
	}
	for _, h := range held {
		h.checkCut(t, exited, true)
	}
}

// tunnelTCP opens a tunnel to addr through replica s's own TCP frontend.
func tunnelTCP(ctx context.Context, c *cluster, s *harness.Server, addr string) (net.Conn, error) {
	conn, err := s.DialFrontendTLS(ctx, c.clientTLS)
	if err != nil {
		return nil, err
	}
	return connect(conn, addr)
}
