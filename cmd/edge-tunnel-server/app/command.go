// Package app is the edge-tunnel-server command: flags in, a running server
// out, stopped by SIGTERM or SIGINT.
package app

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/component-base/term"
	"k8s.io/component-base/version"
	"k8s.io/component-base/version/verflag"
	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-server/app/options"
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
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if printVersion(cmd) {
				return nil
			}
			// Logging first, so that everything below logs as configured.
			if err := logsapi.ValidateAndApply(o.Logging, nil); err != nil {
				return fmt.Errorf("logging flags: %w", err)
			}
			cliflag.PrintFlags(cmd.Flags())
			if errs := o.Validate(); len(errs) != 0 {
				return fmt.Errorf("invalid flags:\n%w", errors.Join(errs...))
			}
			for _, w := range o.Warnings() {
				klog.Warning(w)
			}
			cfg, err := o.Config()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGTERM, os.Interrupt)
			defer stop()
			go func() {
				// After the first signal, restore the default handling so a
				// second one ends the process at once.
				<-ctx.Done()
				stop()
			}()
			return run(ctx, cfg)
		},
	}

	fs := cmd.Flags()
	fss := o.Flags()
	global := fss.FlagSet("global")
	verflag.AddFlags(global)
	global.BoolP("help", "h", false, "Print this help and exit.")
	for _, f := range fss.FlagSets {
		fs.AddFlagSet(f)
	}
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, fss, cols)
	return cmd
}

// run starts the server and blocks until ctx ends and the server has stopped.
func run(ctx context.Context, cfg server.Config) error {
	srv, err := server.New(cfg)
	if err != nil {
		return fmt.Errorf("setting up the server: %w", err)
	}
	klog.InfoS("Starting "+name, "version", version.Get().GitVersion, "serverID", cfg.ServerID,
		"serverCount", cfg.ServerCount, "uds", cfg.UDSName, "frontend", cfg.FrontendAddr, "agents", cfg.AgentAddr,
		"health", cfg.HealthAddr, "admin", cfg.AdminAddr, "directDial", cfg.DirectDial)
	err = srv.Run(ctx)
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		klog.InfoS("Stopped " + name)
		return nil
	}
	if err == nil {
		return errors.New("the server stopped without being asked to")
	}
	return err
}

// printVersion handles --version. verflag prints "Kubernetes vX" for
// --version=true, so that case is printed here with our own name; --version=raw
// (the full version struct) is left to verflag.
func printVersion(cmd *cobra.Command) bool {
	if f := cmd.Flags().Lookup("version"); f != nil && f.Value.String() == "true" {
		fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", name, version.Get().GitVersion)
		return true
	}
	verflag.PrintAndExitIfRequested()
	return false
}

// noArgs refuses positional arguments, which are almost always a flag
// written without its leading dashes.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, only flags (got %q; a flag needs its leading --)", cmd.Name(), args)
	}
	return nil
}
