package ha_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	konn "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
)

// loadOp is one operation of the steady load: a tunnel through the load
// balancer, an echo, a close.
type loadOp struct {
	start, end time.Time
	what       string
	err        error
}

// steadyLoad opens tunnels through HAProxy's client frontend one after
// the other, alternating HTTP CONNECT and gRPC and the nodes, each echoing
// 16 KiB, until stop is closed. Every operation is bounded by opTimeout.
func steadyLoad(c *cluster, nodes []*node, stop <-chan struct{}) (result func() []loadOp) {
	var mu sync.Mutex
	var ops []loadOp
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			n := nodes[i%len(nodes)]
			mode := "CONNECT"
			if (i/len(nodes))%2 == 1 {
				mode = "gRPC"
			}
			op := loadOp{start: time.Now(), what: mode + " " + n.addr()}
			op.err = loadOnce(c, mode, n.addr())
			op.end = time.Now()
			mu.Lock()
			ops = append(ops, op)
			mu.Unlock()
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return func() []loadOp {
		<-done
		mu.Lock()
		defer mu.Unlock()
		return ops
	}
}

// loadOnce is one operation. The whole of it runs under a watchdog, since
// a konnectivity-client connection has no deadlines.
func loadOnce(c *cluster, mode, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	result := make(chan error, 1)
	var conn net.Conn
	var mu sync.Mutex
	go func() {
		var cn net.Conn
		var err error
		if mode == "CONNECT" {
			cn, err = tunnelViaLB(ctx, c.lb, c.clientTLS, addr)
		} else {
			cn, err = grpcTunnelViaLB(ctx, c, addr)
		}
		if err != nil {
			result <- err
			return
		}
		mu.Lock()
		conn = cn
		mu.Unlock()
		err = harness.CheckEcho(cn, 16<<10)
		cn.Close()
		result <- err
	}()
	select {
	case err := <-result:
		return err
	case <-time.After(opTimeout + time.Second):
		mu.Lock()
		if conn != nil {
			conn.Close()
		}
		mu.Unlock()
		return fmt.Errorf("%w: no result within %s", errHang, opTimeout+time.Second)
	}
}

// grpcTunnelViaLB is a konnectivity-client tunnel through HAProxy's client
// frontend with mutual TLS, as kube-apiserver dials a TCP egress in gRPC
// mode.
func grpcTunnelViaLB(ctx context.Context, c *cluster, addr string) (net.Conn, error) {
	//nolint:staticcheck // deprecated, and what kube-apiserver calls.
	tun, err := konn.CreateSingleUseGrpcTunnel(context.Background(), c.lb.FrontendAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(c.clientTLS)))
	if err != nil {
		return nil, fmt.Errorf("gRPC tunnel through haproxy: %w", err)
	}
	conn, err := tun.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("gRPC dial of %s through haproxy: %w", addr, err)
	}
	return conn, nil
}

// restartWindow is one replica's restart: from SIGTERM until the new
// process is ready and every agent is connected to it again.
type restartWindow struct {
	server                  string
	stop, exit, ready, mesh time.Time
}

// TestRollingRestart restarts the three replicas one after the other, as
// a Deployment's rolling update does, while a client keeps opening tunnels
// through the load balancer. Every tunnel opened while no restart is in
// progress must work; during a restart tunnels may fail, but only with an
// error, never by hanging. Tunnels open on a replica when it stops keep
// working for its grace period and then end with an error, and the agents
// connect to the new replica within seconds of its start.
func TestRollingRestart(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	nodes := threeNodes(t, c)

	stopLoad := make(chan struct{})
	loadResult := steadyLoad(c, nodes, stopLoad)
	loadStopped := false
	defer func() {
		if !loadStopped {
			close(stopLoad)
			loadResult()
		}
	}()
	time.Sleep(time.Second)

	var windows []restartWindow
	for i, s := range c.servers {
		n := nodes[i%len(nodes)]
		stopHeld := make(chan struct{})
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		var held []*heldTunnel
		if conn, err := grpcTunnelVia(ctx, s, n.addr()); err != nil {
			t.Fatalf("gRPC tunnel through %s: %v", serverName(s), err)
		} else {
			held = append(held, hold("gRPC tunnel through "+serverName(s), conn, stopHeld))
		}
		if conn, err := tunnelVia(ctx, s, n.addr()); err != nil {
			t.Fatalf("CONNECT tunnel through %s: %v", serverName(s), err)
		} else {
			held = append(held, hold("CONNECT tunnel through "+serverName(s), conn, stopHeld))
		}
		cancel()

		w := restartWindow{server: serverName(s), stop: time.Now()}
		terminate(t, s.Process)
		waitExit(t, s.Process, serverGrace+5*time.Second)
		w.exit = time.Now()
		for _, h := range held {
			h.checkCut(t, w.exit, true)
		}
		close(stopHeld)

		s.Restart(t) // the same ports, the same command line
		w.ready = time.Now()
		c.lb.waitStatus(t, s, "UP")
		c.waitMesh(t, len(nodes), nodes...)
		w.mesh = time.Now()
		windows = append(windows, w)
		t.Logf("%s: exited %s after SIGTERM; ready %s after that; every agent connected to it and haproxy counting it up %s after it was ready",
			w.server, w.exit.Sub(w.stop).Round(time.Millisecond), w.ready.Sub(w.exit).Round(time.Millisecond), w.mesh.Sub(w.ready).Round(time.Millisecond))
		if d := w.mesh.Sub(w.ready); d > 10*time.Second {
			t.Errorf("%s: the agents took %s to connect to the new replica, want < 10 s", w.server, d.Round(time.Millisecond))
		}
		time.Sleep(time.Second) // steady load on the full set again
	}
	close(stopLoad)
	loadStopped = true
	checkLoad(t, loadResult(), windows)
}

// checkLoad sorts the operations into those that overlap a restart window
// and the steady ones, which must all have succeeded; no operation may
// have hung.
func checkLoad(t *testing.T, ops []loadOp, windows []restartWindow) {
	t.Helper()
	type tally struct {
		ok, failed int
		samples    map[string]int
	}
	tallies := map[string]*tally{}
	var order []string
	for _, op := range ops {
		phase := "steady"
		for _, w := range windows {
			if op.end.After(w.stop) && op.start.Before(w.mesh) {
				phase = "during the restart of " + w.server
			}
		}
		tl := tallies[phase]
		if tl == nil {
			tl = &tally{samples: map[string]int{}}
			tallies[phase] = tl
			order = append(order, phase)
		}
		if op.err == nil {
			tl.ok++
			continue
		}
		tl.failed++
		tl.samples[errorShape(op.err)]++
		if isHang(op.err) || errors.Is(op.err, errHang) {
			t.Errorf("%s (%s, started %s): hung: %v", op.what, phase, op.start.Format("15:04:05.000"), op.err)
		} else if phase == "steady" {
			t.Errorf("%s started %s, with no restart in progress: %v", op.what, op.start.Format("15:04:05.000"), op.err)
		}
	}
	sort.Strings(order)
	for _, phase := range order {
		tl := tallies[phase]
		var shapes []string
		for s, n := range tl.samples {
			shapes = append(shapes, fmt.Sprintf("%d× %s", n, s))
		}
		sort.Strings(shapes)
		t.Logf("load %s: %d tunnels fine, %d failed %s", phase, tl.ok, tl.failed, strings.Join(shapes, "; "))
	}
	if st := tallies["steady"]; st == nil || st.ok < 20 {
		t.Errorf("the steady load completed too few tunnels to mean anything: %+v", st)
	}
}

// errorShape shortens an error for the tally: ports and addresses vary.
func errorShape(err error) string {
	s := err.Error()
	if len(s) > 160 {
		s = s[:160] + "..."
	}
	return s
}
