package agent

import (
	"context"
	"crypto/tls"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// Config is everything an Agent needs, already validated and loaded.
// cmd/edge-tunnel-agent/app/options builds it from flags and environment.
type Config struct {
	// ServerAddr is host:port of the server's agent port, normally a load
	// balancer in front of all replicas.
	ServerAddr string
	// TLS is the client TLS config (CA, client certificate, server name).
	TLS *tls.Config
	// TokenFile, when set, is a ServiceAccount token file whose content is
	// sent as "authorization: Bearer TOKEN" on every control stream. It is
	// read on every connect, as the kubelet rotates it.
	TokenFile string

	// AgentID names this agent (normally the node name).
	AgentID string
	// Identifiers are the hosts and addresses this agent serves; the server
	// routes a dial for any of them to this agent.
	Identifiers identity.Identifiers
	// AllowedCIDRs widen what the agent dials beyond its own identifiers'
	// addresses and loopback.
	AllowedCIDRs []*net.IPNet

	// HealthAddr serves /healthz, /livez, /readyz and /metrics; AdminAddr pprof.
	HealthAddr string
	AdminAddr  string

	// SyncInterval is the first reconnect backoff and the period at which the
	// agent checks that it holds a connection to every server; SyncIntervalCap
	// caps the exponential backoff.
	SyncInterval    time.Duration
	SyncIntervalCap time.Duration
	// KeepaliveTime is the interval of gRPC keepalive pings to the server.
	KeepaliveTime time.Duration
	// DialTimeout bounds the agent's dial of a target.
	DialTimeout time.Duration
	// DrainGrace is how long open connections may finish after SIGTERM.
	DrainGrace time.Duration
	// ConnStreams announces the per-connection stream extension. Off, the
	// agent speaks the plain upstream konnectivity protocol.
	ConnStreams bool
	// Mux announces the multiplexed extension (every connection on one
	// MuxService stream, each with its own window), which wins over
	// ConnStreams when the server offers both.
	Mux bool
	// MuxIdle is how long the agent keeps a mux stream that carries no
	// connection before closing it (0: DefaultMuxIdle): an open one costs
	// the server about 16 KB, which thousands of agents that tunnel
	// something now and then should not hold for good.
	MuxIdle time.Duration

	// ServerCounter, when set, counts the server replicas from their
	// Leases (--count-server-leases): the agent holds that many once it
	// reports a count, and goes by the count the servers announce until
	// then. Run is called with the agent's lifetime.
	ServerCounter ServerCounter

	// Registry receives the agent's metrics; nil means a private registry.
	Registry *prometheus.Registry
}

// DefaultMuxIdle is the default of Config.MuxIdle.
const DefaultMuxIdle = time.Minute

// ServerCounter counts the server replicas; *leases.Watcher is one.
type ServerCounter interface {
	// Run counts until ctx ends.
	Run(ctx context.Context)
	// Count returns the number of replicas, and false while it knows none.
	Count() (int, bool)
}
