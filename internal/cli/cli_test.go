package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	logsapi "k8s.io/component-base/logs/api/v1"
)

func init() {
	// Prepare applies the logging configuration once per command run; a real
	// process runs one command, this test binary several.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
}

// testCommand is a command built the way edge-tunnel's commands are: a
// section of its own flags, the logging flags, Finish, and a RunE that calls Prepare.
type testCommand struct {
	cmd     *cobra.Command
	out     bytes.Buffer
	logging *logsapi.LoggingConfiguration
	name    string
	errs    []error
	ran     bool
}

func newTestCommand(t *testing.T) *testCommand {
	tc := &testCommand{logging: logsapi.NewLoggingConfiguration()}
	tc.cmd = &cobra.Command{
		Use:  "test-cmd",
		Args: NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if done, err := Prepare(cmd, "test-cmd", tc.logging, func() []error { return tc.errs }); done || err != nil {
				return err
			}
			tc.ran = true
			return nil
		},
	}
	var fss cliflag.NamedFlagSets
	fss.FlagSet("things").StringVar(&tc.name, "name", "default-name", "Name of the thing.")
	AddLoggingFlags(fss.FlagSet("logging"), tc.logging)
	Finish(tc.cmd, fss)
	tc.cmd.SetOut(&tc.out)
	tc.cmd.SetErr(&tc.out)
	t.Cleanup(func() { tc.cmd.Flags().Set("version", "false") }) // verflag's value is process-wide
	return tc
}

func (tc *testCommand) execute(args ...string) error {
	tc.cmd.SetArgs(args)
	return tc.cmd.Execute()
}

func TestFinishPrintsSectionsAndGlobalFlags(t *testing.T) {
	tc := newTestCommand(t)
	if err := tc.execute("--help"); err != nil {
		t.Fatal(err)
	}
	help := tc.out.String()
	for _, want := range []string{"Usage:\n  test-cmd [flags]", "Things flags:", "--name string", `(default "default-name")`,
		"Global flags:", "-h, --help", "Print this help and exit.", "--version version[=true]"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q:\n%s", want, help)
		}
	}
	if strings.Index(help, "Things flags:") > strings.Index(help, "Global flags:") {
		t.Errorf("the global section comes before the command's own:\n%s", help)
	}
	if tc.ran {
		t.Error("--help ran the command")
	}
}

func TestPrepareRunsWithValidFlags(t *testing.T) {
	tc := newTestCommand(t)
	if err := tc.execute("--name=x"); err != nil {
		t.Fatal(err)
	}
	if !tc.ran || tc.name != "x" {
		t.Errorf("ran=%v name=%q, want the command run with --name=x", tc.ran, tc.name)
	}
}

func TestPrepareVersion(t *testing.T) {
	tc := newTestCommand(t)
	tc.errs = []error{errors.New("must not be reached")}
	if err := tc.execute("--version"); err != nil {
		t.Fatal(err)
	}
	if out := tc.out.String(); !strings.HasPrefix(out, "test-cmd v") || strings.Contains(out, "Kubernetes") {
		t.Errorf("--version printed %q, want test-cmd vX", out)
	}
	if tc.ran {
		t.Error("--version ran the command")
	}
}

func TestPrepareReportsAllValidationErrors(t *testing.T) {
	tc := newTestCommand(t)
	tc.errs = []error{errors.New("--a is wrong"), errors.New("--b is wrong")}
	err := tc.execute()
	if err == nil || !strings.Contains(err.Error(), "invalid flags:\n--a is wrong\n--b is wrong") {
		t.Errorf("err = %v, want both errors under \"invalid flags\"", err)
	}
	if !errors.Is(err, tc.errs[1]) {
		t.Errorf("err = %v does not wrap the validation errors", err)
	}
	if tc.ran {
		t.Error("the command ran with invalid flags")
	}
}

func TestPrepareReportsBadLoggingFlags(t *testing.T) {
	tc := newTestCommand(t)
	tc.errs = []error{errors.New("must not be reached")}
	err := tc.execute("--logging-format=bogus")
	if err == nil || !strings.Contains(err.Error(), "logging flags:") || strings.Contains(err.Error(), "must not be reached") {
		t.Errorf("err = %v, want a logging flags error before validation", err)
	}
}

func TestNoArgs(t *testing.T) {
	tc := newTestCommand(t)
	err := tc.execute("name=x")
	if err == nil || !strings.Contains(err.Error(), `test-cmd takes no arguments, only flags (got ["name=x"]`) {
		t.Errorf("err = %v", err)
	}
	if tc.ran {
		t.Error("the command ran with a positional argument")
	}
}

func TestAddLoggingFlags(t *testing.T) {
	c := logsapi.NewLoggingConfiguration()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	AddLoggingFlags(fs, c)
	if err := fs.Parse([]string{"-v=3", "--logging-format=json", "--logtostderr=false", "--alsologtostderr"}); err != nil {
		t.Fatal(err)
	}
	if c.Verbosity != 3 || c.Format != "json" {
		t.Errorf("verbosity %d, format %q; want 3, json", c.Verbosity, c.Format)
	}
	for _, want := range []string{"--logtostderr has been deprecated, ignored: edge-tunnel always logs to stderr.",
		"--alsologtostderr has been deprecated"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("parse output lacks %q:\n%s", want, out.String())
		}
	}
	for _, name := range []string{"logtostderr", "alsologtostderr"} {
		if f := fs.Lookup(name); f == nil || f.Deprecated == "" {
			t.Errorf("--%s is missing or not deprecated (so --help would list it)", name)
		}
	}
}

func TestAddDeprecatedProfilingFlags(t *testing.T) {
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	AddDeprecatedProfilingFlags(fs, "admin-port")
	if err := fs.Parse([]string{"--enable-profiling", "--enable-contention-profiling=true"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"--enable-profiling has been deprecated, ignored: pprof is always served on --admin-bind-address:--admin-port (loopback by default); set --admin-port=0 to turn it off.",
		"--enable-contention-profiling has been deprecated, ignored:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("parse output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestCheckPort(t *testing.T) {
	cases := []struct {
		port   int
		zeroOK bool
		want   string // "" for valid
	}{
		{1, false, ""}, {65535, true, ""}, {0, true, ""},
		{0, false, "--p=0: this port cannot be disabled; give a port in 1..65535"},
		{-1, true, "--p=-1: not a port; give 1..65535, or 0 to disable it"},
		{65536, false, "--p=65536: not a port; give 1..65535"},
	}
	for _, c := range cases {
		err := CheckPort("--p", c.port, c.zeroOK)
		if got := fmt.Sprint(err); (c.want == "" && err != nil) || (c.want != "" && got != c.want) {
			t.Errorf("CheckPort(%d, zeroOK=%v) = %v, want %q", c.port, c.zeroOK, err, c.want)
		}
	}
}

func TestJoinHostPort(t *testing.T) {
	for _, c := range []struct {
		host string
		port int
		want string
	}{{"127.0.0.1", 8092, "127.0.0.1:8092"}, {"", 8092, ":8092"}, {"::", 1, "[::]:1"}, {"127.0.0.1", 0, ""}} {
		if got := JoinHostPort(c.host, c.port); got != c.want {
			t.Errorf("JoinHostPort(%q, %d) = %q, want %q", c.host, c.port, got, c.want)
		}
	}
}

func TestSignalContextEndsOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		ctx, stop := SignalContext(context.Background())
		if err := syscall.Kill(os.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("%v did not end the context", sig)
		}
		stop()
	}
}

func TestSignalContextFollowsParent(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	ctx, stop := SignalContext(parent)
	defer stop()
	if ctx.Err() != nil {
		t.Fatal("context ended before anything happened")
	}
	cancel()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("cancelling the parent did not end the context")
	}
}

func TestStopped(t *testing.T) {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	live := context.Background()
	boom := errors.New("listen: address in use")
	cases := []struct {
		name string
		ctx  context.Context
		err  error
		want string // "" for nil
	}{
		{"signal, clean stop", ended, nil, ""},
		{"signal, cancelled", ended, fmt.Errorf("serve: %w", context.Canceled), ""},
		{"signal, real error", ended, boom, boom.Error()},
		{"no signal, error", live, boom, boom.Error()},
		{"no signal, no error", live, nil, "the thing stopped without being asked to"},
	}
	for _, c := range cases {
		err := Stopped(c.ctx, "test-cmd", "the thing", c.err)
		if (c.want == "" && err != nil) || (c.want != "" && fmt.Sprint(err) != c.want) {
			t.Errorf("%s: Stopped = %v, want %q", c.name, err, c.want)
		}
	}
}
