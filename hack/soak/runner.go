package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// runner stands in for the testing.TB that e2e/harness's helpers take, so
// the soak starts the server, agents and targets exactly as the end-to-end
// tests do. testing.TB has an unexported method and can only be satisfied
// by embedding it; the embedded value stays nil and every method of Go
// 1.26's testing.TB is implemented here, so a harness call never reaches it.
//
// Cleanups run last-in first-out, as in a test. A fatal error runs them and
// exits with status 1; it must come from the goroutine that owns the runner
// (harness calls Fatal only from the caller's goroutine).
type runner struct {
	testing.TB

	ctx    context.Context
	dir    string // parent of every TempDir, kept when the run failed
	mu     sync.Mutex
	failed bool
	undo   []func()
}

func newRunner(ctx context.Context) (*runner, error) {
	dir, err := os.MkdirTemp("", "edge-tunnel-soak-")
	if err != nil {
		return nil, fmt.Errorf("make the soak's work directory: %w", err)
	}
	return &runner{ctx: ctx, dir: dir}, nil
}

// finish runs the cleanups and removes the binaries harness.Build made,
// then the work directory, unless the run failed: then it says where the
// process logs are.
func (r *runner) finish() {
	r.mu.Lock()
	undo := r.undo
	r.undo = nil
	r.mu.Unlock()
	for i := len(undo) - 1; i >= 0; i-- {
		undo[i]()
	}
	harness.RemoveBuild()
	if r.Failed() {
		fmt.Fprintf(os.Stderr, "soak: process logs kept in %s\n", r.dir)
		return
	}
	os.RemoveAll(r.dir)
}

func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.undo = append(r.undo, f)
}

func (r *runner) Helper() {}

func (r *runner) Log(args ...any) { r.Output().Write([]byte("soak: " + fmt.Sprintln(args...))) }

func (r *runner) Logf(format string, args ...any) {
	fmt.Fprintf(r.Output(), "soak: "+format+"\n", args...)
}

func (r *runner) Error(args ...any) { r.Fail(); r.Log(args...) }

func (r *runner) Errorf(format string, args ...any) { r.Fail(); r.Logf(format, args...) }

func (r *runner) Fail() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
}

func (r *runner) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *runner) FailNow() {
	r.Fail()
	r.finish()
	os.Exit(1)
}

func (r *runner) Fatal(args ...any) { r.Log(args...); r.FailNow() }

func (r *runner) Fatalf(format string, args ...any) { r.Logf(format, args...); r.FailNow() }

// Skipping makes no sense outside a test: treat it as fatal.
func (r *runner) Skip(args ...any)                 { r.Fatal(append([]any{"skip:"}, args...)...) }
func (r *runner) Skipf(format string, args ...any) { r.Fatalf("skip: "+format, args...) }
func (r *runner) SkipNow()                         { r.Fatal("skip") }
func (r *runner) Skipped() bool                    { return false }

func (r *runner) Name() string { return "soak" }

func (r *runner) TempDir() string {
	dir, err := os.MkdirTemp(r.dir, "")
	if err != nil {
		r.Fatalf("make a temp directory: %v", err)
	}
	return dir
}

func (r *runner) ArtifactDir() string { return r.TempDir() }

func (r *runner) Setenv(key, value string) {
	if err := os.Setenv(key, value); err != nil {
		r.Fatalf("setenv %s: %v", key, err)
	}
}

func (r *runner) Chdir(dir string) {
	if err := os.Chdir(dir); err != nil {
		r.Fatalf("chdir %s: %v", dir, err)
	}
}

func (r *runner) Context() context.Context { return r.ctx }

func (r *runner) Output() io.Writer { return os.Stderr }

func (r *runner) Attr(key, value string) { r.Logf("%s: %s", key, value) }
