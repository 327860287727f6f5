package app

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/component-base/cli"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

// asServerEnv makes this test binary run as edge-tunnel-server itself (its
// arguments are the command's), so that a test can start the real command
// as another process with the user and capabilities a pod would give it.
const asServerEnv = "EDGE_TUNNEL_TEST_AS_SERVER"

func TestMain(m *testing.M) {
	if os.Getenv(asServerEnv) == "1" {
		os.Exit(cli.Run(NewCommand()))
	}
	os.Exit(m.Run())
}

// TestSocketDirWithPodPrivileges runs the base Deployment's two containers
// with the privileges they get there, by setpriv(1): socket-dir as root with
// the CHOWN capability alone and no_new_privs, then the server as 65532:65532
// with no capabilities at all. The server creates its 0660 socket in the
// directory socket-dir handed it, replacing a stale socket an earlier root
// server left there, and root (kube-apiserver) connects. As
// controls, the same server fails in the root-owned 0755 directory the
// kubelet makes, and socket-dir fails without CHOWN; a second socket-dir run
// on a directory already 65532's but with another mode needs no FOWNER.
func TestSocketDirWithPodPrivileges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run processes as other users and with chosen capabilities")
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv (util-linux) to drop capabilities")
	}

	// Everything user 65532 touches must be reachable for it: the test
	// binary (a copy outside Go's private build directory), the PKI, and
	// the socket's parent.
	base := t.TempDir()
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "edge-tunnel-server")
	copyFile(t, self, bin, 0o755)
	pki := clitest.WritePKI(t, "server")
	err = filepath.Walk(pki.Dir, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			err = os.Lchown(p, nonroot, nonroot)
		}
		return err
	})
	if err != nil {
		t.Fatalf("giving the PKI to 65532: %v", err)
	}
	if err := os.Chmod(filepath.Dir(pki.Dir), 0o755); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(base, "konnectivity-server") // as the kubelet makes it
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	uds := filepath.Join(dir, "konnectivity-server.socket")
	// What a server that ran as root and was killed leaves behind.
	stale, err := net.Listen("unix", uds)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	initCaps := []string{"--inh-caps=-all", "--bounding-set=-all,+chown", "--no-new-privs"}
	noCaps := []string{"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"}
	asServer := append([]string{"--reuid=65532", "--regid=65532", "--clear-groups"}, noCaps...)
	socketDir := []string{"socket-dir", "--path", dir, "--uid=65532", "--gid=65532", "--mode=0750"}
	serverArgs := []string{
		"--uds-name=" + uds, "--server-port=0",
		"--agent-bind-address=127.0.0.1", "--agent-port=" + strconv.Itoa(clitest.FreePort(t)),
		"--cluster-cert=" + pki.Cert("server"), "--cluster-key=" + pki.Key("server"), "--cluster-ca-cert=" + pki.CA(),
		"--health-port=0", "--admin-port=0",
	}
	command := func(privs, args []string) *exec.Cmd {
		cmd := exec.Command(setpriv, append(append(privs, "--", bin), args...)...)
		cmd.Env = append(os.Environ(), asServerEnv+"=1")
		return cmd
	}
	run := func(privs, args []string) (string, error) {
		out, err := command(privs, args).CombinedOutput()
		return string(out), err
	}

	// Controls: the non-root server cannot use the kubelet's directory, and
	// socket-dir cannot hand it over without CHOWN.
	// (The stale root-owned socket is refused first: 65532 may not even
	// check it.)
	if out, err := run(asServer, serverArgs); err == nil || !strings.Contains(out, "--uds-name "+uds+": checking for a stale socket") || !strings.Contains(out, "permission denied") {
		t.Fatalf("server as 65532 in a root-owned directory: %v, want permission denied on the socket:\n%s", err, out)
	}
	if out, err := run(noCaps, socketDir); err == nil || !strings.Contains(out, "changing its owner to 65532:65532") || !strings.Contains(out, "operation not permitted") {
		t.Fatalf("socket-dir without CHOWN: %v, want it refused:\n%s", err, out)
	}

	// The init container.
	if out, err := run(initCaps, socketDir); err != nil || !strings.Contains(out, "(changed)") {
		t.Fatalf("socket-dir with CHOWN alone: %v\n%s", err, out)
	}
	// Someone changed the mode of the now 65532-owned directory: putting it
	// back must still need nothing but CHOWN.
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := run(initCaps, socketDir); err != nil || !strings.Contains(out, "(changed)") {
		t.Fatalf("socket-dir with CHOWN alone, on a directory it does not own: %v\n%s", err, out)
	}
	if out, err := run(initCaps, socketDir); err != nil || !strings.Contains(out, "(already as asked, unchanged)") {
		t.Fatalf("socket-dir with CHOWN alone, a third time: %v, want unchanged\n%s", err, out)
	}
	if uid, gid, mode := owner(t, dir); uid != nonroot || gid != nonroot || mode.Perm() != 0o750 {
		t.Fatalf("directory %d:%d %v after socket-dir, want 65532:65532 0750", uid, gid, mode)
	}

	// The server.
	var logs bytes.Buffer
	srv := command(asServer, serverArgs)
	srv.Stdout, srv.Stderr = &logs, &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("server as 65532 exited with %v after SIGTERM:\n%s", err, logs.String())
			}
		case <-time.After(15 * time.Second):
			srv.Process.Kill()
			t.Errorf("server as 65532 did not stop within 15s of SIGTERM")
		}
	}()
	// Root (kube-apiserver) connects; the stale socket would refuse.
	for deadline := time.Now().Add(30 * time.Second); ; {
		c, err := net.DialTimeout("unix", uds, time.Second)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("server as 65532 exited (%v) before root could connect:\n%s", err, logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("root could not connect to the socket of the server running as 65532 within 30s: %v", err)
		}
	}
	if uid, gid, mode := owner(t, uds); uid != nonroot || gid != nonroot || mode.Perm() != 0o660 {
		t.Errorf("socket %d:%d %v, want 65532:65532 0660", uid, gid, mode)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}
