// Package server is edge-tunnel-server: it accepts agents on the agent port,
// serves the frontends where kube-apiserver and other cloud clients ask for
// connections, and routes each dial to the agent of the requested node.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
	"github.com/edge-tunnel/edge-tunnel/pkg/frontend"
	"github.com/edge-tunnel/edge-tunnel/pkg/httpproxy"
	"github.com/edge-tunnel/edge-tunnel/pkg/leases"
	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
	"github.com/edge-tunnel/edge-tunnel/pkg/router"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	"github.com/edge-tunnel/edge-tunnel/pkg/workers"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// Server is one edge-tunnel-server replica.
type Server struct {
	cfg    Config
	log    klog.Logger
	reg    *prometheus.Registry
	m      *metrics.Server
	agents *registry
	router *router.Router
	// workers runs the short, deep tasks of every connection: frontend
	// handshakes and requests, dials, pushes of received bytes.
	workers *workers.Pool

	bytesIn, bytesOut prometheus.Counter

	ready atomic.Bool
	// portsStatus is shown by /ports and the ports-config readiness detail.
	portsStatus portsStatus
	// Addresses actually bound, for tests that ask for port 0.
	addrMu sync.Mutex
	addrs  map[string]net.Addr
}

// New validates cfg and returns a Server ready to Run.
func New(cfg Config) (*Server, error) {
	if cfg.UDSName == "" && cfg.FrontendAddr == "" {
		return nil, errors.New("no frontend configured: set a UNIX socket (--uds-name) or a TCP frontend (--server-port)")
	}
	if cfg.FrontendAddr != "" && cfg.FrontendTLS == nil {
		return nil, errors.New("the TCP frontend needs TLS (--server-cert, --server-key, --server-ca-cert)")
	}
	if cfg.AgentAddr == "" || cfg.AgentTLS == nil {
		return nil, errors.New("the agent port needs an address and TLS (--agent-port, --cluster-cert, --cluster-key)")
	}
	if cfg.ServerID == "" {
		return nil, errors.New("server ID is empty: set --server-id")
	}
	if cfg.ServerCount < 1 {
		cfg.ServerCount = 1
	}
	if cfg.UDSMode == 0 {
		cfg.UDSMode = 0o660
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	if cfg.ShutdownGrace <= 0 {
		cfg.ShutdownGrace = 10 * time.Second
	}
	if cfg.KeepaliveTime <= 0 {
		cfg.KeepaliveTime = 30 * time.Second
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	m := metrics.NewServer(reg)
	s := &Server{
		cfg:      cfg,
		log:      klog.Background().WithName("server").WithValues("serverID", cfg.ServerID),
		reg:      reg,
		m:        m,
		agents:   newRegistry(func(n int) { m.Agents.Set(float64(n)) }),
		workers:  workers.New(workers.DefaultIdle),
		bytesIn:  m.Bytes.WithLabelValues("from_agent"),
		bytesOut: m.Bytes.WithLabelValues("to_agent"),
		addrs:    map[string]net.Addr{},
	}
	s.router = router.New(s.agents, cfg.DirectDial)
	if cfg.DirectDialAllow != nil {
		s.router.SetDirectAllow(cfg.DirectDialAllow, m.Refusals.WithLabelValues(metrics.RefusedDirectDial).Inc)
	}
	if cfg.PortsFile != "" && cfg.PortsKube != nil {
		return nil, errTwoPortSources
	}
	if cfg.Ports != nil {
		s.router.SetPorts(cfg.Ports)
	}
	for _, r := range agentauth.Reasons {
		m.AgentIdentityRefusals.WithLabelValues(r)
	}
	m.PortsGeneration.Set(float64(s.router.Ports().Generation))
	s.portsStatus.applied = time.Now()
	return s, nil
}

// Addr returns the bound address of a listener ("frontend", "agent",
// "proxy", "health", "admin") once Run has bound it.
func (s *Server) Addr(name string) net.Addr {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.addrs[name]
}

// Ready reports whether every listener is up.
func (s *Server) Ready() bool { return s.ready.Load() }

// Run binds every listener, serves until ctx ends, then stops accepting,
// lets open tunnels finish for a bounded grace period and returns. A
// listener that cannot be bound fails Run at once.
func (s *Server) Run(ctx context.Context) error {
	defer s.workers.Close() // after every connection's goroutines ended
	var lns []net.Listener
	closeAll := func() {
		for _, ln := range lns {
			ln.Close()
		}
	}
	listen := func(name, network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, fmt.Errorf("listening for the %s on %s: %w", name, addr, err)
		}
		lns = append(lns, ln)
		s.addrMu.Lock()
		s.addrs[name] = ln.Addr()
		s.addrMu.Unlock()
		return ln, nil
	}

	var udsLn, feLn net.Listener
	var err error
	if s.cfg.UDSName != "" {
		if udsLn, err = listenUnix(s.cfg.UDSName, s.cfg.UDSMode, s.cfg.UDSGroup); err != nil {
			return err
		}
		lns = append(lns, udsLn)
	}
	if s.cfg.FrontendAddr != "" {
		if feLn, err = listen("frontend", "tcp", s.cfg.FrontendAddr); err != nil {
			closeAll()
			return err
		}
	}
	agentLn, err := listen("agent", "tcp", s.cfg.AgentAddr)
	if err != nil {
		closeAll()
		return err
	}
	var proxyLn, healthLn, adminLn net.Listener
	if s.cfg.ProxyAddr != "" {
		if proxyLn, err = listen("proxy", "tcp", s.cfg.ProxyAddr); err != nil {
			closeAll()
			return err
		}
	}
	if s.cfg.HealthAddr != "" {
		if healthLn, err = listen("health", "tcp", s.cfg.HealthAddr); err != nil {
			closeAll()
			return err
		}
	}
	if s.cfg.AdminAddr != "" {
		if adminLn, err = listen("admin", "tcp", s.cfg.AdminAddr); err != nil {
			closeAll()
			return err
		}
	}

	var proxy *httpproxy.Proxy
	if proxyLn != nil {
		proxy, err = httpproxy.New(httpproxy.Options{Dialer: s, Policy: s.proxyPolicy, DialTimeout: s.cfg.DialTimeout,
			Name: "edge-tunnel-server", TLS: s.cfg.ProxyTLS, Log: s.log.WithName("http-proxy"),
			Token: s.cfg.ProxyToken, Limits: s.cfg.ProxyLimits, Refused: s.countRefusal})
		if err != nil {
			closeAll()
			return fmt.Errorf("setting up the HTTP proxy: %w", err)
		}
	}
	connect := frontend.NewConnect(s, s.cfg.DialTimeout, s.log.WithName("connect"))
	mux := frontend.NewMux(connect, s.log.WithName("frontend"))
	mux.HandshakeTimeout, mux.MaxHeadBytes = s.cfg.FrontendReadHeaderTimeout, s.cfg.FrontendMaxHeadBytes
	mux.Refused = s.countRefusal
	mux.Workers = s.workers
	feGRPC := grpc.NewServer(frontendServerOptions()...)
	feProxy := frontend.NewProxy(s, s.cfg.DialTimeout, s.log.WithName("grpc"))
	feProxy.MaxPendingDials = s.cfg.MaxPendingDialsPerStream
	feProxy.Refused = s.m.Refusals.WithLabelValues(metrics.RefusedClientPendingDials).Inc
	feProxy.Workers = s.workers
	feProxy.Register(feGRPC)
	agentGRPC := grpc.NewServer(s.agentServerOptions()...)
	serverCount, runLeases, err := s.serverCount()
	if err != nil {
		closeAll()
		return err
	}
	svc := &agentService{serverID: s.cfg.ServerID, serverCount: serverCount, liveCount: runLeases != nil, connStreams: s.cfg.ConnStreams,
		mux: s.cfg.Mux, maxPending: s.cfg.MaxPendingDialsPerAgent,
		identity: s.cfg.AgentIdentity, agents: s.agents, m: s.m, log: s.log.WithName("agents"), workers: s.workers}
	agentpb.RegisterAgentServiceServer(agentGRPC, svc)
	agentpb.RegisterConnServiceServer(agentGRPC, svc)
	agentpb.RegisterMuxServiceServer(agentGRPC, svc)

	var wg sync.WaitGroup
	goServe := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
	goServe(func() { feGRPC.Serve(mux.GRPCListener()) })
	if udsLn != nil {
		goServe(func() { mux.Serve(udsLn, nil) })
	}
	if feLn != nil {
		limited := frontend.LimitListener(feLn, s.cfg.MaxConnectionsPerClient,
			s.m.Refusals.WithLabelValues(metrics.RefusedClientConnections).Inc, s.log.WithName("frontend"))
		goServe(func() { mux.Serve(limited, frontendTLS(s.cfg.FrontendTLS)) })
	}
	goServe(func() { agentGRPC.Serve(agentLn) })
	if proxy != nil {
		goServe(func() {
			if err := proxy.Serve(proxyLn); err != nil {
				s.log.Error(err, "The HTTP proxy stopped")
			}
		})
	}
	if runLeases != nil {
		goServe(func() { runLeases(ctx) })
	}
	if src := s.portsSource(); src != nil {
		goServe(func() { s.watchPorts(ctx, src) })
	}
	httpServers := []*http.Server{}
	if healthLn != nil {
		hs := &http.Server{Handler: s.healthHandler(), ReadHeaderTimeout: 10 * time.Second}
		httpServers = append(httpServers, hs)
		goServe(func() { hs.Serve(healthLn) })
	}
	if adminLn != nil {
		hs := &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
		httpServers = append(httpServers, hs)
		goServe(func() { hs.Serve(adminLn) })
	}
	s.log.Info("edge-tunnel-server is serving", "uds", s.cfg.UDSName, "frontend", s.cfg.FrontendAddr,
		"agentPort", agentLn.Addr().String(), "proxy", s.cfg.ProxyAddr, "health", s.cfg.HealthAddr, "serverCount", s.cfg.ServerCount,
		"directDial", s.cfg.DirectDial, "mux", s.cfg.Mux, "connStreams", s.cfg.ConnStreams, "agentIdentity", identityMode(s.cfg.AgentIdentity))
	s.ready.Store(true)

	<-ctx.Done()
	s.ready.Store(false)
	s.log.Info("Shutting down: no new connections; open tunnels get a grace period", "grace", s.cfg.ShutdownGrace)
	if udsLn != nil {
		udsLn.Close()
	}
	if feLn != nil {
		feLn.Close()
	}
	mux.Close()
	graceCtx, cancelGrace := context.WithTimeout(context.Background(), s.cfg.ShutdownGrace)
	defer cancelGrace()
	proxyStopped := make(chan struct{})
	go func() {
		// Shutdown closes what is left when the grace period ends.
		if proxy != nil {
			proxy.Shutdown(graceCtx)
		}
		close(proxyStopped)
	}()
	// Every tunnel starts at a frontend, so once the frontends are done
	// nothing needs the agents any more: their control streams never end by
	// themselves, and waiting for them would always use the whole grace.
	stopped := make(chan struct{})
	go func() {
		feGRPC.GracefulStop()
		connect.Wait()
		<-proxyStopped
		close(stopped)
	}()
	select {
	case <-stopped:
		s.log.Info("Every tunnel has ended")
	case <-time.After(s.cfg.ShutdownGrace):
		s.log.Info("Grace period over; closing the remaining tunnels")
	}
	feGRPC.Stop()
	agentGRPC.Stop()
	cancelGrace()
	<-proxyStopped
	for _, hs := range httpServers {
		hs.Close()
	}
	closeAll()
	wg.Wait()
	if s.cfg.UDSName != "" {
		os.Remove(s.cfg.UDSName)
	}
	return nil
}

// serverCount returns what the handshake announces as serverCount and,
// with Leases, the loop that renews this replica's Lease and counts the live
// ones (it deletes the Lease when its context ends, so the other replicas
// count this one out as soon as it shuts down).
func (s *Server) serverCount() (func() int, func(context.Context), error) {
	floor := s.cfg.ServerCount
	if s.cfg.Leases == nil {
		return func() int { return floor }, nil, nil
	}
	lc := *s.cfg.Leases
	lc.Holder = s.cfg.ServerID
	lc.Log = s.log.WithName("leases")
	renewer, err := leases.NewRenewer(lc)
	if err != nil {
		return nil, nil, fmt.Errorf("replica Leases (--enable-lease-controller): %w", err)
	}
	counter, err := leases.NewCounter(lc)
	if err != nil {
		return nil, nil, fmt.Errorf("replica Leases (--enable-lease-controller): %w", err)
	}
	count := func() int {
		n, _ := counter.Count()
		return max(n, floor)
	}
	run := func(ctx context.Context) {
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); renewer.Run(ctx) }()
		counter.Run(ctx)
		wg.Wait()
	}
	return count, run, nil
}

// grpc window sizes. Fixed windows (which turn off BDP estimation) keep the
// per-connection backpressure predictable: a stalled tunneled connection can
// hold at most one stream window of data in flight.
const (
	streamWindow = 1 << 20
	connWindow   = 64 << 20
	// maxPacket bounds one frontend packet. The konnectivity client sends
	// each Write as one DATA packet, unchunked.
	maxPacket = 16 << 20
)

func frontendServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxPacket),
		grpc.ForceServerCodecV2(tunnel.Codec),
		experimental.BufferPool(tunnel.GRPCBufferPool),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(streamWindow * 2),
		// No read buffer: kube-apiserver holds a gRPC connection per
		// tunnel, and a buffer of gRPC's own is 64 KiB of heap each (more
		// than everything else an idle tunnel costs); frames are read
		// straight into gRPC's pooled buffers instead, which moves uploads
		// as fast. Over TLS (the TCP frontend) a record is buffered anyway.
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(256 << 10),
	}
}

func (s *Server) agentServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(s.cfg.AgentTLS)),
		grpc.ForceServerCodecV2(tunnel.Codec),
		experimental.BufferPool(tunnel.GRPCBufferPool),
		// A ping unanswered for half the interval (at most 10 s) ends the
		// connection: a vanished agent is noticed about 1.5 x --keepalive-time
		// after its last packet (15 s with the default), short settings
		// included.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: s.cfg.KeepaliveTime, Timeout: min(s.cfg.KeepaliveTime/2, 10*time.Second)}),
		// Agents ping on their own schedule (default 15 s); only a ping
		// flood is refused.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		// No read buffer of gRPC's own: TLS already holds a whole record,
		// so a second buffer would only add a copy of every byte and 64 KiB
		// per connected agent.
		grpc.ReadBufferSize(0),
		grpc.WriteBufferSize(64 << 10),
	}
}

// frontendTLS offers h2 (gRPC) and http/1.1 (CONNECT) by ALPN. gRPC clients
// insist on h2 being negotiated; HTTP CONNECT clients usually offer nothing.
func frontendTLS(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{"h2", "http/1.1"}
	return c
}

// countRefusal counts a request refused by a policy or limit.
func (s *Server) countRefusal(reason string) { s.m.Refusals.WithLabelValues(reason).Inc() }

// identityMode names the --agent-identity mode for the start-up log line.
func identityMode(b *agentauth.Binder) string { return b.Mode() }
