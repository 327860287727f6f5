// Package cli is the frame edge-tunnel-server and edge-tunnel-agent share:
// the global flags and sectioned --help, --version with the command's own
// name, the logging flags, the start-up sequence before a command builds its
// configuration, and the signal handling that stops it.
//
// It holds only what is the same in both commands; their own flags, checks
// and configuration stay in their options packages.
package cli

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
	"k8s.io/component-base/term"
	"k8s.io/component-base/version"
	"k8s.io/component-base/version/verflag"
	"k8s.io/klog/v2"
)

// Finish adds the global section (--version, --help) to fss, puts every
// section's flags on cmd, and makes usage and --help print them section by
// section, wrapped to the terminal's width (not wrapped when the output is not
// a terminal). Call it last in a NewCommand, after all flags are defined.
func Finish(cmd *cobra.Command, fss cliflag.NamedFlagSets) {
	global := fss.FlagSet("global")
	verflag.AddFlags(global)
	global.BoolP("help", "h", false, "Print this help and exit.")
	fs := cmd.Flags()
	for _, f := range fss.FlagSets {
		fs.AddFlagSet(f)
	}
	cols, _, _ := term.TerminalSize(cmd.OutOrStdout())
	cliflag.SetUsageAndHelpFunc(cmd, fss, cols)
}

// Prepare is what a command does first when it runs, before it builds its
// configuration: it handles --version (done is then true and the command
// should return), applies the logging flags so that everything after logs as
// configured, logs all flags, and reports every error of validate together.
func Prepare(cmd *cobra.Command, name string, logging *logsapi.LoggingConfiguration, validate func() []error) (done bool, err error) {
	if PrintVersion(cmd, name) {
		return true, nil
	}
	if err := logsapi.ValidateAndApply(logging, nil); err != nil {
		return false, fmt.Errorf("logging flags: %w", err)
	}
	cliflag.PrintFlags(cmd.Flags())
	if errs := validate(); len(errs) != 0 {
		return false, fmt.Errorf("invalid flags:\n%w", errors.Join(errs...))
	}
	return false, nil
}

// Options is what a command's options give RunE: validation of the flags
// and the configuration they build. Options that also have
// Warnings() []string get those logged before the configuration is built.
type Options[C any] interface {
	Validate() []error
	Config() (C, error)
}

// RunE is the RunE of every edge-tunnel command: Prepare, log the options'
// warnings, build the configuration, and run it until SIGTERM or SIGINT.
func RunE[C any](name string, logging *logsapi.LoggingConfiguration, o Options[C], run func(context.Context, C) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if done, err := Prepare(cmd, name, logging, o.Validate); done || err != nil {
			return err
		}
		if w, ok := o.(interface{ Warnings() []string }); ok {
			for _, msg := range w.Warnings() {
				klog.Warning(msg)
			}
		}
		cfg, err := o.Config()
		if err != nil {
			return err
		}
		ctx, stop := SignalContext(cmd.Context())
		defer stop()
		return run(ctx, cfg)
	}
}

// PrintVersion handles --version and reports whether it printed something.
// verflag prints "Kubernetes vX" for --version=true, so that case is printed
// here as "NAME vX"; --version=raw (the full version struct) is left to
// verflag, which prints it and exits the process.
func PrintVersion(cmd *cobra.Command, name string) bool {
	if f := cmd.Flags().Lookup("version"); f != nil && f.Value.String() == "true" {
		fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", name, version.Get().GitVersion)
		return true
	}
	verflag.PrintAndExitIfRequested()
	return false
}

// NoArgs refuses positional arguments, which are almost always a flag
// written without its leading dashes. Use it as a cobra.Command's Args.
func NoArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("%s takes no arguments, only flags (got %q; a flag needs its leading --)", cmd.Name(), args)
	}
	return nil
}

// SignalContext returns a context that ends on the first SIGTERM or SIGINT,
// which starts a graceful stop. After that first signal the default handling
// is restored, so that a second one ends the process at once instead of
// waiting for the drain. stop releases the signal handling; call it when the
// command returns.
func SignalContext(parent context.Context) (ctx context.Context, stop context.CancelFunc) {
	ctx, stop = signal.NotifyContext(parent, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-ctx.Done()
		stop()
	}()
	return ctx, stop
}

// Stopped turns what a long-running Run(ctx) returned into the command's
// result. Stopping because ctx ended (a signal) is success and is logged as
// "Stopped NAME"; stopping on its own without an error is a bug in what ran,
// reported as "WHAT stopped without being asked to"; any other error is
// returned as it is.
func Stopped(ctx context.Context, name, what string, err error) error {
	if ctx.Err() != nil && (err == nil || errors.Is(err, context.Canceled)) {
		klog.InfoS("Stopped " + name)
		return nil
	}
	if err == nil {
		return fmt.Errorf("%s stopped without being asked to", what)
	}
	return err
}
