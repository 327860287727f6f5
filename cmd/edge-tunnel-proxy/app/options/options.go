// Package options holds the command-line flags of edge-tunnel-proxy, checks
// them, and turns them into a Config.
//
// The server-connection flags mirror kube-apiserver's egress selector
// configuration (a UNIX socket, or a TCP address with a CA bundle and a
// client certificate), so that the sidecar can reuse the certificate
// kube-apiserver's egress uses, or one issued from the same CA.
package options

import (
	"fmt"
	"net"
	"strconv"
	"time"

	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"

	"github.com/edge-tunnel/edge-tunnel/internal/cli"
	"github.com/edge-tunnel/edge-tunnel/pkg/egress"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// Options are the flags of edge-tunnel-proxy.
type Options struct {
	// Listener: where the component in the same pod connects.
	BindAddress string
	Port        int

	// Server connection: the gRPC frontend of edge-tunnel-server.
	UDSName    string
	ServerHost string
	ServerPort int
	ServerName string
	CACert     string
	ClientCert string
	ClientKey  string
	// TLS is the protocol floor and TLS 1.2 cipher suites of the
	// connection to the server's TCP frontend.
	TLS tlsutil.Flags

	DialTimeout   time.Duration
	ShutdownGrace time.Duration

	// Logging is klog's configuration (-v, --vmodule, --logging-format).
	Logging *logsapi.LoggingConfiguration
}

// Config is what the command runs with, files loaded.
type Config struct {
	// ListenAddr is host:port of the proxy.
	ListenAddr    string
	Egress        egress.Config
	DialTimeout   time.Duration
	ShutdownGrace time.Duration
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		BindAddress:   "127.0.0.1",
		Port:          8099,
		ServerPort:    8090,
		DialTimeout:   10 * time.Second,
		ShutdownGrace: 10 * time.Second,
		Logging:       logsapi.NewLoggingConfiguration(),
	}
}

// Flags returns the flags grouped into the sections that --help prints.
func (o *Options) Flags() cliflag.NamedFlagSets {
	var fss cliflag.NamedFlagSets

	fs := fss.FlagSet("proxy")
	fs.StringVar(&o.BindAddress, "bind-address", o.BindAddress, "Address the proxy listens on. Keep the loopback default: the proxy does not authenticate its clients, and anything that reaches it reaches every forwarded edge-node port.")
	fs.IntVar(&o.Port, "port", o.Port, "Port the proxy listens on; point the component at it with HTTPS_PROXY=http://127.0.0.1:PORT (and HTTP_PROXY for plain-HTTP targets).")
	fs.DurationVar(&o.DialTimeout, "dial-timeout", o.DialTimeout, "How long a dial through edge-tunnel-server may take before the client gets an error.")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", o.ShutdownGrace, "How long open connections may finish after SIGTERM.")

	fs = fss.FlagSet("server connection")
	fs.StringVar(&o.UDSName, "uds-name", o.UDSName, "UNIX socket of edge-tunnel-server's frontend (its --uds-name), when the sidecar runs where the socket is mounted. Give this or --server-host.")
	fs.StringVar(&o.ServerHost, "server-host", o.ServerHost, "Host name or address of edge-tunnel-server's TCP frontend (mutual TLS). Give this or --uds-name.")
	fs.IntVar(&o.ServerPort, "server-port", o.ServerPort, "Port of edge-tunnel-server's TCP frontend (its --server-port).")
	fs.StringVar(&o.ServerName, "server-name", o.ServerName, "Name (DNS name or IP address) the frontend's certificate must carry. Default: --server-host.")
	fs.StringVar(&o.CACert, "ca-cert", o.CACert, "CA bundle that verifies the frontend's certificate. Required with --server-host.")
	fs.StringVar(&o.ClientCert, "client-cert", o.ClientCert, "Client certificate for the frontend, from the CA of the server's --server-ca-cert (PEM). Required with --server-host.")
	fs.StringVar(&o.ClientKey, "client-key", o.ClientKey, "Private key of --client-cert (PEM). Required with --server-host.")
	o.TLS.AddFlags(fs, "the connection to the server's TCP frontend (--server-host)")

	cli.AddLoggingFlags(fss.FlagSet("logging"), o.Logging)
	return fss
}

// Validate checks the flags without touching the file system; Config reads
// the files. Every problem found is reported, each saying what to change.
func (o *Options) Validate() []error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if err := cli.CheckPort("--port", o.Port, false); err != nil {
		errs = append(errs, err)
	}
	switch {
	case o.UDSName == "" && o.ServerHost == "":
		add("no server: set --uds-name (edge-tunnel-server's UNIX socket) or --server-host (its TCP frontend, with --ca-cert, --client-cert and --client-key)")
	case o.UDSName != "" && o.ServerHost != "":
		add("--uds-name and --server-host both set: give one way to reach edge-tunnel-server")
	case o.ServerHost != "":
		if err := cli.CheckPort("--server-port", o.ServerPort, false); err != nil {
			errs = append(errs, err)
		}
		if o.CACert == "" {
			add("--server-host needs --ca-cert, the CA bundle that verifies the frontend's certificate")
		}
		if o.ClientCert == "" || o.ClientKey == "" {
			add("--server-host needs --client-cert and --client-key: the TCP frontend serves only clients with a certificate from its --server-ca-cert")
		}
	}
	if o.DialTimeout <= 0 {
		add("--dial-timeout=%v: must be positive (e.g. 10s)", o.DialTimeout)
	}
	if o.ShutdownGrace < 0 {
		add("--shutdown-grace=%v: must not be negative", o.ShutdownGrace)
	}
	errs = append(errs, o.TLS.Validate()...)
	return errs
}

// Warnings lists settings that work but are probably not what the operator
// wants. The command logs them at start.
func (o *Options) Warnings() []string {
	var ws []string
	if ip := net.ParseIP(o.BindAddress); o.BindAddress != "localhost" && (ip == nil || !ip.IsLoopback()) {
		ws = append(ws, fmt.Sprintf("--bind-address=%q is not a loopback address: the proxy does not authenticate its clients, so whoever reaches it reaches every forwarded edge-node port", o.BindAddress))
	}
	if o.UDSName != "" && (o.CACert != "" || o.ClientCert != "" || o.ClientKey != "") {
		ws = append(ws, "--ca-cert/--client-cert/--client-key are unused with --uds-name")
	}
	if o.UDSName != "" && o.TLS.Set() {
		ws = append(ws, "--tls-min-version/--tls-cipher-suites are unused with --uds-name (the UNIX socket is not TLS)")
	}
	ws = append(ws, o.TLS.Warnings()...)
	return ws
}

// Config loads the certificates and builds the configuration. Call it after
// Validate returned no errors.
func (o *Options) Config() (Config, error) {
	cfg := Config{
		ListenAddr:    net.JoinHostPort(o.BindAddress, strconv.Itoa(o.Port)),
		DialTimeout:   o.DialTimeout,
		ShutdownGrace: o.ShutdownGrace,
	}
	if o.UDSName != "" {
		cfg.Egress.UDSName = o.UDSName
		return cfg, nil
	}
	name := o.ServerName
	if name == "" {
		name = o.ServerHost
	}
	tlsCfg, err := tlsutil.ClientConfig(o.CACert, o.ClientCert, o.ClientKey, name)
	if err != nil {
		return Config{}, fmt.Errorf("TLS to the server's frontend (--ca-cert, --client-cert, --client-key): %w", err)
	}
	hardening, err := o.TLS.Hardening()
	if err != nil {
		return Config{}, err
	}
	hardening.Apply(tlsCfg)
	cfg.Egress.Address = net.JoinHostPort(o.ServerHost, strconv.Itoa(o.ServerPort))
	cfg.Egress.TLS = tlsCfg
	return cfg, nil
}
