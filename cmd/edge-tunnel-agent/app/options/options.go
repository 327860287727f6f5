// Package options holds the command-line flags of edge-tunnel-agent, merges
// in what the DaemonSet puts in the environment (NODE_NAME, NODE_IP, ...),
// checks the result, and turns it into an agent.Config.
//
// Flag names and meanings follow upstream konnectivity-agent wherever the
// concept is the same. Upstream flags whose feature edge-tunnel does
// differently are accepted, marked deprecated, and ignored with a message
// that says what edge-tunnel does instead.
package options

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/internal/cli"
	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	"github.com/edge-tunnel/edge-tunnel/pkg/leases"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// Environment variables a DaemonSet sets through the downward API
// (spec.nodeName, status.hostIP, status.hostIPs). Each adds to the agent's
// identifiers, so a plain manifest needs no --agent-identifiers.
const (
	envNodeName = "NODE_NAME"
	envNodeIP   = "NODE_IP"
	envHostIP   = "HOST_IP"
	envNodeIPs  = "NODE_IPS" // comma-separated
)

// Options are the flags of edge-tunnel-agent.
type Options struct {
	// Connection to the server.
	ProxyServerHost string
	ProxyServerPort int
	ServerName      string
	CACert          string
	AgentCert       string
	AgentKey        string
	// ServiceAccountTokenPath is a projected ServiceAccount token the agent
	// sends to the server (re-read on every connect, as it rotates).
	ServiceAccountTokenPath string
	SyncInterval            time.Duration
	SyncIntervalCap         time.Duration
	KeepaliveTime           time.Duration
	ConnStreams             bool
	Mux                     bool
	// TLS is the protocol floor and TLS 1.2 cipher suites of the
	// connection to the server.
	TLS tlsutil.Flags

	// Counting the server replicas' Leases (--count-server-leases).
	CountServerLeases  bool
	LeaseNamespace     string
	LeaseLabelSelector string
	Kubeconfig         string

	// Identity and what the agent may dial.
	AgentID          string
	AgentIdentifiers string
	AllowedCIDRs     []string
	DialTimeout      time.Duration
	DrainGrace       time.Duration

	// Health and admin endpoints.
	HealthBindAddress string
	HealthServerPort  int
	AdminBindAddress  string
	AdminServerPort   int

	// Logging is klog's configuration (-v, --vmodule, --logging-format).
	Logging *logsapi.LoggingConfiguration

	// deprecated holds upstream flags that are accepted and ignored.
	deprecated deprecatedFlags

	// Environment lookups, replaceable in tests.
	getenv   func(string) string
	hostname func() (string, error)
}

// deprecatedFlags only exist so that parsing does not fail; nothing reads them.
type deprecatedFlags struct {
	probeInterval time.Duration
	syncForever   bool
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		ProxyServerPort:    8091,
		SyncInterval:       time.Second,
		SyncIntervalCap:    10 * time.Second,
		KeepaliveTime:      15 * time.Second,
		ConnStreams:        true,
		Mux:                true,
		LeaseNamespace:     leases.DefaultNamespace,
		LeaseLabelSelector: leases.Selector(),
		DialTimeout:        5 * time.Second,
		DrainGrace:         20 * time.Second,
		HealthServerPort:   8093,
		AdminBindAddress:   "127.0.0.1",
		AdminServerPort:    8094,
		Logging:            logsapi.NewLoggingConfiguration(),
		getenv:             os.Getenv,
		hostname:           os.Hostname,
	}
}

// Flags returns the flags grouped into the sections that --help prints.
func (o *Options) Flags() cliflag.NamedFlagSets {
	var fss cliflag.NamedFlagSets

	fs := fss.FlagSet("server connection")
	fs.StringVar(&o.ProxyServerHost, "proxy-server-host", o.ProxyServerHost, "Host name or address of the server's agent port, normally a load balancer in front of all server replicas. Required.")
	fs.IntVar(&o.ProxyServerPort, "proxy-server-port", o.ProxyServerPort, "Port of the server's agent port.")
	fs.StringVar(&o.ServerName, "server-name", o.ServerName, "Name (DNS name or IP address) the server's certificate must carry. Default: --proxy-server-host.")
	fs.StringVar(&o.CACert, "ca-cert", o.CACert, "CA bundle that verifies the server's certificate (the CA of the server's --cluster-cert). Required.")
	fs.StringVar(&o.AgentCert, "agent-cert", o.AgentCert, "Client certificate the agent presents to the server (PEM). Required unless --service-account-token-path is set: with --agent-identity=certificate the server trusts an agent's node identity only as far as this certificate proves it.")
	fs.StringVar(&o.AgentKey, "agent-key", o.AgentKey, "Private key of --agent-cert (PEM).")
	fs.StringVar(&o.ServiceAccountTokenPath, "service-account-token-path", o.ServiceAccountTokenPath, "File with a ServiceAccount token bound to the agent's pod (a projected serviceAccountToken volume with the server's --authentication-audience), sent to the server as \"authorization: Bearer\" metadata; read again on every connection, so a rotated token is used. For a server with --agent-identity=token, which binds the agent to the node its pod runs on. The connection is still TLS, verified with --ca-cert; --agent-cert is then optional.")
	fs.DurationVar(&o.SyncInterval, "sync-interval", o.SyncInterval, "How often the agent checks that it holds a connection to every server replica, and its first reconnect backoff.")
	fs.DurationVar(&o.SyncIntervalCap, "sync-interval-cap", o.SyncIntervalCap, "Longest reconnect backoff; also how often an agent connected to every replica asks a server whose count follows its Leases (--enable-lease-controller) for the current count.")
	fs.DurationVar(&o.KeepaliveTime, "keepalive-time", o.KeepaliveTime, "Interval of gRPC keepalive pings to the server when the connection is quiet; a dead connection is noticed about 1.5 times this after the last packet, and the agent then reconnects.")
	fs.BoolVar(&o.ConnStreams, "conn-streams", o.ConnStreams, "Use one gRPC stream per tunneled connection when the server offers it, so that a slow reader stalls only its own connection. false speaks the single-stream upstream konnectivity protocol.")
	fs.MarkHidden("conn-streams")
	fs.BoolVar(&o.Mux, "mux", o.Mux, "Carry every tunneled connection on one gRPC stream per server connection, each with a flow-control window of its own, when the server offers it; it wins over --conn-streams. false falls back to --conn-streams; --conn-streams=false turns both off (the plain upstream protocol).")
	fs.MarkHidden("mux")
	o.TLS.AddFlags(fs, "the connection to the server")
	fs.String("server-count-source", "", "")
	fs.MarkDeprecated("server-count-source", "ignored: the agent follows its own Lease count with --count-server-leases, else the count the servers announced last, which with --enable-lease-controller on the servers is the number of live replicas.")
	fs.DurationVar(&o.deprecated.probeInterval, "probe-interval", 0, "")
	fs.MarkDeprecated("probe-interval", "ignored: dead server connections are detected by gRPC keepalive (--keepalive-time).")
	fs.BoolVar(&o.deprecated.syncForever, "sync-forever", false, "")
	fs.MarkDeprecated("sync-forever", "ignored: the agent always keeps checking, every --sync-interval, that it is connected to every server replica.")

	fs = fss.FlagSet("server count")
	fs.BoolVar(&o.CountServerLeases, "count-server-leases", o.CountServerLeases, "Count the server replicas' Leases (kept by servers with --enable-lease-controller) through the Kubernetes API and hold a connection to that many replicas, instead of going by the count the servers announce (which, with --enable-lease-controller, is the same number counted by the servers: the default needs no API access on the edge). Needs API access (--kubeconfig, or the pod's ServiceAccount token) with list and watch on leases in --lease-namespace: one watch per agent. Until the first listing, and while none of the Leases is live, the servers' count is used.")
	fs.StringVar(&o.LeaseNamespace, "lease-namespace", o.LeaseNamespace, "Namespace of the server replicas' Leases (the servers' --lease-namespace), with --count-server-leases.")
	fs.StringVar(&o.LeaseLabelSelector, "lease-label-selector", o.LeaseLabelSelector, "Label selector of the server replicas' Leases, with --count-server-leases.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file for the Kubernetes API, with --count-server-leases. Empty means the pod's in-cluster config ($KUBERNETES_SERVICE_HOST and the ServiceAccount token).")

	fs = fss.FlagSet("identity and dialing")
	fs.StringVar(&o.AgentID, "agent-id", o.AgentID, "Name of this agent in the server's logs and metrics. Default: $NODE_NAME, else the hostname.")
	fs.StringVar(&o.AgentIdentifiers, "agent-identifiers", o.AgentIdentifiers, "Hosts and addresses this agent serves, as a URL query: host=NAME&ipv4=ADDR&ipv6=ADDR&cidr=NET&default-route=true (keys may repeat). $NODE_NAME adds a host; $NODE_IP, $HOST_IP and $NODE_IPS (comma-separated) add addresses.")
	fs.StringSliceVar(&o.AllowedCIDRs, "allowed-cidrs", o.AllowedCIDRs, "Comma-separated networks the agent may dial besides its own addresses and loopback, e.g. 10.96.0.0/12 for Services reached from the node.")
	fs.DurationVar(&o.DialTimeout, "dial-timeout", o.DialTimeout, "How long the agent's dial of a target may take.")
	fs.DurationVar(&o.DrainGrace, "drain-grace", o.DrainGrace, "After SIGTERM, how long open tunneled connections may finish while the agent tells the servers to send new dials elsewhere. Keep it below the pod's terminationGracePeriodSeconds.")

	fs = fss.FlagSet("health and admin")
	fs.StringVar(&o.HealthBindAddress, "health-bind-address", o.HealthBindAddress, "Address of the health endpoint (/healthz, /livez, /readyz, /metrics). Empty means all interfaces.")
	fs.IntVar(&o.HealthServerPort, "health-server-port", o.HealthServerPort, "Port of the health endpoint. 0 disables it.")
	fs.StringVar(&o.AdminBindAddress, "admin-bind-address", o.AdminBindAddress, "Address of the admin endpoint (pprof).")
	fs.IntVar(&o.AdminServerPort, "admin-server-port", o.AdminServerPort, "Port of the admin endpoint. 0 disables it.")
	cli.AddDeprecatedProfilingFlags(fs, "admin-server-port")

	cli.AddLoggingFlags(fss.FlagSet("logging"), o.Logging)

	return fss
}

// Validate checks the flags and the environment without touching the file
// system; Config reads the files. Every problem found is reported, each
// saying what to change.
func (o *Options) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if o.ProxyServerHost == "" {
		add("--proxy-server-host is required: the host name or address of the server's agent port (normally its load balancer)")
	} else if _, err := serverHost(o.ProxyServerHost); err != nil {
		add("--proxy-server-host=%q: %v", o.ProxyServerHost, err)
	}
	if o.ProxyServerPort < 1 || o.ProxyServerPort > 65535 {
		add("--proxy-server-port=%d: not a port; give 1..65535", o.ProxyServerPort)
	}
	if o.CACert == "" {
		add("--ca-cert is required: the CA that signed the server's --cluster-cert; without it the agent cannot tell the server from an impostor")
	}
	switch {
	case (o.AgentCert == "") != (o.AgentKey == ""):
		add("--agent-cert and --agent-key go together: set both, or neither when the agent authenticates with --service-account-token-path")
	case o.AgentCert == "" && o.ServiceAccountTokenPath == "":
		add("the agent has no credential: set --agent-cert and --agent-key (a client certificate from the server's --cluster-ca-cert), or --service-account-token-path (a projected ServiceAccount token, for a server with --agent-identity=token)")
	}
	for _, err := range []error{
		cli.CheckPort("--health-server-port", o.HealthServerPort, true),
		cli.CheckPort("--admin-server-port", o.AdminServerPort, true),
	} {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range []struct {
		flag string
		val  time.Duration
	}{{"--sync-interval", o.SyncInterval}, {"--sync-interval-cap", o.SyncIntervalCap}, {"--keepalive-time", o.KeepaliveTime}, {"--dial-timeout", o.DialTimeout}} {
		if d.val <= 0 {
			add("%s=%v: must be positive", d.flag, d.val)
		}
	}
	if o.SyncInterval > o.SyncIntervalCap {
		add("--sync-interval=%v is longer than --sync-interval-cap=%v; the cap must be at least the interval", o.SyncInterval, o.SyncIntervalCap)
	}
	if o.DrainGrace < 0 {
		add("--drain-grace=%v: must not be negative (0 closes open connections at once)", o.DrainGrace)
	}
	if o.CountServerLeases {
		if o.LeaseNamespace == "" {
			add("--lease-namespace is empty: give the namespace of the server replicas' Leases (the servers' --lease-namespace, kube-system by default)")
		}
		if _, err := labels.Parse(o.LeaseLabelSelector); err != nil || o.LeaseLabelSelector == "" {
			add("--lease-label-selector=%q: not a label selector (%v); the servers label their Leases %s", o.LeaseLabelSelector, err, leases.Selector())
		}
	} else if o.Kubeconfig != "" {
		add("--kubeconfig is only used with --count-server-leases: add that flag, or drop --kubeconfig")
	}
	if _, err := o.agentID(); err != nil {
		errs = append(errs, err)
	}
	if ids, err := o.identifiers(); err != nil {
		errs = append(errs, err)
	} else if ids.IsEmpty() {
		add("the agent has no identifiers, so the server could route nothing to it: set --agent-identifiers (e.g. host=NODE&ipv4=ADDR), or set NODE_NAME and NODE_IP in the environment (the DaemonSet's downward API: spec.nodeName and status.hostIP)")
	}
	if _, err := o.allowedCIDRs(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, o.TLS.Validate()...)
	return errs
}

// Warnings lists settings that work but are probably not what the operator
// wants. The command logs them at start.
func (o *Options) Warnings() []string {
	return o.TLS.Warnings()
}

// Config loads the certificates and builds the agent configuration. Call it
// after Validate returned no errors.
func (o *Options) Config() (agent.Config, error) {
	host, err := serverHost(o.ProxyServerHost)
	if err != nil {
		return agent.Config{}, fmt.Errorf("--proxy-server-host=%q: %w", o.ProxyServerHost, err)
	}
	id, err := o.agentID()
	if err != nil {
		return agent.Config{}, err
	}
	ids, err := o.identifiers()
	if err != nil {
		return agent.Config{}, err
	}
	cidrs, err := o.allowedCIDRs()
	if err != nil {
		return agent.Config{}, err
	}
	serverName := o.ServerName
	if serverName == "" {
		serverName = host
	}
	tlsCfg, err := tlsutil.ClientConfig(o.CACert, o.AgentCert, o.AgentKey, serverName)
	if err != nil {
		return agent.Config{}, fmt.Errorf("TLS to the server (--ca-cert, --agent-cert, --agent-key): %w", err)
	}
	hardening, err := o.TLS.Hardening()
	if err != nil {
		return agent.Config{}, err
	}
	hardening.Apply(tlsCfg)
	if o.ServiceAccountTokenPath != "" {
		// Read once here so that a wrong path fails at start, not only in
		// the connection loop's log.
		if _, err := agent.ReadToken(o.ServiceAccountTokenPath); err != nil {
			return agent.Config{}, fmt.Errorf("--service-account-token-path: %w", err)
		}
	}
	counter, err := o.serverCounter(id)
	if err != nil {
		return agent.Config{}, err
	}
	return agent.Config{
		ServerCounter:   counter,
		ServerAddr:      net.JoinHostPort(host, strconv.Itoa(o.ProxyServerPort)),
		TLS:             tlsCfg,
		TokenFile:       o.ServiceAccountTokenPath,
		AgentID:         id,
		Identifiers:     ids,
		AllowedCIDRs:    cidrs,
		HealthAddr:      cli.JoinHostPort(o.HealthBindAddress, o.HealthServerPort),
		AdminAddr:       cli.JoinHostPort(o.AdminBindAddress, o.AdminServerPort),
		SyncInterval:    o.SyncInterval,
		SyncIntervalCap: o.SyncIntervalCap,
		KeepaliveTime:   o.KeepaliveTime,
		DialTimeout:     o.DialTimeout,
		DrainGrace:      o.DrainGrace,
		ConnStreams:     o.ConnStreams,
		Mux:             o.Mux && o.ConnStreams,
	}, nil
}

// serverCounter is the Lease watcher of --count-server-leases; nil when
// off. agentID names the agent's API client in the API server's logs.
func (o *Options) serverCounter(agentID string) (agent.ServerCounter, error) {
	if !o.CountServerLeases {
		return nil, nil
	}
	client, err := cli.KubeClient(o.Kubeconfig, "edge-tunnel-agent/"+version.Get().GitVersion+" ("+agentID+")", o.getenv)
	if err != nil {
		return nil, fmt.Errorf("--count-server-leases: %w", err)
	}
	if client == nil {
		return nil, errors.New("--count-server-leases counts the server Leases through the Kubernetes API, but the agent has no API access: pass --kubeconfig, or run it in a pod with a ServiceAccount token (manifests/components/agent-lease-count); or drop the flag: the servers announce the count themselves")
	}
	w, err := leases.NewWatcher(leases.WatchConfig{Client: client, Namespace: o.LeaseNamespace, Selector: o.LeaseLabelSelector,
		Log: klog.Background().WithName("agent.leases"), RBACHint: ": see manifests/components/agent-lease-count"})
	if err != nil {
		return nil, fmt.Errorf("--count-server-leases: %w", err)
	}
	return w, nil
}

// serverHost returns the host without brackets, and refuses a host:port,
// which would otherwise become host:port:8091 and fail only at dial time.
func serverHost(h string) (string, error) {
	h = strings.TrimSpace(h)
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return h, nil
	}
	if strings.Contains(h, ":") {
		return "", fmt.Errorf("give only the host here and the port in --proxy-server-port")
	}
	if h == "" {
		return "", fmt.Errorf("empty host")
	}
	return h, nil
}

// agentID is --agent-id, else $NODE_NAME, else the hostname.
func (o *Options) agentID() (string, error) {
	if o.AgentID != "" {
		return o.AgentID, nil
	}
	if n := strings.TrimSpace(o.getenv(envNodeName)); n != "" {
		return n, nil
	}
	h, err := o.hostname()
	if err != nil || h == "" {
		return "", fmt.Errorf("cannot name the agent: --agent-id and $%s are empty and the hostname is unknown (%v); set --agent-id", envNodeName, err)
	}
	return h, nil
}

// identifiers parses --agent-identifiers and adds what the environment says:
// $NODE_NAME as a host, $NODE_IP, $HOST_IP and $NODE_IPS as addresses.
// Duplicates are dropped.
func (o *Options) identifiers() (identity.Identifiers, error) {
	ids, err := identity.Parse(o.AgentIdentifiers)
	if err != nil {
		return identity.Identifiers{}, fmt.Errorf("--agent-identifiers: %w", err)
	}
	if n := strings.TrimSpace(o.getenv(envNodeName)); n != "" {
		fromEnv, err := identity.Parse("host=" + n)
		if err != nil {
			return identity.Identifiers{}, fmt.Errorf("$%s=%q is not a valid node name: %w", envNodeName, n, err)
		}
		norm := identity.NormalizeHost(n)
		if !slices.ContainsFunc(ids.Hosts, func(h string) bool { return identity.NormalizeHost(h) == norm }) {
			ids.Hosts = append(ids.Hosts, fromEnv.Hosts...)
		}
	}
	for _, env := range []string{envNodeIP, envHostIP, envNodeIPs} {
		for _, item := range strings.Split(o.getenv(env), ",") {
			item = strings.TrimSpace(item)
			if item == "" {
				continue
			}
			a, err := netip.ParseAddr(item)
			if err != nil || a.Zone() != "" {
				return identity.Identifiers{}, fmt.Errorf("$%s: %q is not an IP address (want e.g. 10.0.0.5 or fd00::5, comma-separated in $%s)", env, item, envNodeIPs)
			}
			a = a.Unmap()
			if a.Is4() {
				if !slices.Contains(ids.IPv4, a) {
					ids.IPv4 = append(ids.IPv4, a)
				}
			} else if !slices.Contains(ids.IPv6, a) {
				ids.IPv6 = append(ids.IPv6, a)
			}
		}
	}
	return ids, nil
}

// allowedCIDRs parses --allowed-cidrs.
func (o *Options) allowedCIDRs() ([]*net.IPNet, error) {
	var nets []*net.IPNet
	for _, s := range o.AllowedCIDRs {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("--allowed-cidrs: %q is not a network in ADDR/BITS form (e.g. 10.96.0.0/12)", s)
		}
		nets = append(nets, n)
	}
	return nets, nil
}
