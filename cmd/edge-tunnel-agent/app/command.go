// Package app is the edge-tunnel-agent command: flags and environment in, a
// running agent out, drained and stopped by SIGTERM or SIGINT.
package app

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-agent/app/options"
	"github.com/edge-tunnel/edge-tunnel/internal/cli"
	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
)

const name = "edge-tunnel-agent"

// NewCommand returns the edge-tunnel-agent command with its flags.
func NewCommand() *cobra.Command {
	o := options.NewOptions()
	cmd := &cobra.Command{
		Use:   name,
		Short: "Connect an edge node to edge-tunnel-server and dial node-local targets for the cloud",
		Long: name + ` runs on every edge node (a DaemonSet on the host network). It dials out
to edge-tunnel-server, normally through a load balancer, keeps one connection to
every server replica, announces the node's name and addresses, and dials the
node-local targets the servers ask for, refusing targets that are not its own
node. It is wire-compatible with konnectivity-server.`,
		Args: cli.NoArgs,
		RunE: cli.RunE(name, o.Logging, o, run),
	}
	cli.Finish(cmd, o.Flags())
	return cmd
}

// run starts the agent and blocks until ctx ends and the agent has drained
// (for at most cfg.DrainGrace) and stopped.
func run(ctx context.Context, cfg agent.Config) error {
	a, err := agent.New(cfg)
	if err != nil {
		return fmt.Errorf("setting up the agent: %w", err)
	}
	klog.InfoS("Starting "+name, "version", version.Get().GitVersion, "agentID", cfg.AgentID,
		"identifiers", cfg.Identifiers.String(), "server", cfg.ServerAddr,
		"health", cfg.HealthAddr, "admin", cfg.AdminAddr)
	return cli.Stopped(ctx, name, "the agent", a.Run(ctx))
}
