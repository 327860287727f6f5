// Package app is the edge-tunnel-server command: flags in, a running server
// out, stopped by SIGTERM or SIGINT.
package app

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-server/app/options"
	"github.com/edge-tunnel/edge-tunnel/internal/cli"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
)

const name = "edge-tunnel-server"

// NewCommand returns the edge-tunnel-server command with its flags.
func NewCommand() *cobra.Command {
	o := options.NewOptions()
	cmd := &cobra.Command{
		Use:   name,
		Short: "Serve kube-apiserver's egress to edge nodes through their agents",
		Long: name + ` accepts connections from edge-tunnel-agents running on edge nodes, and
serves kube-apiserver's egress selector (gRPC or HTTP CONNECT, over a UNIX socket
or TCP with mutual TLS) so that the control plane reaches kubelets and other
node ports that sit behind NAT or firewalls. It is wire-compatible with
konnectivity-server and konnectivity-agent.`,
		Args: cli.NoArgs,
		RunE: cli.RunE(name, o.Logging, o, run),
	}
	cli.Finish(cmd, o.Flags())
	cmd.AddCommand(newCertsCommand(), newSocketDirCommand())
	return cmd
}

// run starts the server and blocks until ctx ends and the server has stopped.
func run(ctx context.Context, cfg server.Config) error {
	srv, err := server.New(cfg)
	if err != nil {
		return fmt.Errorf("setting up the server: %w", err)
	}
	klog.InfoS("Starting "+name, "version", version.Get().GitVersion, "serverID", cfg.ServerID,
		"serverCount", cfg.ServerCount, "uds", cfg.UDSName, "frontend", cfg.FrontendAddr, "agents", cfg.AgentAddr, "proxy", cfg.ProxyAddr,
		"health", cfg.HealthAddr, "admin", cfg.AdminAddr, "directDial", cfg.DirectDial)
	return cli.Stopped(ctx, name, "the server", srv.Run(ctx))
}
