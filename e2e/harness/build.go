// Package harness runs edge-tunnel-server and edge-tunnel-agent as real
// processes for end-to-end tests: it builds the binaries once per test
// process, makes a throwaway PKI, starts the processes on loopback with free
// ports, waits until they are ready, serves small targets behind the agent,
// and probes the processes for leaks (file descriptors, goroutines, gauges).
//
// Everything a test starts is stopped by t.Cleanup; a failed test gets the
// tail of each process's log.
package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Binaries are the executables the tests run.
type Binaries struct {
	Server string // edge-tunnel-server
	Agent  string // edge-tunnel-agent
	Proxy  string // edge-tunnel-proxy (the HTTP proxy sidecar)
	// KonnV031 and KonnV037 are e2e/konnclient linked against
	// konnectivity-client v0.31.2 (what kube-apiserver 1.35 links) and
	// v0.37.0 (the newest).
	KonnV031 string
	KonnV037 string
}

var build struct {
	once sync.Once
	dir  string
	bins Binaries
	err  error
}

// Build builds the binaries the first time it is called in a test process
// and returns them; later calls return the same paths. A build failure
// fails every test that asks.
func Build(t testing.TB) Binaries {
	t.Helper()
	build.once.Do(func() {
		build.bins, build.err = buildAll()
	})
	if build.err != nil {
		t.Fatalf("build e2e binaries: %v", build.err)
	}
	return build.bins
}

// Main runs the tests and removes the build directory afterwards. Use it
// from TestMain: func TestMain(m *testing.M) { harness.Main(m) }.
func Main(m interface{ Run() int }) {
	code := m.Run()
	RemoveBuild()
	os.Exit(code)
}

// RemoveBuild removes the binaries Build made. Main does it for tests;
// other programs using the harness (hack/soak) call it when done.
func RemoveBuild() {
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
}

func buildAll() (Binaries, error) {
	root, err := moduleRoot()
	if err != nil {
		return Binaries{}, err
	}
	dir, err := os.MkdirTemp("", "edge-tunnel-e2e-bin-")
	if err != nil {
		return Binaries{}, fmt.Errorf("make build directory: %w", err)
	}
	build.dir = dir
	b := Binaries{
		Server:   filepath.Join(dir, "edge-tunnel-server"),
		Agent:    filepath.Join(dir, "edge-tunnel-agent"),
		Proxy:    filepath.Join(dir, "edge-tunnel-proxy"),
		KonnV031: filepath.Join(dir, "konnclient-v031"),
		KonnV037: filepath.Join(dir, "konnclient-v037"),
	}
	konnDir := filepath.Join(root, "e2e", "konnclient")
	steps := []struct {
		dir  string
		args []string
	}{
		{root, []string{"build", "-o", b.Server, "./cmd/edge-tunnel-server"}},
		{root, []string{"build", "-o", b.Agent, "./cmd/edge-tunnel-agent"}},
		{root, []string{"build", "-o", b.Proxy, "./cmd/edge-tunnel-proxy"}},
		// konnclient is its own module so that its konnectivity-client
		// version is not raised to the main module's by MVS.
		{konnDir, []string{"build", "-o", b.KonnV031, "."}},
		{konnDir, []string{"build", "-modfile=go.v037.mod", "-o", b.KonnV037, "."}},
	}
	for _, s := range steps {
		start := time.Now()
		cmd := exec.Command("go", s.args...)
		cmd.Dir = s.dir
		cmd.Env = append(os.Environ(), "GOWORK=off")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return Binaries{}, fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(s.args, " "), s.dir, err, out.String())
		}
		fmt.Fprintf(os.Stderr, "harness: go %s took %s\n", strings.Join(s.args, " "), time.Since(start).Round(time.Millisecond))
	}
	return b, nil
}

// moduleRoot finds the main module's directory from the test's working
// directory (go test runs in the package directory).
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module (go env GOMOD is %q); run the tests from the edge-tunnel checkout", gomod)
	}
	return filepath.Dir(gomod), nil
}
