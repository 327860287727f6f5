package server

import (
	"crypto/tls"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
	"github.com/edge-tunnel/edge-tunnel/pkg/httpproxy"
	"github.com/edge-tunnel/edge-tunnel/pkg/leases"
	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
	"github.com/edge-tunnel/edge-tunnel/pkg/router"
)

// Config is everything a Server needs, already validated and loaded (files
// read, TLS configs built). cmd/edge-tunnel-server/app/options builds it from
// flags; tests build it directly.
type Config struct {
	// UDSName is the UNIX socket for kube-apiserver's egress selector. Both the
	// gRPC ProxyService and HTTP CONNECT are served on it. Empty disables it.
	UDSName string
	// UDSMode is the file mode of the socket (default 0660); it may give
	// other users nothing (CheckSocketMode).
	UDSMode os.FileMode
	// UDSGroup, when set, is the socket's group: a name or a numeric gid.
	UDSGroup string

	// FrontendAddr is host:port of the TCP frontend (gRPC and HTTP CONNECT over
	// TLS). Empty disables it. FrontendTLS must then be set.
	FrontendAddr string
	FrontendTLS  *tls.Config

	// AgentAddr is host:port where agents connect; AgentTLS its TLS config
	// (with ClientCAs and RequireAndVerifyClientCert when a cluster CA is given).
	AgentAddr string
	AgentTLS  *tls.Config
	// AgentIdentity, when set, checks that each agent's client certificate
	// proves the node name and addresses it claims (--agent-identity=
	// certificate); a mismatch is refused. nil accepts every claim.
	AgentIdentity *agentauth.Binder

	// ProxyAddr is host:port of the HTTP proxy for components configured
	// with HTTPS_PROXY/HTTP_PROXY or a Prometheus proxy_url (pkg/httpproxy).
	// Empty disables it. Without ProxyTLS it is plain HTTP and not
	// authenticated: only the cloud components that need it may reach it.
	ProxyAddr string
	// ProxyTLS, when set, makes the proxy speak HTTPS; with ClientCAs and
	// RequireAndVerifyClientCert it authenticates its clients.
	ProxyTLS *tls.Config
	// ProxyToken, when set, is the bearer token proxy clients must send in
	// Proxy-Authorization (--proxy-token-file).
	ProxyToken string
	// ProxyLimits bound the proxy's request heads and idle connections;
	// zero fields take httpproxy's defaults.
	ProxyLimits httpproxy.Limits

	// Limits against abuse, each refusal counted in
	// edge_tunnel_server_refusals_total; 0 means unlimited.
	//
	// MaxPendingDialsPerAgent bounds dials waiting for one agent's answer.
	MaxPendingDialsPerAgent int
	// MaxPendingDialsPerStream bounds dials waiting on one ProxyService
	// stream of a frontend client.
	MaxPendingDialsPerStream int
	// MaxConnectionsPerClient bounds the connections one remote address
	// holds open on the TCP frontend.
	MaxConnectionsPerClient int
	// FrontendReadHeaderTimeout bounds a frontend connection's TLS
	// handshake and first bytes or CONNECT head; FrontendMaxHeadBytes a
	// CONNECT request head. Zero takes the defaults (10 s, 16 KiB).
	FrontendReadHeaderTimeout time.Duration
	FrontendMaxHeadBytes      int

	// HealthAddr serves /healthz, /livez, /readyz and /metrics. Empty disables it.
	HealthAddr string
	// AdminAddr serves pprof and /ports (the port policy in effect). Empty
	// disables it.
	AdminAddr string

	// ServerID identifies this replica to agents; ServerCount is the number
	// of replicas agents should hold a connection to.
	ServerID    string
	ServerCount int
	// Leases, when set, makes this replica renew a Lease of its own and
	// announce the number of live replica Leases as the server count,
	// never less than ServerCount (--enable-lease-controller). Its Holder
	// is ServerID.
	Leases *leases.Config

	// KeepaliveTime is the interval of gRPC keepalive pings to agents.
	KeepaliveTime time.Duration
	// DialTimeout bounds a dial through an agent or a direct dial.
	DialTimeout time.Duration
	// DirectDial lets the server dial hosts that no agent serves itself
	// (cloud-side destinations such as webhooks and aggregated APIs).
	DirectDial bool
	// DirectDialAllow limits direct dials to these ranges and names
	// (--direct-dial-allow); nil allows every destination.
	DirectDialAllow *router.Allow
	// ShutdownGrace is how long open tunnels may finish once Run's context
	// ends (default 10 s).
	ShutdownGrace time.Duration
	// ConnStreams announces the per-connection stream extension to agents.
	ConnStreams bool
	// Mux announces the multiplexed extension (MuxService), which agents
	// that know it prefer to ConnStreams.
	Mux bool

	// Ports is the edge-node port policy to start with; nil means the
	// defaults (kubelet's ports only). A ports source replaces it live.
	Ports *ports.Config
	// PortsFile, when set, is a mounted ConfigMap directory or a file with
	// its data, re-read when it changes (--ports-config).
	PortsFile string
	// PortsKube, when set, follows ConfigMap edge-tunnel-server-cfg through
	// the Kubernetes API (--kubeconfig or in-cluster, --ports-configmap).
	// At most one of PortsFile and PortsKube may be set.
	PortsKube *ports.KubeSource

	// Registry receives the server's metrics; nil means a private registry.
	Registry *prometheus.Registry
}
