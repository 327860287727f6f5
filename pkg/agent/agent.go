// Package agent is edge-tunnel-agent: it dials out to the servers (through
// their load balancer), holds one connection to every replica, and dials the
// targets on its own node that the servers ask for.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/pkg/health"
	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	"github.com/edge-tunnel/edge-tunnel/pkg/workers"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// Agent is one edge-tunnel-agent.
type Agent struct {
	cfg    Config
	log    klog.Logger
	reg    *prometheus.Registry
	m      *metrics.Agent
	dialer *dialer
	// workers runs dials and the pushes of received bytes (package workers).
	workers *workers.Pool

	// connCtx lives until the drain grace period is over: tunneled
	// connections and control streams use it, so they outlive Run's ctx.
	connCtx    context.Context
	connCancel context.CancelFunc

	open atomic.Int64 // dials in progress and open tunneled connections

	mu      sync.Mutex
	servers map[string]*serverConn // by serverID
	// serverCount is the count a server announced last: the newest word on
	// how many replicas there are, so a count that went down (replicas
	// removed) lowers the target as one that went up raises it.
	serverCount int
	// target is the number of replicas the agent last aimed for: the count
	// of cfg.ServerCounter when it has one, else serverCount.
	target int
	// liveCount holds the serverIDs whose count follows their Leases
	// (agentpb.FeatureLiveCount): while the agent holds every replica, it
	// asks one of them for the count every SyncIntervalCap.
	liveCount map[string]bool
	lastErr   error         // why the last connection attempt failed
	changed   chan struct{} // a server connection ended
}

// New validates cfg and returns an Agent ready to Run.
func New(cfg Config) (*Agent, error) {
	if cfg.ServerAddr == "" {
		return nil, errors.New("no server address: set --proxy-server-host and --proxy-server-port")
	}
	if cfg.TLS == nil {
		return nil, errors.New("no TLS configuration for the server connection: set --ca-cert, and --agent-cert and --agent-key or --service-account-token-path")
	}
	if cfg.AgentID == "" {
		return nil, errors.New("agent ID is empty: set --agent-id or NODE_NAME")
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Second
	}
	if cfg.SyncIntervalCap < cfg.SyncInterval {
		cfg.SyncIntervalCap = max(10*time.Second, cfg.SyncInterval)
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = 15 * time.Second
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.DrainGrace < 0 {
		cfg.DrainGrace = 0
	}
	if cfg.MuxIdle <= 0 {
		cfg.MuxIdle = DefaultMuxIdle
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	a := &Agent{
		cfg:         cfg,
		log:         klog.Background().WithName("agent").WithValues("agentID", cfg.AgentID),
		reg:         reg,
		m:           metrics.NewAgent(reg),
		dialer:      newDialer(cfg.Identifiers, cfg.AllowedCIDRs),
		workers:     workers.New(workers.DefaultIdle),
		servers:     map[string]*serverConn{},
		serverCount: 1,
		target:      1,
		liveCount:   map[string]bool{},
		changed:     make(chan struct{}, 1),
	}
	a.m.TargetServerConnections.Set(float64(a.target))
	return a, nil
}

// Run keeps a connection to every server replica until ctx ends. Then it
// sends DRAIN to every server, lets open connections finish for the drain
// grace period, closes everything and returns.
func (a *Agent) Run(ctx context.Context) error {
	a.connCtx, a.connCancel = context.WithCancel(context.Background())
	defer a.connCancel()
	defer a.workers.Close()

	var httpServers []*http.Server
	for _, l := range []struct {
		name, addr string
		h          http.Handler
	}{{"health", a.cfg.HealthAddr, a.healthHandler()}, {"admin", a.cfg.AdminAddr, health.AdminHandler()}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, hs := range httpServers {
				hs.Close()
			}
			return fmt.Errorf("listening for the %s port on %s: %w", l.name, l.addr, err)
		}
		hs := &http.Server{Handler: l.h, ReadHeaderTimeout: 10 * time.Second}
		httpServers = append(httpServers, hs)
		go hs.Serve(ln)
	}
	defer func() {
		for _, hs := range httpServers {
			hs.Close()
		}
	}()

	if a.cfg.ServerCounter != nil {
		// Counting stops with ctx: once draining, the agent dials no
		// more servers.
		go a.cfg.ServerCounter.Run(ctx)
	}
	a.log.Info("edge-tunnel-agent starting", "server", a.cfg.ServerAddr, "identifiers", a.cfg.Identifiers.String(),
		"mux", a.cfg.Mux, "connStreams", a.cfg.ConnStreams, "countServerLeases", a.cfg.ServerCounter != nil)
	backoff := a.cfg.SyncInterval
	var lastProbe time.Time
	for ctx.Err() == nil {
		if a.connected() < a.wanted() {
			err := a.connectOnce(ctx)
			a.mu.Lock()
			a.lastErr = err
			a.mu.Unlock()
			if err == nil {
				backoff = a.cfg.SyncInterval
				continue
			}
			if ctx.Err() != nil {
				break
			}
			wait := jitter(backoff)
			a.log.Info("Not connected to every server yet; retrying", "connected", a.connected(), "want", a.wanted(), "err", err, "retryIn", wait.Round(time.Millisecond))
			backoff = min(2*backoff, a.cfg.SyncIntervalCap)
			a.sleep(ctx, wait)
			continue
		}
		// An agent counting Leases itself needs no probes.
		if sc := a.liveCountServer(); sc != nil && a.cfg.ServerCounter == nil && time.Since(lastProbe) >= a.cfg.SyncIntervalCap {
			lastProbe = time.Now()
			if err := a.probeCount(ctx, sc); err != nil {
				sc.log.V(2).Info("Count probe failed", "err", err)
			}
			continue
		}
		a.sleep(ctx, a.cfg.SyncInterval)
	}
	a.drain()
	return nil
}

// sleep waits for d, ctx, or a server connection ending.
func (a *Agent) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	case <-a.changed:
	}
}

// jitter spreads reconnects of many agents: d +/- 20%.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func (a *Agent) connected() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.servers)
}

// wanted is the number of server replicas to hold a connection to.
func (a *Agent) wanted() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.retarget("")
	return a.target
}

// retarget updates a.target from the Lease count, else from the servers'
// announced count, and logs a change; announcedBy names the server whose
// announcement prompted it, if any. a.mu held.
func (a *Agent) retarget(announcedBy string) {
	n, source := a.serverCount, "announced"
	if a.cfg.ServerCounter != nil {
		if c, ok := a.cfg.ServerCounter.Count(); ok {
			n, source = c, "leases"
		}
	}
	if n == a.target {
		return
	}
	kv := []any{"from", a.target, "to", n, "source", source, "connected", len(a.servers)}
	if source == "announced" && announcedBy != "" {
		kv = append(kv, "announcedBy", announcedBy)
	}
	a.log.Info("Server count changed", kv...)
	a.target = n
	a.m.TargetServerConnections.Set(float64(n))
}

// connectOnce opens one new gRPC connection (through the load balancer, so
// possibly to any replica) and its control stream. A connection to a
// replica the agent already holds is closed again.
func (a *Agent) connectOnce(ctx context.Context) error {
	cc, err := grpc.NewClient(a.cfg.ServerAddr,
		grpc.WithTransportCredentials(credentials.NewTLS(a.cfg.TLS)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: a.cfg.KeepaliveTime, Timeout: min(a.cfg.KeepaliveTime/2, 10*time.Second), PermitWithoutStream: true}),
		experimental.WithBufferPool(tunnel.GRPCBufferPool),
		grpc.WithDefaultCallOptions(tunnel.CallOptions()...),
		grpc.WithInitialWindowSize(1<<20),
		grpc.WithInitialConnWindowSize(64<<20),
		// TLS holds a whole record already: a gRPC read buffer on top
		// would only copy every byte once more (see the server's side).
		grpc.WithReadBufferSize(0),
		grpc.WithWriteBufferSize(64<<10),
	)
	if err != nil {
		a.m.ConnectErrors.WithLabelValues("config").Inc()
		return fmt.Errorf("creating the gRPC client for %s: %w", a.cfg.ServerAddr, err)
	}
	var features []string
	if a.cfg.Mux {
		features = append(features, agentpb.FeatureMux)
	}
	if a.cfg.ConnStreams {
		features = append(features, agentpb.FeatureConnStreams)
	}
	md := metadata.Pairs(agentpb.AgentIDKey, a.cfg.AgentID, agentpb.AgentIdentifiersKey, a.cfg.Identifiers.String(), agentpb.FeaturesKey, strings.Join(features, ","))
	if a.cfg.TokenFile != "" {
		token, err := ReadToken(a.cfg.TokenFile)
		if err != nil {
			cc.Close()
			a.m.ConnectErrors.WithLabelValues("config").Inc()
			return err
		}
		md.Append("authorization", "Bearer "+token)
	}
	sctx, cancel := context.WithCancel(a.connCtx)
	stream, err := agentpb.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(sctx, md))
	var hdr metadata.MD
	if err == nil {
		hdr, err = stream.Header()
	}
	if err == nil && hdr == nil {
		// The server ended the stream without a handshake: a refusal
		// (say, a certificate that does not prove the node claimed), whose
		// status only the end of the stream carries.
		if _, rerr := stream.Recv(); rerr != nil && rerr != io.EOF {
			err = rerr
		}
	}
	if err != nil {
		cancel()
		cc.Close()
		a.m.ConnectErrors.WithLabelValues("connect").Inc()
		return fmt.Errorf("connecting to %s: %w", a.cfg.ServerAddr, err)
	}
	ids, counts := hdr.Get(agentpb.ServerIDKey), hdr.Get(agentpb.ServerCountKey)
	count, cerr := strconv.Atoi(first(counts))
	if len(ids) != 1 || ids[0] == "" || len(counts) != 1 || cerr != nil || count < 1 {
		cancel()
		cc.Close()
		a.m.ConnectErrors.WithLabelValues("handshake").Inc()
		return fmt.Errorf("server at %s sent a bad handshake (want one %s and one positive %s, got %q and %q)", a.cfg.ServerAddr, agentpb.ServerIDKey, agentpb.ServerCountKey, ids, counts)
	}
	offered := hdr.Get(agentpb.FeaturesKey)
	sc := &serverConn{a: a, serverID: ids[0], cc: cc, stream: stream,
		connStreams: a.cfg.ConnStreams && agentpb.HasFeature(offered, agentpb.FeatureConnStreams),
		log:         a.log.WithValues("serverID", ids[0]),
		dials:       map[int64]context.CancelFunc{}, conns: map[int64]*tunnel.PacketConn{}}
	if a.cfg.Mux && agentpb.HasFeature(offered, agentpb.FeatureMux) {
		sc.useMux, sc.stopControl = true, cancel
	}

	live := agentpb.HasFeature(hdr.Get(agentpb.FeaturesKey), agentpb.FeatureLiveCount)
	a.mu.Lock()
	a.setCount(count, sc.serverID)
	_, dup := a.servers[sc.serverID]
	if !dup {
		a.servers[sc.serverID] = sc
		a.liveCount[sc.serverID] = live
	}
	a.mu.Unlock()
	if dup {
		cancel()
		cc.Close()
		return fmt.Errorf("the load balancer chose server %s again, which this agent is already connected to", sc.serverID)
	}
	a.m.ServerConnections.Inc()
	sc.log.Info("Connected to server", "serverCount", count, "mode", sc.mode())
	go func() {
		err := sc.serve()
		cancel()
		a.mu.Lock()
		delete(a.servers, sc.serverID)
		delete(a.liveCount, sc.serverID)
		if err != nil {
			a.lastErr = fmt.Errorf("connection to server %s ended: %w", sc.serverID, err)
		}
		a.mu.Unlock()
		a.m.ServerConnections.Dec()
		sc.log.Info("Disconnected from server", "err", err)
		select {
		case a.changed <- struct{}{}:
		default:
		}
	}()
	return nil
}

// setCount adopts count, the server count serverID announced; a.mu held.
func (a *Agent) setCount(count int, serverID string) {
	a.serverCount = count
	a.retarget(serverID)
}

// liveCountServer returns a connected server whose count follows its
// Leases, or nil.
func (a *Agent) liveCountServer() *serverConn {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, live := range a.liveCount {
		if live {
			return a.servers[id]
		}
	}
	return nil
}

// probeCount asks sc for its current server count on the connection the
// agent already holds: a Connect marked as a count probe, which the server
// answers with its handshake header alone. Replicas added since the agent
// connected raise the target, so the agent dials until it reaches them;
// replicas gone lower it.
func (a *Agent) probeCount(ctx context.Context, sc *serverConn) error {
	pctx, cancel := context.WithTimeout(ctx, a.cfg.DialTimeout)
	defer cancel()
	md := metadata.Pairs(agentpb.AgentIDKey, a.cfg.AgentID, agentpb.CountProbeKey, "1")
	stream, err := agentpb.NewAgentServiceClient(sc.cc).Connect(metadata.NewOutgoingContext(pctx, md))
	if err != nil {
		return fmt.Errorf("count probe to server %s: %w", sc.serverID, err)
	}
	hdr, err := stream.Header()
	if err != nil {
		return fmt.Errorf("count probe to server %s: %w", sc.serverID, err)
	}
	counts := hdr.Get(agentpb.ServerCountKey)
	count, err := strconv.Atoi(first(counts))
	if len(counts) != 1 || err != nil || count < 1 {
		return fmt.Errorf("count probe to server %s: want one positive %s, got %q", sc.serverID, agentpb.ServerCountKey, counts)
	}
	a.mu.Lock()
	a.setCount(count, sc.serverID)
	a.mu.Unlock()
	return nil
}

// drain sends DRAIN to every server, waits until no connection is open or
// the grace period is over, then ends everything.
func (a *Agent) drain() {
	a.mu.Lock()
	servers := make([]*serverConn, 0, len(a.servers))
	for _, sc := range a.servers {
		servers = append(servers, sc)
	}
	a.mu.Unlock()
	for _, sc := range servers {
		sc.drain()
	}
	a.log.Info("Draining: servers told to prefer other agents; open connections may finish", "grace", a.cfg.DrainGrace)
	deadline := time.Now().Add(a.cfg.DrainGrace)
	for time.Now().Before(deadline) && a.openConns() > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	a.connCancel()
	for _, sc := range servers {
		sc.cc.Close()
	}
}

func (a *Agent) openConns() int64 { return a.open.Load() }

func (a *Agent) healthHandler() http.Handler {
	ready := []health.Check{{Name: "server-connection", Fn: func(*http.Request) error {
		a.mu.Lock()
		defer a.mu.Unlock()
		if len(a.servers) > 0 {
			return nil
		}
		if a.lastErr != nil {
			return fmt.Errorf("not connected to any server: %w", a.lastErr)
		}
		return errors.New("not connected to any server yet")
	}}}
	return health.Handler(nil, ready, a.reg)
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
