// Package metrics defines the Prometheus metrics of edge-tunnel-server and
// edge-tunnel-agent. Metrics are registered on a registry the caller passes
// in, never on the global one, so tests and several servers in one process
// do not collide. Adding the Go and process collectors is the caller's job.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

const namespace = "edge_tunnel"

// Label values. Series for the combinations of these are created at zero
// when the metrics are made, so dashboards and alerts see them before the
// first event.
const (
	FrontendGRPC      = "grpc"
	FrontendConnect   = "connect"
	FrontendHTTPProxy = "http-proxy"

	RouteAgent  = "agent"
	RouteDirect = "direct"
	RouteNone   = "none"

	ResultOK        = "ok"
	ResultRefused   = "refused"
	ResultError     = "error"
	ResultTimeout   = "timeout"
	ResultCancelled = "cancelled"

	ModeMux          = "mux"
	ModeConnStreams  = "conn-streams"
	ModeSingleStream = "single-stream"

	// Reasons of edge_tunnel_server_refusals_total: a policy or a limit
	// against abuse turned a request away.
	RefusedDirectDial         = "direct_dial_not_allowed"
	RefusedAgentPendingDials  = "agent_pending_dials"
	RefusedClientPendingDials = "client_pending_dials"
	RefusedClientConnections  = "client_connections"
	RefusedProxyAuth          = "proxy_unauthenticated"
	RefusedHeaderTooLarge     = "header_too_large"
	RefusedHeaderTimeout      = "header_timeout"

	DirectionToAgent    = "to_agent"
	DirectionFromAgent  = "from_agent"
	DirectionToServer   = "to_server"
	DirectionFromServer = "from_server"
)

var (
	frontends        = []string{FrontendGRPC, FrontendConnect, FrontendHTTPProxy}
	routes           = []string{RouteAgent, RouteDirect, RouteNone}
	serverResults    = []string{ResultOK, ResultRefused, ResultError, ResultTimeout, ResultCancelled}
	agentResults     = []string{ResultOK, ResultRefused, ResultError, ResultCancelled}
	modes            = []string{ModeMux, ModeConnStreams, ModeSingleStream}
	serverDirections = []string{DirectionToAgent, DirectionFromAgent}
	agentDirections  = []string{DirectionToServer, DirectionFromServer}
	refusalReasons   = []string{RefusedDirectDial, RefusedAgentPendingDials, RefusedClientPendingDials, RefusedClientConnections, RefusedProxyAuth,
		RefusedHeaderTooLarge, RefusedHeaderTimeout}
)

// dialBuckets spans a loopback dial (about half a millisecond) to the longest
// dial timeout worth waiting for (30 s).
var dialBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// Server holds the metrics of edge-tunnel-server.
type Server struct {
	// Dials counts dials by frontend, route (agent, direct, none) and result
	// (ok, refused, error, timeout, cancelled).
	Dials *prometheus.CounterVec
	// DialLatency is the time from a dial request to its answer.
	DialLatency *prometheus.HistogramVec
	// OpenConns is the number of tunneled connections open per frontend.
	OpenConns *prometheus.GaugeVec
	// Agents is the number of agents connected to this server.
	Agents prometheus.Gauge
	// AgentStreams counts agent connections by mode (mux, conn-streams or
	// single-stream), that is which extension the agent speaks.
	AgentStreams *prometheus.GaugeVec
	// MuxStreams counts open MuxService streams: agent connections that
	// carry tunneled connections now or did lately (an agent closes an
	// idle one).
	MuxStreams prometheus.Gauge
	// AgentIdentityRefusals counts agents refused because their client
	// certificate does not prove the node they claim, by reason.
	AgentIdentityRefusals *prometheus.CounterVec
	// Bytes counts tunneled payload bytes by direction.
	Bytes *prometheus.CounterVec
	// StalledCloses counts connections closed because a reader stopped
	// reading and held up the agent connection.
	StalledCloses prometheus.Counter
	// BadPackets counts packets dropped as malformed or unexpected, by
	// source (agent or frontend) and reason.
	BadPackets *prometheus.CounterVec
	// Refusals counts requests turned away by a policy or a limit against
	// abuse, by reason (the Refused* constants): each one is a client that
	// asked for more than the configuration allows.
	Refusals *prometheus.CounterVec

	// PortsGeneration is the generation of the edge-node port policy in
	// effect: 0 at start, one more per change applied.
	PortsGeneration prometheus.Gauge
	// PortsWarnings counts items of ConfigMap edge-tunnel-server-cfg that
	// were not applied (or unknown keys), each counted once when it first
	// appears, not on every read.
	PortsWarnings prometheus.Counter
	// PortsSourceUp is 1 when the last read of the port policy's source
	// (the Kubernetes API or --ports-config) succeeded, 0 when it failed
	// and the last good policy is kept. 1 when there is no source.
	PortsSourceUp prometheus.Gauge
}

// NewServer creates the server metrics and registers them on reg (nil
// means unregistered). It panics if reg already holds metrics of the same
// names, a programming error like any duplicate registration.
func NewServer(reg prometheus.Registerer) *Server {
	f := promauto.With(reg)
	m := &Server{
		Dials: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "server", Name: "dials_total",
			Help: "Dials requested through a frontend, by route taken and result.",
		}, []string{"frontend", "route", "result"}),
		DialLatency: f.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "server", Name: "dial_duration_seconds",
			Help:    "Time from a dial request to its answer, by frontend and route.",
			Buckets: dialBuckets,
		}, []string{"frontend", "route"}),
		OpenConns: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "server", Name: "open_connections",
			Help: "Tunneled connections currently open, by frontend.",
		}, []string{"frontend"}),
		Agents: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "server", Name: "connected_agents",
			Help: "Agents currently connected to this server.",
		}),
		AgentStreams: f.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "server", Name: "agent_connections",
			Help: "Agent connections currently open, by mode (mux, conn-streams or single-stream).",
		}, []string{"mode"}),
		MuxStreams: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "server", Name: "mux_streams",
			Help: "Mux streams currently open: agent connections that carry tunneled connections now or did within the agent's idle time.",
		}),
		AgentIdentityRefusals: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "server", Name: "agent_identity_refusals_total",
			Help: "Agent connections refused because the client certificate does not prove the node name or addresses the agent claims, by reason.",
		}, []string{"reason"}),
		Bytes: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "server", Name: "bytes_total",
			Help: "Tunneled payload bytes, by direction (to_agent or from_agent).",
		}, []string{"direction"}),
		StalledCloses: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "server", Name: "stalled_connections_closed_total",
			Help: "Connections closed because their reader stalled the agent connection.",
		}),
		BadPackets: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "server", Name: "bad_packets_total",
			Help: "Packets dropped as malformed or unexpected, by source and reason.",
		}, []string{"source", "reason"}),
		Refusals: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "server", Name: "refusals_total",
			Help: "Requests refused by a policy or a limit against abuse, by reason.",
		}, []string{"reason"}),
		PortsGeneration: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "server", Name: "ports_config_generation",
			Help: "Generation of the edge-node port policy in effect (0: the start-up policy; one more per change).",
		}),
		PortsWarnings: f.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "server", Name: "ports_config_warnings_total",
			Help: "Items of ConfigMap edge-tunnel-server-cfg that were not applied, and unknown keys; each counted once when it appears.",
		}),
		PortsSourceUp: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "server", Name: "ports_config_source_up",
			Help: "1 if the last read of the port policy's source (Kubernetes API or --ports-config) succeeded, 0 if it failed and the last good policy is kept.",
		}),
	}
	m.PortsSourceUp.Set(1)
	for _, fe := range frontends {
		m.OpenConns.WithLabelValues(fe)
		for _, r := range routes {
			m.DialLatency.WithLabelValues(fe, r)
			for _, res := range serverResults {
				m.Dials.WithLabelValues(fe, r, res)
			}
		}
	}
	for _, mode := range modes {
		m.AgentStreams.WithLabelValues(mode)
	}
	for _, d := range serverDirections {
		m.Bytes.WithLabelValues(d)
	}
	for _, r := range refusalReasons {
		m.Refusals.WithLabelValues(r)
	}
	return m
}

// Agent holds the metrics of edge-tunnel-agent.
type Agent struct {
	// ServerConnections is the number of servers the agent is connected to.
	ServerConnections prometheus.Gauge
	// TargetServerConnections is the number of server replicas the agent
	// aims to hold a connection to: its own Lease count, else the servers'
	// announced one.
	TargetServerConnections prometheus.Gauge
	// Dials counts dials the agent made for servers, by result (ok,
	// refused, error, cancelled).
	Dials *prometheus.CounterVec
	// DialLatency is the time the agent's dials took.
	DialLatency prometheus.Histogram
	// OpenConns is the number of connections the agent holds open.
	OpenConns prometheus.Gauge
	// Bytes counts tunneled payload bytes by direction.
	Bytes *prometheus.CounterVec
	// ConnectErrors counts failed attempts to connect to a server, by reason.
	ConnectErrors *prometheus.CounterVec
}

// NewAgent creates the agent metrics and registers them on reg (nil means
// unregistered). It panics on a duplicate registration, as NewServer does.
func NewAgent(reg prometheus.Registerer) *Agent {
	f := promauto.With(reg)
	m := &Agent{
		ServerConnections: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "agent", Name: "server_connections",
			Help: "Servers this agent is currently connected to.",
		}),
		TargetServerConnections: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "agent", Name: "target_server_connections",
			Help: "Server replicas this agent aims to be connected to (its Lease count with --count-server-leases, else the count the servers announced).",
		}),
		Dials: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "agent", Name: "dials_total",
			Help: "Dials made for servers, by result.",
		}, []string{"result"}),
		DialLatency: f.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "agent", Name: "dial_duration_seconds",
			Help:    "Time the agent's dials to their targets took.",
			Buckets: dialBuckets,
		}),
		OpenConns: f.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: "agent", Name: "open_connections",
			Help: "Tunneled connections this agent currently holds open.",
		}),
		Bytes: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "agent", Name: "bytes_total",
			Help: "Tunneled payload bytes, by direction (to_server or from_server).",
		}, []string{"direction"}),
		ConnectErrors: f.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: "agent", Name: "connect_errors_total",
			Help: "Failed attempts to connect to a server, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range agentResults {
		m.Dials.WithLabelValues(r)
	}
	for _, d := range agentDirections {
		m.Bytes.WithLabelValues(d)
	}
	return m
}
