// Package options holds the command-line flags of edge-tunnel-server, checks
// them, and turns them into a server.Config.
//
// Flag names and meanings follow upstream konnectivity-server wherever the
// concept is the same, so that swapping the image in an existing manifest
// keeps working. Upstream flags whose feature edge-tunnel does differently are
// still accepted, marked deprecated, and ignored with a message that says what
// edge-tunnel does instead.
package options

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/internal/cli"
	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
	"github.com/edge-tunnel/edge-tunnel/pkg/leases"
	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// Options are the flags of edge-tunnel-server.
type Options struct {
	// Frontend: where kube-apiserver and other cloud clients connect.
	UDSName           string
	UDSMode           string
	UDSGroup          string
	ServerBindAddress string
	ServerPort        int
	ServerCert        string
	ServerKey         string
	ServerCACert      string

	// Agent port: where edge-tunnel-agents connect.
	AgentBindAddress string
	AgentPort        int
	ClusterCert      string
	ClusterKey       string
	ClusterCACert    string
	ServerID         string
	ServerCount      int
	KeepaliveTime    time.Duration
	ConnStreams      bool
	Mux              bool
	// AgentIdentity is how an agent's claimed node is checked: a
	// comma-separated list of agentauth.ModeCertificate and ModeToken, or
	// ModeNone; empty means certificate when ClusterCACert is set, plus
	// token when AgentServiceAccount is set, else none.
	AgentIdentity              string
	AgentIdentityAllowNetworks bool
	// ServiceAccount token authentication (--agent-identity=token).
	AuthenticationAudience string
	AgentNamespace         string
	AgentServiceAccount    string

	// Dialing.
	DialTimeout time.Duration
	DirectDial  bool

	// Edge-node port policy: ConfigMap edge-tunnel-server-cfg through the
	// API (Kubeconfig, or in-cluster in a pod) or from a file (PortsConfig).
	PortsConfig    string
	PortsConfigMap string
	Kubeconfig     string

	// HTTP proxy for HTTPS_PROXY/HTTP_PROXY clients (metrics-server,
	// Prometheus proxy_url).
	ProxyBindAddress string
	ProxyPort        int
	ProxyCert        string
	ProxyKey         string
	ProxyCACert      string

	// Limits are the policies and limits against abuse (security.go).
	Limits Limits

	// TLS is the protocol floor and TLS 1.2 cipher suites of every TLS
	// endpoint: the TCP frontend, the agent port and the HTTP proxy.
	TLS tlsutil.Flags
	// upstreamCipherSuites is --cipher-suites, konnectivity-server's name
	// for --tls-cipher-suites.
	upstreamCipherSuites []string

	// Replica Leases: each replica renews one in LeaseNamespace, and the
	// count of live ones is the serverCount agents are told.
	EnableLeases         bool
	LeaseDuration        time.Duration
	LeaseRenewalInterval time.Duration
	LeaseNamespace       string

	// Health and admin endpoints.
	HealthBindAddress string
	HealthPort        int
	AdminBindAddress  string
	AdminPort         int

	// Logging is klog's configuration (-v, --vmodule, --logging-format).
	Logging *logsapi.LoggingConfiguration

	// deprecated holds upstream flags that are accepted and ignored.
	deprecated deprecatedFlags

	// Environment lookups, replaceable in tests.
	getenv   func(string) string
	hostname func() (string, error)

	// kube is the API client once built (kubeClient); kubeBuilt says
	// whether it was, since nil is a valid answer (no API access).
	kube      kubernetes.Interface
	kubeBuilt bool
}

// deprecatedFlags only exist so that parsing does not fail; nothing reads them.
type deprecatedFlags struct {
	mode                  string
	proxyStrategies       string
	deleteExistingUDSFile bool
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		UDSMode:              "0660",
		ServerPort:           8090,
		AgentPort:            8091,
		ServerCount:          1,
		KeepaliveTime:        10 * time.Second,
		ConnStreams:          true,
		Mux:                  true,
		DialTimeout:          10 * time.Second,
		DirectDial:           true,
		ProxyBindAddress:     "127.0.0.1",
		Limits:               defaultLimits(),
		PortsConfigMap:       ports.DefaultNamespace + "/" + ports.DefaultName,
		LeaseDuration:        leases.DefaultDuration,
		LeaseRenewalInterval: leases.DefaultRenewInterval,
		LeaseNamespace:       leases.DefaultNamespace,
		HealthPort:           8092,
		AdminBindAddress:     "127.0.0.1",
		AdminPort:            8095,
		Logging:              logsapi.NewLoggingConfiguration(),
		getenv:               os.Getenv,
		hostname:             os.Hostname,
	}
}

// Flags returns the flags grouped into the sections that --help prints.
func (o *Options) Flags() cliflag.NamedFlagSets {
	var fss cliflag.NamedFlagSets

	fs := fss.FlagSet("frontend")
	fs.StringVar(&o.UDSName, "uds-name", o.UDSName, "Path of the UNIX socket kube-apiserver's egress selector connects to. Both the gRPC protocol and HTTP CONNECT are served on it. Empty disables the socket.")
	fs.StringVar(&o.UDSMode, "uds-mode", o.UDSMode, "File mode of the UNIX socket, in octal. Whoever can open the socket can dial into every edge node, so modes that give other users any access (a last digit other than 0) are refused: kube-apiserver gets in as root, as the socket's owner, or through --uds-group.")
	fs.StringVar(&o.UDSGroup, "uds-group", o.UDSGroup, "Group of the UNIX socket, by name or numeric gid, so that a kube-apiserver that does not run as root can open it (with a --uds-mode such as 0660 that lets the group in). The server must run as root (or with CAP_CHOWN) or be a member of the group. Empty leaves the server's own group.")
	fs.StringVar(&o.ServerBindAddress, "server-bind-address", o.ServerBindAddress, "Address the TCP frontend listens on. Empty means all interfaces.")
	fs.IntVar(&o.ServerPort, "server-port", o.ServerPort, "Port of the TCP frontend (gRPC and HTTP CONNECT over mutual TLS). 0 disables it.")
	fs.StringVar(&o.ServerCert, "server-cert", o.ServerCert, "Certificate the TCP frontend presents to its clients (PEM).")
	fs.StringVar(&o.ServerKey, "server-key", o.ServerKey, "Private key of --server-cert (PEM).")
	fs.StringVar(&o.ServerCACert, "server-ca-cert", o.ServerCACert, "CA bundle that verifies the client certificates of the TCP frontend's clients (kube-apiserver). Required when --server-port is not 0.")
	fs.StringVar(&o.deprecated.mode, "mode", "", "")
	fs.MarkDeprecated("mode", "ignored: edge-tunnel serves gRPC and HTTP CONNECT on the same socket and port, and tells them apart per connection.")
	fs.BoolVar(&o.deprecated.deleteExistingUDSFile, "delete-existing-uds-file", false, "")
	fs.MarkDeprecated("delete-existing-uds-file", "ignored: edge-tunnel removes a stale socket file at --uds-name before it listens.")

	fs = fss.FlagSet("agent connections")
	fs.StringVar(&o.AgentBindAddress, "agent-bind-address", o.AgentBindAddress, "Address agents connect to. Empty means all interfaces.")
	fs.IntVar(&o.AgentPort, "agent-port", o.AgentPort, "Port agents connect to (gRPC over TLS).")
	fs.StringVar(&o.ClusterCert, "cluster-cert", o.ClusterCert, "Certificate the agent port presents to agents (PEM). Required.")
	fs.StringVar(&o.ClusterKey, "cluster-key", o.ClusterKey, "Private key of --cluster-cert (PEM). Required.")
	fs.StringVar(&o.ClusterCACert, "cluster-ca-cert", o.ClusterCACert, "CA bundle that verifies agents' client certificates. Without it agents are not authenticated and any of them may claim any node.")
	fs.StringVar(&o.ServerID, "server-id", o.ServerID, "Unique ID of this server replica, sent to agents. Default: $PROXY_SERVER_ID, else the hostname, else a random UUID.")
	fs.IntVar(&o.ServerCount, "server-count", o.ServerCount, "Number of server replicas; each agent keeps one connection to each.")
	fs.DurationVar(&o.KeepaliveTime, "keepalive-time", o.KeepaliveTime, "Interval of gRPC keepalive pings to agents when a connection is quiet; an agent that vanished (a network cut) is noticed about 1.5 times this after its last packet, and its pending dials fail then.")
	fs.BoolVar(&o.ConnStreams, "conn-streams", o.ConnStreams, "Offer agents one gRPC stream per tunneled connection, so that a slow reader stalls only its own connection. Agents that do not support it (upstream konnectivity-agent) fall back to the single-stream protocol either way; false forces the single-stream protocol for all agents.")
	fs.MarkHidden("conn-streams")
	fs.BoolVar(&o.Mux, "mux", o.Mux, "Offer agents to carry every tunneled connection on one gRPC stream per agent connection, each with a flow-control window of its own; agents that take it use it instead of --conn-streams. false stops offering it; --conn-streams=false turns both off.")
	fs.MarkHidden("mux")
	fs.StringVar(&o.AgentIdentity, "agent-identity", o.AgentIdentity, "How the server checks the node an agent claims. certificate: the agent's client certificate must prove its --agent-id and every identifier it announces: node names from a common name system:node:NAME, else from its DNS SANs; addresses as IP SANs or, with API access (--kubeconfig or in a pod), as addresses of that Node object (needs get on nodes). token: the agent sends a ServiceAccount token bound to its pod (agent flag --service-account-token-path); kube-apiserver checks it (TokenReview for --authentication-audience, needs create on tokenreviews), it must belong to --agent-namespace/--agent-service-account, and it proves the node the pod runs on (needs get on pods and nodes); agent ID and host= must be that node's name, ipv4=/ipv6= its addresses. certificate,token: an agent that sends a token is checked by its token, any other by its certificate, which is then optional on the TLS handshake (for a migration, or a mix of agents). A claim the credential does not prove is refused with PermissionDenied, a missing or rejected token with Unauthenticated. none: any agent that passes TLS may claim any node. Default: certificate when --cluster-ca-cert is set, plus token when --agent-service-account is set, else none.")
	fs.BoolVar(&o.AgentIdentityAllowNetworks, "agent-identity-allow-networks", o.AgentIdentityAllowNetworks, "With --agent-identity=certificate, accept the cidr= and default-route= identifiers, which no certificate can prove: any authenticated agent may then receive dials for the networks it names.")
	fs.StringVar(&o.AuthenticationAudience, "authentication-audience", o.AuthenticationAudience, "With --agent-identity=token, the audience agents' ServiceAccount tokens must carry (the audience of their projected token volume, e.g. edge-tunnel). A dedicated audience keeps the token useless against kube-apiserver itself.")
	fs.StringVar(&o.AgentNamespace, "agent-namespace", o.AgentNamespace, "With --agent-identity=token, the namespace of the ServiceAccount whose tokens are accepted (where the agent DaemonSet runs).")
	fs.StringVar(&o.AgentServiceAccount, "agent-service-account", o.AgentServiceAccount, "With --agent-identity=token, the ServiceAccount (in --agent-namespace) whose tokens are accepted; tokens of any other ServiceAccount are refused. Setting it makes token part of the default --agent-identity.")

	fs = fss.FlagSet("dialing")
	fs.DurationVar(&o.DialTimeout, "dial-timeout", o.DialTimeout, "How long a dial through an agent, or a direct dial, may take before the client gets an error.")
	fs.BoolVar(&o.DirectDial, "direct-dial", o.DirectDial, "Dial destinations that no agent serves from the server itself. Needed when kube-apiserver sends all egress through the tunnel: admission webhooks and aggregated APIs (metrics-server) live in the cloud.")
	fs.StringVar(&o.PortsConfigMap, "ports-configmap", o.PortsConfigMap, "NAMESPACE/NAME of the ConfigMap with the edge-node port policy (see docs/ports.md), watched through the Kubernetes API with --kubeconfig, or with the pod's ServiceAccount when running in a pod; a change applies within 2 s. Needs get, list and watch on that one ConfigMap. Empty turns the watch off; --ports-config replaces it. Without any port policy only ports 10250 and 10255 of edge nodes are forwarded.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file for the Kubernetes API, used to watch --ports-configmap and, with --agent-identity=certificate, to look up the addresses of the Node an agent claims. Empty means the in-cluster config when running in a pod ($KUBERNETES_SERVICE_HOST set), else no API access.")
	fs.StringVar(&o.PortsConfig, "ports-config", o.PortsConfig, "Edge-node port policy from the file system instead of the API, re-read when it changes: a mounted ConfigMap edge-tunnel-server-cfg (a directory, one file per key) or a file with its data. For setups without API access; when set, the ConfigMap is not watched through the API.")
	fs.StringVar(&o.deprecated.proxyStrategies, "proxy-strategies", "", "")
	fs.MarkDeprecated("proxy-strategies", "ignored: edge-tunnel always routes by destination host (the agent serving that node name or address), and dials other destinations directly when --direct-dial is true.")

	fs = fss.FlagSet("replica leases")
	fs.BoolVar(&o.EnableLeases, "enable-lease-controller", o.EnableLeases, "Keep a Lease for this replica in --lease-namespace (labels "+leases.Selector()+", named after --server-id) and tell agents the number of live replica Leases as the server count, never less than --server-count: agents then follow the Deployment's scale without a restart. Needs API access (--kubeconfig, or in a pod) and get, list, create, update and delete on leases in --lease-namespace. A replica that stops deletes its Lease; one that dies drops out of the count once its Lease expires.")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "How long a replica still counts after its last renewal (the Lease's leaseDurationSeconds, whole seconds): how late a replica that died is counted out.")
	fs.DurationVar(&o.LeaseRenewalInterval, "lease-renewal-interval", o.LeaseRenewalInterval, "How often this replica renews its Lease and counts the others'. Keep it at a third of --lease-duration or less, so that a failed renewal or two does not drop the replica from the count.")
	fs.StringVar(&o.LeaseNamespace, "lease-namespace", o.LeaseNamespace, "Namespace of the replica Leases.")
	fs.String("lease-label-selector", "", "")
	fs.MarkDeprecated("lease-label-selector", "ignored: edge-tunnel labels its replica Leases "+leases.Selector()+" and counts those.")
	fs.Duration("lease-gc-interval", 0, "")
	fs.MarkDeprecated("lease-gc-interval", "ignored: expired replica Leases are deleted while the Leases are counted, every --lease-renewal-interval.")

	fs = fss.FlagSet("http proxy")
	fs.StringVar(&o.ProxyBindAddress, "proxy-bind-address", o.ProxyBindAddress, "Address of the HTTP proxy. Loopback by default; beyond loopback (empty means all interfaces, or the pod's IP) it must authenticate its clients (--proxy-token-file or --proxy-ca-cert), or be opened explicitly with --proxy-allow-unauthenticated behind a NetworkPolicy.")
	fs.IntVar(&o.ProxyPort, "proxy-port", o.ProxyPort, "Port of the HTTP proxy for components configured with HTTPS_PROXY/HTTP_PROXY or a Prometheus proxy_url: CONNECT to every forwarded port, plain requests (GET http://NODE_IP:PORT/...) to plain-HTTP ports. 0 disables it; 8099 is the suggested port. See --proxy-bind-address for who may reach it.")
	fs.StringVar(&o.ProxyCert, "proxy-cert", o.ProxyCert, "Certificate of the HTTP proxy (PEM). With --proxy-key, the proxy speaks HTTPS; empty means plain HTTP.")
	fs.StringVar(&o.ProxyKey, "proxy-key", o.ProxyKey, "Private key of --proxy-cert (PEM).")
	fs.StringVar(&o.ProxyCACert, "proxy-ca-cert", o.ProxyCACert, "CA bundle that verifies client certificates on the HTTP proxy; when set, clients without a certificate from it are refused. Needs --proxy-cert and --proxy-key.")

	o.addLimitFlags(&fss)

	fs = fss.FlagSet("TLS")
	o.TLS.AddFlags(fs, "every TLS endpoint of the server (the TCP frontend, the agent port, the HTTP proxy with --proxy-cert)")
	fs.StringSliceVar(&o.upstreamCipherSuites, "cipher-suites", nil, "Upstream konnectivity-server's name for --tls-cipher-suites, with the same meaning; give one of the two.")

	fs = fss.FlagSet("health and admin")
	fs.StringVar(&o.HealthBindAddress, "health-bind-address", o.HealthBindAddress, "Address of the health endpoint (/healthz, /livez, /readyz, /metrics). Empty means all interfaces.")
	fs.IntVar(&o.HealthPort, "health-port", o.HealthPort, "Port of the health endpoint. 0 disables it.")
	fs.StringVar(&o.AdminBindAddress, "admin-bind-address", o.AdminBindAddress, "Address of the admin endpoint (pprof under /debug/pprof/, the port policy in effect under /ports).")
	fs.IntVar(&o.AdminPort, "admin-port", o.AdminPort, "Port of the admin endpoint. 0 disables it.")
	cli.AddDeprecatedProfilingFlags(fs, "admin-port")

	cli.AddLoggingFlags(fss.FlagSet("logging"), o.Logging)

	return fss
}

// Validate checks the flags without touching the file system; Config reads
// the files. Every problem found is reported, each saying what to change.
func (o *Options) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if o.UDSName == "" && o.ServerPort == 0 {
		add("no frontend for kube-apiserver: set --uds-name (a UNIX socket) and/or --server-port (TCP with mutual TLS)")
	}
	if _, err := parseMode(o.UDSMode); err != nil {
		add("--uds-mode %q: %v", o.UDSMode, err)
	}
	for _, err := range []error{
		cli.CheckPort("--server-port", o.ServerPort, true),
		cli.CheckPort("--agent-port", o.AgentPort, false),
		cli.CheckPort("--proxy-port", o.ProxyPort, true),
		cli.CheckPort("--health-port", o.HealthPort, true),
		cli.CheckPort("--admin-port", o.AdminPort, true),
	} {
		if err != nil {
			errs = append(errs, err)
		}
	}

	if o.ServerPort != 0 {
		if o.ServerCert == "" || o.ServerKey == "" {
			add("the TCP frontend (--server-port=%d) needs --server-cert and --server-key; set them, or set --server-port=0 and use --uds-name", o.ServerPort)
		}
		if o.ServerCACert == "" {
			add("the TCP frontend (--server-port=%d) needs --server-ca-cert: it opens connections into every edge node, so it only serves clients with a certificate from that CA (kube-apiserver's egress client certificate); set it, or set --server-port=0 and use --uds-name", o.ServerPort)
		}
	}
	if (o.ProxyCert == "") != (o.ProxyKey == "") {
		add("--proxy-cert and --proxy-key go together: set both for an HTTPS proxy, or neither for plain HTTP")
	}
	if o.ProxyCACert != "" && (o.ProxyCert == "" || o.ProxyKey == "") {
		add("--proxy-ca-cert authenticates clients over TLS, so it needs --proxy-cert and --proxy-key")
	}
	if cert, token, err := o.identityMethods(); err != nil {
		errs = append(errs, err)
	} else {
		if cert && o.ClusterCACert == "" {
			add("--agent-identity=%s checks agents' client certificates, so it needs --cluster-ca-cert (the CA that signs them)", o.agentIdentity())
		}
		if token && (o.AuthenticationAudience == "" || o.AgentNamespace == "" || o.AgentServiceAccount == "") {
			add("--agent-identity=%s checks agents' ServiceAccount tokens, so it needs --authentication-audience (the audience of the agents' projected tokens, e.g. edge-tunnel), --agent-namespace and --agent-service-account (whose tokens are accepted)", o.agentIdentity())
		}
	}
	if len(o.upstreamCipherSuites) > 0 && len(o.TLS.CipherSuites) > 0 {
		add("--cipher-suites and --tls-cipher-suites are the same list under two names (upstream's and kube-apiserver's); give one")
	}
	tlsFlags := o.tlsFlags()
	errs = append(errs, tlsFlags.Validate()...)
	errs = append(errs, o.validateLimits()...)
	if o.ClusterCert == "" || o.ClusterKey == "" {
		add("the agent port needs --cluster-cert and --cluster-key (the certificate agents verify with their --ca-cert)")
	}
	if o.ServerCount < 1 {
		add("--server-count=%d: must be at least 1 (the number of server replicas)", o.ServerCount)
	}
	if o.EnableLeases {
		switch {
		case o.LeaseDuration < time.Second || o.LeaseDuration%time.Second != 0:
			add("--lease-duration=%v: give whole seconds, at least 1s (e.g. 15s); a Lease counts its duration in seconds", o.LeaseDuration)
		case o.LeaseRenewalInterval <= 0 || o.LeaseRenewalInterval >= o.LeaseDuration:
			add("--lease-renewal-interval=%v: must be positive and shorter than --lease-duration=%v (a third of it or less), or the Lease expires between renewals", o.LeaseRenewalInterval, o.LeaseDuration)
		}
		if errs := validation.IsDNS1123Label(o.LeaseNamespace); len(errs) > 0 {
			add("--lease-namespace=%q: not a namespace name: %s", o.LeaseNamespace, strings.Join(errs, "; "))
		}
	}
	if o.KeepaliveTime <= 0 {
		add("--keepalive-time=%v: must be positive (e.g. 10s)", o.KeepaliveTime)
	}
	if o.DialTimeout <= 0 {
		add("--dial-timeout=%v: must be positive (e.g. 10s)", o.DialTimeout)
	}
	if o.PortsConfigMap != "" {
		if _, _, err := ports.ParseRef(o.PortsConfigMap); err != nil {
			add("--ports-configmap=%q: %v; or empty to turn the API watch off", o.PortsConfigMap, err)
		}
	}
	if o.PortsConfig != "" && o.Kubeconfig != "" && o.PortsConfigMap != "" {
		add("--ports-config and --kubeconfig both give a source for the port policy: to watch ConfigMap %s through the API drop --ports-config; to read the file drop --kubeconfig", o.PortsConfigMap)
	}
	return errs
}

// Warnings lists settings that work but are probably not what the operator
// wants. The command logs them at start.
func (o *Options) Warnings() []string {
	var ws []string
	_, token, _ := o.identityMethods()
	none := o.agentIdentity() == agentauth.ModeNone
	if o.ClusterCACert == "" && !token {
		ws = append(ws, "--cluster-ca-cert is not set: agents are not authenticated, and any agent that reaches the agent port may claim any node")
	}
	if o.ClusterCACert != "" && none {
		ws = append(ws, "--agent-identity=none: any agent with a certificate from --cluster-ca-cert may claim any node and receive the traffic meant for it")
	}
	if o.AgentIdentityAllowNetworks && none {
		ws = append(ws, "--agent-identity-allow-networks is set but unused because agent identities are not checked (--agent-identity=none)")
	}
	if !token && (o.AuthenticationAudience != "" || o.AgentNamespace != "" || o.AgentServiceAccount != "") {
		ws = append(ws, fmt.Sprintf("--authentication-audience/--agent-namespace/--agent-service-account are set but unused because --agent-identity=%s does not check ServiceAccount tokens", o.agentIdentity()))
	}
	if o.UDSName == "" && o.UDSGroup != "" {
		ws = append(ws, "--uds-group is set but unused because --uds-name is empty (no UNIX socket)")
	}
	if o.ServerPort == 0 && (o.ServerCert != "" || o.ServerKey != "" || o.ServerCACert != "") {
		ws = append(ws, "--server-cert/--server-key/--server-ca-cert are set but unused because --server-port=0")
	}
	if o.ProxyPort != 0 && !isLoopback(o.ProxyBindAddress) && o.ProxyCACert == "" && o.Limits.ProxyTokenFile == "" {
		ws = append(ws, fmt.Sprintf("the HTTP proxy on port %d listens beyond loopback without authenticating its clients (--proxy-allow-unauthenticated): anyone who reaches it reaches every forwarded edge-node port; keep a NetworkPolicy that admits only the components that need it", o.ProxyPort))
	}
	if o.ProxyPort == 0 && (o.ProxyCert != "" || o.ProxyKey != "" || o.ProxyCACert != "") {
		ws = append(ws, "--proxy-cert/--proxy-key/--proxy-ca-cert are set but unused because --proxy-port=0")
	}
	if o.Kubeconfig != "" && o.PortsConfigMap == "" && none && !o.EnableLeases {
		ws = append(ws, "--kubeconfig is set but unused because --ports-configmap is empty, --agent-identity is none and --enable-lease-controller is off (the API is only used to watch the port policy, to look up Node addresses and for the replica Leases)")
	}
	tlsFlags := o.tlsFlags()
	ws = append(ws, tlsFlags.Warnings()...)
	ws = append(ws, o.limitWarnings()...)
	if m := o.deprecated.mode; m != "" && m != "grpc" && m != "http-connect" {
		ws = append(ws, fmt.Sprintf("--mode=%q is not a mode upstream knew either (grpc or http-connect); it is ignored all the same", m))
	}
	return ws
}

// Config loads the certificates and builds the server configuration. Call it
// after Validate returned no errors.
func (o *Options) Config() (server.Config, error) {
	mode, err := parseMode(o.UDSMode)
	if err != nil {
		return server.Config{}, fmt.Errorf("--uds-mode %q: %w", o.UDSMode, err)
	}
	if o.UDSName != "" && o.UDSGroup != "" {
		if _, err := server.LookupGroup(o.UDSGroup); err != nil {
			return server.Config{}, fmt.Errorf("--uds-group=%q: %w", o.UDSGroup, err)
		}
	}
	cfg := server.Config{
		UDSName:       o.UDSName,
		UDSMode:       mode,
		UDSGroup:      o.UDSGroup,
		AgentAddr:     cli.JoinHostPort(o.AgentBindAddress, o.AgentPort),
		HealthAddr:    cli.JoinHostPort(o.HealthBindAddress, o.HealthPort),
		AdminAddr:     cli.JoinHostPort(o.AdminBindAddress, o.AdminPort),
		ServerID:      o.serverID(),
		ServerCount:   o.ServerCount,
		KeepaliveTime: o.KeepaliveTime,
		DialTimeout:   o.DialTimeout,
		DirectDial:    o.DirectDial,
		ConnStreams:   o.ConnStreams,
		Mux:           o.Mux && o.ConnStreams,
		PortsFile:     o.PortsConfig,
	}
	if o.ServerPort != 0 {
		cfg.FrontendAddr = cli.JoinHostPort(o.ServerBindAddress, o.ServerPort)
		cfg.FrontendTLS, err = tlsutil.ServerConfig(o.ServerCert, o.ServerKey, o.ServerCACert)
		if err != nil {
			return server.Config{}, fmt.Errorf("TLS of the TCP frontend (--server-cert, --server-key, --server-ca-cert): %w", err)
		}
	}
	if o.ProxyPort != 0 {
		cfg.ProxyAddr = cli.JoinHostPort(o.ProxyBindAddress, o.ProxyPort)
		if o.ProxyCert != "" {
			cfg.ProxyTLS, err = tlsutil.ServerConfig(o.ProxyCert, o.ProxyKey, o.ProxyCACert)
			if err != nil {
				return server.Config{}, fmt.Errorf("TLS of the HTTP proxy (--proxy-cert, --proxy-key, --proxy-ca-cert): %w", err)
			}
		}
	}
	cfg.AgentTLS, err = tlsutil.ServerConfig(o.ClusterCert, o.ClusterKey, o.ClusterCACert)
	if err != nil {
		return server.Config{}, fmt.Errorf("TLS of the agent port (--cluster-cert, --cluster-key, --cluster-ca-cert): %w", err)
	}
	if cfg.Leases, err = o.leases(); err != nil {
		return server.Config{}, err
	}
	if cfg.PortsKube, err = o.portsKube(); err != nil {
		return server.Config{}, err
	}
	if cfg.AgentIdentity, err = o.binder(); err != nil {
		return server.Config{}, err
	}
	if cert, token, _ := o.identityMethods(); cert && token {
		// Agents with a token need no certificate; one that is presented
		// must still be from --cluster-ca-cert.
		optionalClientCert(cfg.AgentTLS)
	}
	if err := o.limitConfig(&cfg); err != nil {
		return server.Config{}, err
	}
	tlsFlags := o.tlsFlags()
	hardening, err := tlsFlags.Hardening()
	if err != nil {
		return server.Config{}, err
	}
	for _, c := range []*tls.Config{cfg.FrontendTLS, cfg.AgentTLS, cfg.ProxyTLS} {
		hardening.Apply(c)
	}
	return cfg, nil
}

// binder builds the check of agents' claimed identities, nil for none.
func (o *Options) binder() (*agentauth.Binder, error) {
	cert, token, err := o.identityMethods()
	if err != nil {
		return nil, err
	}
	if !cert && !token {
		return nil, nil
	}
	b := &agentauth.Binder{AllowNetworks: o.AgentIdentityAllowNetworks, RequireToken: token && !cert}
	client, err := o.kubeClient()
	if err != nil {
		return nil, fmt.Errorf("Node lookups for --agent-identity=%s: %w", o.agentIdentity(), err)
	}
	if client != nil {
		b.Nodes = &agentauth.KubeNodes{Client: client}
	}
	if token {
		if client == nil {
			return nil, fmt.Errorf("--agent-identity=%s checks ServiceAccount tokens through the Kubernetes API, but the server has no API access: pass --kubeconfig, or run it in a pod with a ServiceAccount token", o.agentIdentity())
		}
		b.Tokens = &agentauth.TokenReviewer{Client: client, Audience: o.AuthenticationAudience,
			Namespace: o.AgentNamespace, ServiceAccount: o.AgentServiceAccount}
	}
	return b, nil
}

// optionalClientCert lets clients without a certificate complete the TLS
// handshake, while a certificate that is presented is still verified by
// the config's own VerifyConnection (tlsutil's check against the CA).
func optionalClientCert(c *tls.Config) {
	verify := c.VerifyConnection
	c.ClientAuth = tls.RequestClientCert
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || verify == nil {
			return nil
		}
		return verify(cs)
	}
}

// agentIdentity is --agent-identity with its default filled in.
func (o *Options) agentIdentity() string {
	if o.AgentIdentity != "" {
		return o.AgentIdentity
	}
	var modes []string
	if o.ClusterCACert != "" {
		modes = append(modes, agentauth.ModeCertificate)
	}
	if o.AgentServiceAccount != "" {
		modes = append(modes, agentauth.ModeToken)
	}
	if len(modes) == 0 {
		return agentauth.ModeNone
	}
	return strings.Join(modes, ",")
}

// identityMethods parses agentIdentity: whether certificates and whether
// tokens prove agents' nodes (neither for none).
func (o *Options) identityMethods() (cert, token bool, err error) {
	v := o.agentIdentity()
	if v == agentauth.ModeNone {
		return false, false, nil
	}
	for _, m := range strings.Split(v, ",") {
		switch strings.TrimSpace(m) {
		case agentauth.ModeCertificate:
			cert = true
		case agentauth.ModeToken:
			token = true
		default:
			return false, false, fmt.Errorf("--agent-identity=%q: want %s, %s, %s,%s or %s", v,
				agentauth.ModeCertificate, agentauth.ModeToken, agentauth.ModeCertificate, agentauth.ModeToken, agentauth.ModeNone)
		}
	}
	return cert, token, nil
}

// leases configures the replica Leases (--enable-lease-controller); nil
// when off.
func (o *Options) leases() (*leases.Config, error) {
	if !o.EnableLeases {
		return nil, nil
	}
	client, err := o.kubeClient()
	if err != nil {
		return nil, fmt.Errorf("--enable-lease-controller: %w", err)
	}
	if client == nil {
		return nil, fmt.Errorf("--enable-lease-controller keeps Leases through the Kubernetes API, but the server has no API access: pass --kubeconfig, or run it in a pod with a ServiceAccount token")
	}
	return &leases.Config{Client: client, Namespace: o.LeaseNamespace, Duration: o.LeaseDuration, RenewInterval: o.LeaseRenewalInterval}, nil
}

// portsKube builds the API source of the port policy (see kubeClient for
// which API). nil means no API source (--ports-config is used,
// --ports-configmap is empty, or there is no API to talk to).
func (o *Options) portsKube() (*ports.KubeSource, error) {
	if o.PortsConfig != "" || o.PortsConfigMap == "" {
		return nil, nil
	}
	ns, name, err := ports.ParseRef(o.PortsConfigMap)
	if err != nil {
		return nil, fmt.Errorf("--ports-configmap=%q: %w", o.PortsConfigMap, err)
	}
	client, err := o.kubeClient()
	if err != nil {
		return nil, fmt.Errorf("--ports-configmap=%q: %w", o.PortsConfigMap, err)
	}
	if client == nil {
		return nil, nil
	}
	return &ports.KubeSource{Client: client, Namespace: ns, Name: name}, nil
}

// kubeClient is the Kubernetes API client for the port policy's ConfigMap
// and for Node lookups: with --kubeconfig when given, else in-cluster when
// running in a pod, else nil (no API access). It is built once.
//
// A pod without a ServiceAccount token (a static pod, say) is not an
// error: nil is returned and the reason logged, so that a manifest that
// worked before keeps working.
func (o *Options) kubeClient() (kubernetes.Interface, error) {
	if o.kubeBuilt {
		return o.kube, nil
	}
	client, err := cli.KubeClient(o.Kubeconfig, "edge-tunnel-server/"+version.Get().GitVersion, o.getenv)
	if errors.Is(err, cli.ErrNoInCluster) {
		klog.Warningf("No Kubernetes API access: %v. "+
			"ConfigMap %s is not watched (edge nodes get the default port policy, or use --ports-config), and agents' "+
			"claimed addresses must be IP SANs of their certificates. Mount a ServiceAccount token or pass --kubeconfig", err, o.PortsConfigMap)
		o.kubeBuilt = true
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	o.kube, o.kubeBuilt = client, true
	return client, nil
}

// serverID is --server-id, else $PROXY_SERVER_ID (upstream's variable), else
// the hostname (the pod name in a Deployment: stable for the pod's life and
// readable in logs), else a random UUID.
func (o *Options) serverID() string {
	if o.ServerID != "" {
		return o.ServerID
	}
	if id := strings.TrimSpace(o.getenv("PROXY_SERVER_ID")); id != "" {
		return id
	}
	if h, err := o.hostname(); err == nil && h != "" {
		return h
	}
	return uuid.NewString()
}

// tlsFlags are --tls-min-version and --tls-cipher-suites, the latter
// taken from --cipher-suites when only upstream's name was given.
func (o *Options) tlsFlags() tlsutil.Flags {
	f := o.TLS
	if len(f.CipherSuites) == 0 {
		f.CipherSuites = o.upstreamCipherSuites
	}
	return f
}

// parseMode reads an octal file mode such as "0660" or "660".
func parseMode(s string) (os.FileMode, error) {
	if s == "" {
		return 0, fmt.Errorf("empty; give an octal mode such as 0660")
	}
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil {
		return 0, fmt.Errorf("not an octal number; give an octal mode such as 0660")
	}
	if m > 0o777 {
		return 0, fmt.Errorf("only permission bits (at most 0777) are allowed")
	}
	if err := server.CheckSocketMode(os.FileMode(m)); err != nil {
		return 0, err
	}
	return os.FileMode(m), nil
}
