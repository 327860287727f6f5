package app

import (
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

// owner returns the owner and group of p, not following a symbolic link.
func owner(t *testing.T, p string) (uid, gid int, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return int(st.Uid), int(st.Gid), fi.Mode()
}

func socketDirArgs(dir string, uid, gid int, mode string) []string {
	return []string{"socket-dir", "--path", dir, "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid), "--mode", mode}
}

// TestSocketDirThenServe runs `socket-dir` on a directory that does not exist
// yet, for the current user, and then the real server command as that user
// with its socket in the directory: the socket appears, with --uds-mode, and
// accepts a connection. A second run changes nothing; a run after someone
// changed the mode puts it back.
func TestSocketDirThenServe(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "etc", "konnectivity-server")
	me, myGroup := os.Geteuid(), os.Getegid()
	args := socketDirArgs(dir, me, myGroup, "0750")

	out, err := clitest.Execute(t, NewCommand(), args...)
	if err != nil {
		t.Fatalf("socket-dir: %v\n%s", err, out)
	}
	if !strings.Contains(out, "owner "+strconv.Itoa(me)+":"+strconv.Itoa(myGroup)+", mode 0750 (changed)") {
		t.Errorf("socket-dir printed %q", out)
	}
	if uid, gid, mode := owner(t, dir); uid != me || gid != myGroup || !mode.IsDir() || mode.Perm() != 0o750 {
		t.Fatalf("after socket-dir: %d:%d %v, want a directory %d:%d 0750", uid, gid, mode, me, myGroup)
	}
	if out, err := clitest.Execute(t, NewCommand(), args...); err != nil || !strings.Contains(out, "(already as asked, unchanged)") {
		t.Errorf("second run: %q, %v; want unchanged", out, err)
	}
	if err := os.Chmod(dir, 0o700|fs.ModeSticky); err != nil {
		t.Fatal(err)
	}
	if out, err := clitest.Execute(t, NewCommand(), args...); err != nil || !strings.Contains(out, "(changed)") {
		t.Errorf("after a chmod: %q, %v; want changed", out, err)
	}
	if _, _, mode := owner(t, dir); mode.Perm() != 0o750 || mode&fs.ModeSticky != 0 {
		t.Errorf("mode %v after the second run, want drwxr-x---", mode)
	}

	uds := filepath.Join(dir, "konnectivity-server.socket")
	stop := startServer(t, uds)
	defer stop()
	if _, _, mode := owner(t, uds); mode&fs.ModeSocket == 0 || mode.Perm() != 0o660 {
		t.Errorf("socket mode %v, want a socket with 0660 (--uds-mode's default)", mode)
	}
	c, err := net.DialTimeout("unix", uds, 5*time.Second)
	if err != nil {
		t.Fatalf("connecting to the server's socket: %v", err)
	}
	c.Close()
}

// TestSocketDirHandsOverForRoot is the init container's case, run as root:
// a directory owned by root, with an old root-owned socket in it, goes to
// 65532:65532 with the socket, and back to root again (as the directory of
// a server that used to run as someone else).
func TestSocketDirHandsOverForRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another user")
	}
	dir := filepath.Join(t.TempDir(), "konnectivity-server")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(dir, "konnectivity-server.socket")
	ln, err := net.Listen("unix", old)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	plain := filepath.Join(dir, "notes")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	if out, err := clitest.Execute(t, NewCommand(), socketDirArgs(dir, nonroot, nonroot, "0750")...); err != nil {
		t.Fatalf("socket-dir: %v\n%s", err, out)
	}
	if uid, gid, mode := owner(t, dir); uid != nonroot || gid != nonroot || mode.Perm() != 0o750 {
		t.Errorf("directory %d:%d %v, want 65532:65532 0750", uid, gid, mode)
	}
	if uid, gid, _ := owner(t, old); uid != nonroot || gid != nonroot {
		t.Errorf("old socket %d:%d, want it handed over to 65532:65532", uid, gid)
	}
	if uid, _, _ := owner(t, plain); uid != 0 {
		t.Errorf("a file that is not a socket was handed over (owner %d)", uid)
	}

	// Now owned by 65532: a different mode needs the directory taken over
	// first, which is what keeps FOWNER out of the init container.
	if out, err := clitest.Execute(t, NewCommand(), socketDirArgs(dir, 0, 0, "0710")...); err != nil {
		t.Fatalf("socket-dir back to root: %v\n%s", err, out)
	}
	if uid, gid, mode := owner(t, dir); uid != 0 || gid != 0 || mode.Perm() != 0o710 {
		t.Errorf("directory %d:%d %v, want 0:0 0710", uid, gid, mode)
	}
}

func TestSocketDirBadInput(t *testing.T) {
	_, err := clitest.Execute(t, NewCommand(), "socket-dir", "--uid=-1", "--gid=4294967295", "--mode=0x750")
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"--path is required",
		"--uid -1: not a user ID; give a number from 0 to 4294967294",
		"--gid 4294967295: not a group ID",
		`--mode "0x750": not an octal file mode`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}

	dir := t.TempDir()
	_, _, before := owner(t, dir)
	for mode, want := range map[string]string{
		"04750": "only the permission bits (0000 to 0777)",
		"0550":  "the owner (--uid) needs write and search permission (0300)",
		"0640":  "the owner (--uid) needs write and search permission (0300)",
		"0777":  "everybody on the node could replace the socket",
	} {
		_, err := clitest.Execute(t, NewCommand(), socketDirArgs(dir, os.Geteuid(), os.Getegid(), mode)...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--mode %s: got %v, want %q", mode, err, want)
		}
	}

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o600)
	link := filepath.Join(dir, "link")
	os.Symlink(dir, link)
	for p, want := range map[string]string{
		file:                            "exists and is not a directory",
		link:                            "is a symbolic link; give the directory itself",
		filepath.Join(file, "under-it"): "under-it: not a directory",
	} {
		_, err := clitest.Execute(t, NewCommand(), socketDirArgs(p, os.Geteuid(), os.Getegid(), "0750")...)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--path %s: got %v, want %q", p, err, want)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Error("a regular file at --path was modified")
	}
	if _, _, mode := owner(t, dir); mode != before {
		t.Errorf("the symbolic link was followed: its target's mode went from %v to %v", before, mode)
	}
}

// startServer runs the real server command with its socket at uds until the
// returned function is called, which stops it and waits for it.
func startServer(t *testing.T, uds string) (stop func()) {
	t.Helper()
	pki := clitest.WritePKI(t, "server")
	ctx, cancel := context.WithCancel(context.Background())
	cmd := NewCommand()
	cmd.SetArgs([]string{
		"--uds-name=" + uds, "--server-port=0",
		"--agent-bind-address=127.0.0.1", "--agent-port=" + strconv.Itoa(clitest.FreePort(t)),
		"--cluster-cert=" + pki.Cert("server"), "--cluster-key=" + pki.Key("server"), "--cluster-ca-cert=" + pki.CA(),
		"--health-port=0", "--admin-port=0",
	})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	waitFor(t, done, func() bool {
		fi, err := os.Stat(uds)
		return err == nil && fi.Mode()&os.ModeSocket != 0
	}, "the UNIX socket to appear")
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server returned %v after cancel", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("server did not stop within 15s of cancel")
		}
	}
}
