// Package controlplane runs edge-tunnel under a real Kubernetes control
// plane: etcd, kube-apiserver whose cluster egress goes through
// edge-tunnel-server (GRPC or HTTPConnect, UNIX socket or TCP with mTLS),
// the real kubectl, metrics-server and Prometheus, and edge nodes that the
// cloud side cannot reach: each node is a network namespace whose firewall
// drops inbound connections, running edge-tunnel-agent (which dials out to
// the server) and a kubelet stand-in built on the kubelet's own streaming
// code.
//
// The Kubernetes programs come from the separate modules under e2e/tools,
// so edge-tunnel's go.mod never depends on k8s.io/kubernetes; BuildTools
// builds them once and caches them by version (see CacheDir).
//
// The tests need root (network namespaces, nftables) and run only when
// E2E_CONTROLPLANE=1, which `make e2e` (hack/e2e.sh) sets; a plain
// `go test ./...` skips them, saying so.
package controlplane

import (
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// EnableEnv is the variable that switches the tests on.
const EnableEnv = "E2E_CONTROLPLANE"

// SkipReason says why the control-plane tests cannot run here, or "".
func SkipReason() string {
	if os.Getenv(EnableEnv) != "1" {
		return fmt.Sprintf("control-plane end-to-end tests run with `make e2e` (or %s=1 as root); they build kube-apiserver once (about 5 minutes) and need network namespaces", EnableEnv)
	}
	if why := harness.NetworkTools(); why != "" {
		return why
	}
	return ""
}

// LockPath is the machine-wide lock of control-plane test runs: they share
// the edge network's names and subnet, so a second run on the same machine
// (another checkout, a developer's run next to CI) must wait, or it would
// remove the first run's namespaces.
const LockPath = "/run/lock/edge-tunnel-e2e-controlplane.lock"

// lockFile holds LockPath's descriptor for the life of the test process: a
// file that is no longer referenced is closed by its finalizer, and closing
// it would release the lock in the middle of the run.
var lockFile *os.File

// Lock takes LockPath, waiting for another run to finish. The lock goes
// with the process, so a crashed run never leaves it behind.
func Lock() error {
	f, err := os.OpenFile(LockPath, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", LockPath, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
		lockFile = f
		return nil
	}
	fmt.Fprintf(os.Stderr, "controlplane: another control-plane e2e run holds %s; waiting for it\n", LockPath)
	start := time.Now()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", LockPath, err)
	}
	fmt.Fprintf(os.Stderr, "controlplane: got %s after %s\n", LockPath, time.Since(start).Round(time.Second))
	lockFile = f
	return nil
}
