// Package app is the edge-tunnel-proxy command: flags in, an HTTP proxy on
// loopback out, stopped by SIGTERM or SIGINT.
package app

import (
	"context"
	"fmt"
	"net"

	"github.com/spf13/cobra"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-proxy/app/options"
	"github.com/edge-tunnel/edge-tunnel/internal/cli"
	"github.com/edge-tunnel/edge-tunnel/pkg/egress"
	"github.com/edge-tunnel/edge-tunnel/pkg/httpproxy"
)

const name = "edge-tunnel-proxy"

// NewCommand returns the edge-tunnel-proxy command with its flags.
func NewCommand() *cobra.Command {
	o := options.NewOptions()
	cmd := &cobra.Command{
		Use:   name,
		Short: "Serve an HTTP proxy on loopback that reaches edge nodes through edge-tunnel-server",
		Long: name + ` runs as a sidecar next to a component that must reach edge nodes
(metrics-server, Prometheus). It listens on the pod's loopback and serves an
HTTP proxy: CONNECT for TLS ports, and plain requests (GET http://NODE_IP:PORT/...)
for plain-HTTP ports. Every connection goes through edge-tunnel-server's gRPC
frontend with konnectivity-client, over its UNIX socket or over TCP with mutual
TLS, so the component needs only HTTPS_PROXY=http://127.0.0.1:8099.

The proxy cannot know which ports the server forwards over plain HTTP: it
forwards plain requests to any port and leaves refusals to the server (a port
that is not forwarded is refused with 403 and the server's reason; a plain
request to a TLS port fails like any wrong-protocol request).`,
		Args: cli.NoArgs,
		RunE: cli.RunE(name, o.Logging, o, run),
	}
	cli.Finish(cmd, o.Flags())
	return cmd
}

// run serves the proxy until ctx ends, then lets open connections finish
// for cfg.ShutdownGrace.
func run(ctx context.Context, cfg options.Config) error {
	dialer, err := egress.New(cfg.Egress)
	if err != nil {
		return fmt.Errorf("setting up the connection to edge-tunnel-server: %w", err)
	}
	proxy, err := httpproxy.New(httpproxy.Options{Dialer: dialer, DialTimeout: cfg.DialTimeout, Name: name,
		Log: klog.Background().WithName("http-proxy")})
	if err != nil {
		return fmt.Errorf("setting up the proxy: %w", err)
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return fmt.Errorf("listening for the proxy on %s: %w", cfg.ListenAddr, err)
	}
	server := cfg.Egress.UDSName
	if server == "" {
		server = cfg.Egress.Address
	}
	klog.InfoS("Starting "+name, "version", version.Get().GitVersion, "listen", ln.Addr().String(), "server", server)
	served := make(chan error, 1)
	go func() { served <- proxy.Serve(ln) }()
	select {
	case err := <-served:
		return cli.Stopped(ctx, name, "the proxy", err)
	case <-ctx.Done():
	}
	klog.InfoS("Shutting down: no new connections; open ones get a grace period", "grace", cfg.ShutdownGrace)
	graceCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownGrace)
	defer cancel()
	proxy.Shutdown(graceCtx)
	return cli.Stopped(ctx, name, "the proxy", <-served)
}
