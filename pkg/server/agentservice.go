package server

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	"github.com/edge-tunnel/edge-tunnel/pkg/workers"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// agentService serves AgentService.Connect (one control stream per agent
// connection), MuxService.Mux (every tunneled connection of an agent
// connection) and ConnService.Conn (one stream per tunneled connection).
type agentService struct {
	agentpb.UnimplementedAgentServiceServer
	agentpb.UnimplementedConnServiceServer
	agentpb.UnimplementedMuxServiceServer

	serverID string
	// serverCount is the count announced now: --server-count, or with
	// Leases the live replicas (liveCount then offers agents the probe).
	serverCount func() int
	liveCount   bool
	connStreams bool
	mux         bool
	maxPending  int               // per agent; 0: no bound
	identity    *agentauth.Binder // nil: claims are not checked
	agents      *registry
	m           *metrics.Server
	log         klog.Logger
	workers     *workers.Pool // for the mux streams' pushes
}

func (a *agentService) Connect(stream grpc.BidiStreamingServer[client.Packet, client.Packet]) error {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(agentpb.CountProbeKey)) > 0 {
		// A count probe on a connection the agent already holds: the
		// header is the whole answer, and nothing is registered. Only an
		// agent whose control stream (and so whose identity check) is on
		// this very connection gets one.
		p, _ := peer.FromContext(ctx)
		if a.agents.session(first(md.Get(agentpb.AgentIDKey)), peerAddr(p)) == nil {
			return status.Errorf(codes.FailedPrecondition, "edge-tunnel-server: a count probe must come on the connection of the agent's control stream; open AgentService.Connect first")
		}
		if err := stream.SendHeader(a.handshake(false)); err != nil {
			return status.Errorf(codes.Unavailable, "edge-tunnel-server: answering a count probe: %v", err)
		}
		return nil
	}
	ids := md.Get(agentpb.AgentIDKey)
	if len(ids) != 1 || ids[0] == "" {
		return status.Errorf(codes.InvalidArgument, "edge-tunnel-server: the agent must send exactly one %q metadata value, got %d: set --agent-id on the agent", agentpb.AgentIDKey, len(ids))
	}
	id := ids[0]
	var idents identity.Identifiers
	switch v := md.Get(agentpb.AgentIdentifiersKey); len(v) {
	case 0:
	case 1:
		var err error
		if idents, err = identity.Parse(v[0]); err != nil {
			return status.Errorf(codes.InvalidArgument, "edge-tunnel-server: agent %s sent bad %q metadata: %v", id, agentpb.AgentIdentifiersKey, err)
		}
	default:
		return status.Errorf(codes.InvalidArgument, "edge-tunnel-server: agent %s sent %d %q metadata values; send at most one", id, len(v), agentpb.AgentIdentifiersKey)
	}
	p, _ := peer.FromContext(ctx)
	if err := a.checkIdentity(ctx, p, md, id, idents); err != nil {
		return err
	}
	features := md.Get(agentpb.FeaturesKey)
	mode := metrics.ModeSingleStream
	switch {
	case a.mux && agentpb.HasFeature(features, agentpb.FeatureMux):
		mode = metrics.ModeMux
	case a.connStreams && agentpb.HasFeature(features, agentpb.FeatureConnStreams):
		mode = metrics.ModeConnStreams
	}
	connStreams := mode != metrics.ModeSingleStream

	if err := stream.SendHeader(a.handshake(true)); err != nil {
		return status.Errorf(codes.Unavailable, "edge-tunnel-server: sending the handshake header to agent %s: %v", id, err)
	}

	s := &session{
		id:          id,
		hostKeys:    hostKeys(id, idents),
		peerAddr:    peerAddr(p),
		connStreams: connStreams,
		stream:      stream,
		m:           a.m,
		maxPending:  a.maxPending,
		pending:     map[int64]*pendingDial{},
		conns:       map[int64]*tunnel.PacketConn{},
	}
	s.log = a.log.WithValues("agentID", id, "peer", s.peerAddr)
	a.agents.add(s)
	a.m.AgentStreams.WithLabelValues(mode).Inc()
	s.log.Info("Agent connected", "identifiers", idents.String(), "mode", mode)
	err := s.serve()
	a.agents.remove(s)
	a.m.AgentStreams.WithLabelValues(mode).Dec()
	s.log.Info("Agent disconnected", "reason", errText(err))
	return err
}

// handshake is the response header of Connect: serverID, serverCount and
// (unless it answers a count probe) the features this server offers.
func (a *agentService) handshake(features bool) metadata.MD {
	hdr := metadata.Pairs(agentpb.ServerIDKey, a.serverID, agentpb.ServerCountKey, strconv.Itoa(a.serverCount()))
	if features && a.mux {
		hdr.Append(agentpb.FeaturesKey, agentpb.FeatureMux)
	}
	if features && a.connStreams {
		hdr.Append(agentpb.FeaturesKey, agentpb.FeatureConnStreams)
	}
	if a.liveCount {
		hdr.Append(agentpb.FeaturesKey, agentpb.FeatureLiveCount)
	}
	return hdr
}

func (a *agentService) Conn(stream grpc.BidiStreamingServer[agentpb.Chunk, agentpb.Chunk]) error {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	id := first(md.Get(agentpb.AgentIDKey))
	dialID, err := strconv.ParseInt(first(md.Get(agentpb.DialIDKey)), 10, 64)
	if id == "" || err != nil {
		return status.Errorf(codes.InvalidArgument, "edge-tunnel-server: a connection stream needs %q and a numeric %q in its metadata", agentpb.AgentIDKey, agentpb.DialIDKey)
	}
	p, _ := peer.FromContext(ctx)
	s := a.agents.session(id, peerAddr(p))
	if s == nil {
		return status.Errorf(codes.FailedPrecondition, "edge-tunnel-server: agent %s has no control stream on this connection; open AgentService.Connect first", id)
	}
	// The handler's goroutine does one direction of the copy (Serve) and
	// returns, ending the stream, once the connection is closed.
	conn := tunnel.NewHostedStreamConn(stream, func() {})
	if !s.resolve(dialID, dialResult{conn: conn}) {
		return status.Errorf(codes.NotFound, "edge-tunnel-server: dial %d is not pending (cancelled or timed out); close the connection", dialID)
	}
	conn.Serve(ctx)
	return nil
}

// Mux serves the stream that carries every tunneled connection of one
// agent connection. An open frame answers a dial: it is matched, when it
// comes, with the pending dials of the agent's control stream on the same
// HTTP/2 connection (that stream proved the agent's identity), which must
// exist when the mux stream opens (the agent opens it for a dial). The
// match is made per open frame, since the control stream may end (a
// drain) while the mux stream still carries connections.
func (a *agentService) Mux(stream grpc.BidiStreamingServer[agentpb.Frame, agentpb.Frame]) error {
	ctx := stream.Context()
	md, _ := metadata.FromIncomingContext(ctx)
	id := first(md.Get(agentpb.AgentIDKey))
	if id == "" {
		return status.Errorf(codes.InvalidArgument, "edge-tunnel-server: a mux stream needs %q in its metadata", agentpb.AgentIDKey)
	}
	p, _ := peer.FromContext(ctx)
	addr := peerAddr(p)
	if a.agents.session(id, addr) == nil {
		// The agent opens its mux for a dial its control stream asked
		// for; without one there is nothing to carry, and a client that
		// passed TLS may not hold streams here beside the identity check.
		return status.Errorf(codes.FailedPrecondition, "edge-tunnel-server: agent %s has no control stream on this connection; open AgentService.Connect first", id)
	}
	log := a.log.WithValues("agentID", id, "peer", addr)
	m := tunnel.NewMux(stream, tunnel.MuxOptions{
		Workers: a.workers,
		OnOpen: func(c *tunnel.MuxConn) error {
			s := a.agents.session(id, addr)
			if s == nil {
				return fmt.Errorf("edge-tunnel-server: agent %s has no control stream on this connection; open AgentService.Connect first", id)
			}
			if !s.resolve(c.ID(), dialResult{conn: c}) {
				return fmt.Errorf("edge-tunnel-server: dial %d is not pending (cancelled or timed out); close the connection", c.ID())
			}
			return nil
		},
		OnBadFrame: func(err error) {
			log.Info("Dropping a bad frame from the agent's mux stream", "err", err)
		},
	})
	a.m.MuxStreams.Inc()
	defer a.m.MuxStreams.Dec()
	if err := m.Serve(); err != nil && ctx.Err() == nil {
		return status.Errorf(codes.Unavailable, "edge-tunnel-server: mux stream of agent %s: %v", id, err)
	}
	return nil
}

// checkIdentity refuses an agent whose client certificate or ServiceAccount
// token does not prove the node it claims, before it is registered: a
// rogue agent never becomes a route, so dials for the node it names keep
// going to the real agent.
func (a *agentService) checkIdentity(ctx context.Context, p *peer.Peer, md metadata.MD, id string, idents identity.Identifiers) error {
	if a.identity == nil {
		return nil
	}
	cert := peerCert(p)
	err := a.identity.Check(ctx, agentauth.Credentials{Certificate: cert, Authorization: md.Get("authorization")}, id, idents)
	if err == nil {
		return nil
	}
	subject := ""
	if cert != nil {
		subject = cert.Subject.String()
	}
	log := a.log.WithValues("agentID", id, "peer", peerAddr(p), "certificate", subject, "identifiers", idents.String())
	var r *agentauth.Refusal
	if !errors.As(err, &r) {
		reason := agentauth.ReasonNodeLookup
		var le *agentauth.LookupError
		if errors.As(err, &le) {
			reason = le.Reason
		}
		a.m.AgentIdentityRefusals.WithLabelValues(reason).Inc()
		log.Error(err, "Agent refused: its identity could not be checked")
		return status.Errorf(codes.Unavailable, "edge-tunnel-server: cannot check the identity agent %s claims: %v; the agent will retry", id, err)
	}
	a.m.AgentIdentityRefusals.WithLabelValues(r.Reason).Inc()
	if r.Unauthenticated() {
		log.Info("Agent refused: its credential is missing or not accepted", "reason", r.Reason, "detail", r.Detail)
		return status.Errorf(codes.Unauthenticated, "edge-tunnel-server: agent %s refused: %v", id, err)
	}
	credential := r.Credential
	if credential == "" {
		credential = "certificate"
	}
	log.Info("Agent refused: its credential does not prove the node it claims", "reason", r.Reason,
		"credential", credential, "proven", r.Proven, "claim", r.Claim, "detail", r.Detail)
	return status.Errorf(codes.PermissionDenied, "edge-tunnel-server: agent %s refused: %v", id, err)
}

// peerCert is the client certificate of the connection. tlsutil verifies
// it in VerifyConnection, so VerifiedChains is empty; PeerCertificates[0]
// is the verified leaf.
func peerCert(p *peer.Peer) *x509.Certificate {
	if p == nil {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

func hostKeys(id string, idents identity.Identifiers) []string {
	keys := idents.Keys()
	if k := identity.NormalizeHost(id); k != "" {
		keys = append(keys, k)
	}
	seen := map[string]bool{}
	out := keys[:0]
	for _, k := range keys {
		if !seen[k] {
			seen[k] = true
			out = append(out, k)
		}
	}
	return out
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

func peerAddr(p *peer.Peer) string {
	if p == nil || p.Addr == nil {
		return ""
	}
	return p.Addr.String()
}

func errText(err error) string {
	if err == nil {
		return "stream closed by the agent"
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.Canceled || err == context.Canceled {
		return "connection closed"
	}
	return err.Error()
}
