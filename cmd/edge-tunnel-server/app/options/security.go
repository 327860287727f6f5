package options

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	cliflag "k8s.io/component-base/cli/flag"

	"github.com/edge-tunnel/edge-tunnel/pkg/httpproxy"
	"github.com/edge-tunnel/edge-tunnel/pkg/router"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
)

// Limits are the server's policies and limits against abuse: where direct
// dials may go, who may use the HTTP proxy, and how much one client may
// hold. Each refusal is counted in edge_tunnel_server_refusals_total.
type Limits struct {
	DirectDialAllow []string

	ProxyTokenFile            string
	ProxyAllowUnauthenticated bool
	ProxyMaxHeaderBytes       int
	ProxyReadHeaderTimeout    time.Duration
	ProxyIdleTimeout          time.Duration

	MaxPendingDialsPerAgent  int
	MaxPendingDialsPerStream int
	MaxConnectionsPerClient  int

	FrontendMaxHeaderBytes    int
	FrontendReadHeaderTimeout time.Duration
}

func defaultLimits() Limits {
	return Limits{
		DirectDialAllow:          append([]string(nil), router.DefaultDirectAllow...),
		ProxyMaxHeaderBytes:      httpproxy.MaxHeaderBytes,
		ProxyReadHeaderTimeout:   httpproxy.ReadHeaderTimeout,
		ProxyIdleTimeout:         httpproxy.IdleTimeout,
		MaxPendingDialsPerAgent:  256,
		MaxPendingDialsPerStream: 64,
		MaxConnectionsPerClient:  10000,

		FrontendMaxHeaderBytes:    16 << 10,
		FrontendReadHeaderTimeout: 10 * time.Second,
	}
}

func (o *Options) addLimitFlags(fss *cliflag.NamedFlagSets) {
	l := &o.Limits
	fs := fss.FlagSet("dialing")
	fs.StringSliceVar(&l.DirectDialAllow, "direct-dial-allow", l.DirectDialAllow, "Where --direct-dial may go: CIDRs (10.96.0.0/12), addresses, host names (webhook.example.com) and domain suffixes (.svc, *.example.com). A name that is not listed is resolved and only its addresses inside the CIDRs are dialed. The default is loopback and the private ranges, which keeps the public internet and link-local addresses (the cloud metadata service 169.254.169.254) out of reach; narrow it to the cluster's Service and pod CIDRs. 0.0.0.0/0,::/0 allows everything.")

	fs = fss.FlagSet("http proxy")
	fs.StringVar(&l.ProxyTokenFile, "proxy-token-file", l.ProxyTokenFile, "File with a token the HTTP proxy's clients must send, as Proxy-Authorization: Bearer TOKEN or as the password of the proxy URL (http://edge:TOKEN@HOST:PORT). Others get 407. Read at start. Without --proxy-cert the token crosses the network in clear text.")
	fs.BoolVar(&l.ProxyAllowUnauthenticated, "proxy-allow-unauthenticated", l.ProxyAllowUnauthenticated, "Let the HTTP proxy listen beyond loopback (--proxy-bind-address) without authenticating its clients (neither --proxy-ca-cert nor --proxy-token-file). Anyone who reaches it then reaches every forwarded edge-node port: only with a NetworkPolicy that admits just the components that need it (manifests/base ships one).")
	fs.IntVar(&l.ProxyMaxHeaderBytes, "proxy-max-header-bytes", l.ProxyMaxHeaderBytes, "Largest request head the HTTP proxy reads; larger ones get 431.")
	fs.DurationVar(&l.ProxyReadHeaderTimeout, "proxy-read-header-timeout", l.ProxyReadHeaderTimeout, "How long the HTTP proxy waits for a request head, on a new connection and between requests on a kept-alive one.")
	fs.DurationVar(&l.ProxyIdleTimeout, "proxy-idle-timeout", l.ProxyIdleTimeout, "How long the HTTP proxy keeps an idle kept-alive client connection open. CONNECT tunnels are not affected.")

	fs = fss.FlagSet("limits")
	fs.IntVar(&l.MaxPendingDialsPerAgent, "max-pending-dials-per-agent", l.MaxPendingDialsPerAgent, "Dials that may wait for one agent's answer at once; more are refused at once (503) and counted. Protects the server's memory and the agent's link from a burst of dials to one node. 0 means no limit.")
	fs.IntVar(&l.MaxPendingDialsPerStream, "max-pending-dials-per-stream", l.MaxPendingDialsPerStream, "Dials that may wait for an answer on one gRPC ProxyService stream; more are refused with a DIAL_RSP error and counted. kube-apiserver dials once per stream. 0 means no limit.")
	fs.IntVar(&l.FrontendMaxHeaderBytes, "frontend-max-header-bytes", l.FrontendMaxHeaderBytes, "Largest HTTP CONNECT request head the frontends (UNIX socket and TCP) read; larger ones get 431.")
	fs.DurationVar(&l.FrontendReadHeaderTimeout, "frontend-read-header-timeout", l.FrontendReadHeaderTimeout, "How long a new frontend connection may take for its TLS handshake and its first bytes (the HTTP/2 preface, or the whole CONNECT request head) before it is closed.")
	fs.IntVar(&l.MaxConnectionsPerClient, "max-connections-per-client", l.MaxConnectionsPerClient, "Connections one client address may hold open on the TCP frontend (--server-port); more are closed at accept and counted. kube-apiserver holds one per open tunnel (each kubectl logs -f or exec). The UNIX socket is not limited: only local users the socket's mode admits reach it. 0 means no limit.")
}

// validateLimits checks the flags of addLimitFlags, and that an HTTP proxy
// beyond loopback authenticates its clients or is explicitly open.
func (o *Options) validateLimits() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	l := o.Limits
	if _, err := router.ParseAllow(l.DirectDialAllow); err != nil {
		add("--direct-dial-allow: %v", err)
	}
	for _, c := range []struct {
		flag string
		v    int
	}{
		{"--proxy-max-header-bytes", l.ProxyMaxHeaderBytes},
		{"--frontend-max-header-bytes", l.FrontendMaxHeaderBytes},
		{"--max-pending-dials-per-agent", l.MaxPendingDialsPerAgent},
		{"--max-pending-dials-per-stream", l.MaxPendingDialsPerStream},
		{"--max-connections-per-client", l.MaxConnectionsPerClient},
	} {
		if c.v < 0 {
			add("%s=%d: must not be negative (0 means no limit)", c.flag, c.v)
		}
	}
	if l.ProxyMaxHeaderBytes > 0 && l.ProxyMaxHeaderBytes < 1024 {
		add("--proxy-max-header-bytes=%d: too small for any proxy request; give at least 1024 (default %d)", l.ProxyMaxHeaderBytes, httpproxy.MaxHeaderBytes)
	}
	if l.FrontendMaxHeaderBytes > 0 && l.FrontendMaxHeaderBytes < 1024 {
		add("--frontend-max-header-bytes=%d: too small for a CONNECT request; give at least 1024 (default 16384)", l.FrontendMaxHeaderBytes)
	}
	for _, c := range []struct {
		flag string
		v    time.Duration
	}{
		{"--proxy-read-header-timeout", l.ProxyReadHeaderTimeout},
		{"--proxy-idle-timeout", l.ProxyIdleTimeout},
		{"--frontend-read-header-timeout", l.FrontendReadHeaderTimeout},
	} {
		if c.v <= 0 {
			add("%s=%v: must be positive", c.flag, c.v)
		}
	}
	if o.ProxyPort != 0 && !isLoopback(o.ProxyBindAddress) && o.ProxyCACert == "" && l.ProxyTokenFile == "" && !l.ProxyAllowUnauthenticated {
		add("the HTTP proxy listens beyond loopback (--proxy-bind-address=%q) without authenticating its clients, so whoever reaches it reaches every forwarded edge-node port: set --proxy-token-file (a token clients send) or --proxy-ca-cert (client certificates), or --proxy-allow-unauthenticated if a NetworkPolicy admits only the components that need the proxy", o.ProxyBindAddress)
	}
	return errs
}

// limitWarnings lists limit settings that work but are probably a mistake.
func (o *Options) limitWarnings() []string {
	var ws []string
	l := o.Limits
	if o.ProxyPort != 0 && l.ProxyTokenFile != "" && o.ProxyCert == "" {
		ws = append(ws, "--proxy-token-file without --proxy-cert: the HTTP proxy's clients send the token in clear text, so anyone who can read the traffic between them and the server can reuse it")
	}
	if o.ProxyPort == 0 && (l.ProxyTokenFile != "" || l.ProxyAllowUnauthenticated) {
		ws = append(ws, "--proxy-token-file/--proxy-allow-unauthenticated are set but unused because --proxy-port=0")
	}
	if o.DirectDial {
		if a, err := router.ParseAllow(l.DirectDialAllow); err == nil && a.AllowsAll() {
			ws = append(ws, "--direct-dial-allow allows every address: the server may be used to reach any host it can reach, the cloud metadata service included; list the cluster's Service and pod CIDRs instead")
		}
	}
	return ws
}

// limitConfig fills the server configuration from the limit flags.
func (o *Options) limitConfig(cfg *server.Config) error {
	l := o.Limits
	if o.DirectDial {
		a, err := router.ParseAllow(l.DirectDialAllow)
		if err != nil {
			return fmt.Errorf("--direct-dial-allow: %w", err)
		}
		cfg.DirectDialAllow = a
	}
	if o.ProxyPort != 0 && l.ProxyTokenFile != "" {
		b, err := os.ReadFile(l.ProxyTokenFile)
		if err != nil {
			return fmt.Errorf("--proxy-token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return fmt.Errorf("--proxy-token-file %s is empty: put the token the HTTP proxy's clients send in it", l.ProxyTokenFile)
		}
		if strings.ContainsAny(tok, " \t\r\n") {
			return fmt.Errorf("--proxy-token-file %s holds more than one word: the token is one line without spaces (e.g. from openssl rand -hex 32)", l.ProxyTokenFile)
		}
		cfg.ProxyToken = tok
	}
	cfg.ProxyLimits = httpproxy.Limits{MaxHeaderBytes: l.ProxyMaxHeaderBytes,
		ReadHeaderTimeout: l.ProxyReadHeaderTimeout, IdleTimeout: l.ProxyIdleTimeout}
	cfg.MaxPendingDialsPerAgent = l.MaxPendingDialsPerAgent
	cfg.MaxPendingDialsPerStream = l.MaxPendingDialsPerStream
	cfg.MaxConnectionsPerClient = l.MaxConnectionsPerClient
	cfg.FrontendMaxHeadBytes = l.FrontendMaxHeaderBytes
	cfg.FrontendReadHeaderTimeout = l.FrontendReadHeaderTimeout
	return nil
}

// isLoopback reports whether a bind address keeps a listener on this host:
// a loopback address or localhost. Empty means every interface.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
