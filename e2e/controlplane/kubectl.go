package controlplane

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// Kubectl runs the real kubectl against one kube-apiserver.
type Kubectl struct {
	Bin        string
	Kubeconfig string
}

// Result is one finished kubectl run.
type Result struct {
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int // -1: killed or not started
	Elapsed  time.Duration
	Err      error // nil when kubectl ran and exited (with any code)
}

// String describes the run for test failure messages.
func (r Result) String() string {
	return fmt.Sprintf("kubectl %s\n  exit code %d after %s (err: %v)\n  stdout: %q\n  stderr: %q",
		strings.Join(r.Args, " "), r.ExitCode, r.Elapsed.Round(time.Millisecond), r.Err, r.Stdout, r.Stderr)
}

// RunOptions tune one kubectl run.
type RunOptions struct {
	Stdin   string
	Env     []string // added to the environment, e.g. "KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false"
	Timeout time.Duration
}

// Run runs kubectl with args and waits for it, killing it after the
// timeout (default 60 s).
func (k *Kubectl) Run(opts RunOptions, args ...string) Result {
	if opts.Timeout == 0 {
		opts.Timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	defer cancel()
	cmd := k.command(ctx, opts.Env, args...)
	if opts.Stdin != "" {
		cmd.Stdin = strings.NewReader(opts.Stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := Result{Args: args, Stdout: stdout.String(), Stderr: stderr.String(), Elapsed: time.Since(start), ExitCode: -1}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		r.Err = fmt.Errorf("killed after the %s timeout", opts.Timeout)
	case errors.As(err, &exitErr):
		r.ExitCode = exitErr.ExitCode()
	case err != nil:
		r.Err = err
	default:
		r.ExitCode = 0
	}
	return r
}

// MustRun runs kubectl and fails the test unless it exits 0.
func (k *Kubectl) MustRun(t testing.TB, args ...string) Result {
	t.Helper()
	r := k.Run(RunOptions{}, args...)
	if r.Err != nil || r.ExitCode != 0 {
		t.Fatalf("%s", r)
	}
	return r
}

// Apply pipes manifest into kubectl apply -f -.
func (k *Kubectl) Apply(t testing.TB, manifest string) {
	t.Helper()
	r := k.Run(RunOptions{Stdin: manifest}, "apply", "-f", "-")
	if r.Err != nil || r.ExitCode != 0 {
		t.Fatalf("%s\nmanifest:\n%s", r, manifest)
	}
}

func (k *Kubectl) command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, k.Bin, append([]string{"--kubeconfig", k.Kubeconfig}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	harness.DieWithTestProcess(cmd)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Stream is a kubectl that keeps running (logs -f, port-forward) while the
// test reads its output line by line.
type Stream struct {
	Args  []string
	cmd   *exec.Cmd
	lines chan string
	done  chan struct{}
	mu    sync.Mutex
	out   []string // every line so far, stdout and stderr
	err   error
}

// Start starts kubectl with args; the test's cleanup kills it.
func (k *Kubectl) Start(t testing.TB, env []string, args ...string) *Stream {
	t.Helper()
	cmd := k.command(context.Background(), env, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	s := &Stream{Args: args, cmd: cmd, lines: make(chan string, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start kubectl %s: %v", strings.Join(args, " "), err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			s.mu.Lock()
			s.out = append(s.out, sc.Text())
			s.mu.Unlock()
			select {
			case s.lines <- sc.Text():
			default: // nobody reads; the line is still in out
			}
		}
		close(s.lines)
	}()
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.err = err
		s.mu.Unlock()
		pw.Close()
		close(s.done)
	}()
	t.Cleanup(s.Stop)
	return s
}

// WaitLine waits until a line for which match is true arrives and returns
// it. It fails the test when kubectl ends first or the timeout passes.
func (s *Stream) WaitLine(t testing.TB, timeout time.Duration, what string, match func(string) bool) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				<-s.done
				t.Fatalf("kubectl %s ended (%v) before %s; output:\n%s", strings.Join(s.Args, " "), s.Err(), what, s.Output())
			}
			if match(line) {
				return line
			}
		case <-deadline:
			t.Fatalf("kubectl %s: no %s within %s; output so far:\n%s", strings.Join(s.Args, " "), what, timeout, s.Output())
		}
	}
}

// Done is closed when kubectl has exited.
func (s *Stream) Done() <-chan struct{} { return s.done }

// Err is kubectl's exit error once it has exited.
func (s *Stream) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Output is every line kubectl printed so far.
func (s *Stream) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.out, "\n")
}

// Stop kills kubectl and waits for it.
func (s *Stream) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}
