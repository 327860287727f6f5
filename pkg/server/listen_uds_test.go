package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
	"github.com/edge-tunnel/edge-tunnel/pkg/server"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
)

// udsServer starts a server whose only frontend is the UNIX socket at path
// with the given mode and group. It returns nil once the server is ready
// (it runs until the test ends), or the error Run failed with.
func udsServer(t *testing.T, path string, mode os.FileMode, group string) error {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("edge-tunnel-test")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ca.Issue("server", []string{"127.0.0.1"}, pki.UsageServer)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"server": p}); err != nil {
		t.Fatal(err)
	}
	agentTLS, err := tlsutil.ServerConfig(filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key"), "")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{UDSName: path, UDSMode: mode, UDSGroup: group,
		AgentAddr: "127.0.0.1:0", AgentTLS: agentTLS, ServerID: "s1", ShutdownGrace: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !srv.Ready() {
		select {
		case err := <-done:
			cancel()
			return err
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("the server did not start within 10s")
		}
	}
	t.Cleanup(func() { cancel(); <-done })
	return nil
}

// otherGroup is a group the socket can be given that is not the test's own
// primary group: any as root, else a supplementary group of the process.
func otherGroup(t *testing.T) int {
	t.Helper()
	if os.Geteuid() == 0 {
		return 1 // daemon on Debian; a gid need not have a name
	}
	groups, _ := os.Getgroups()
	for _, g := range groups {
		if g != os.Getegid() {
			return g
		}
	}
	return os.Getegid()
}

// TestUDSModeAndGroup: the socket has --uds-mode and --uds-group once the
// server is up, given the group by number or by name; as root, a process
// of another user gets in through the group and only through it.
func TestUDSModeAndGroup(t *testing.T) {
	gid := otherGroup(t)
	groups := []string{strconv.Itoa(gid)}
	if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
		groups = append(groups, g.Name)
	}
	for _, group := range groups {
		dir := t.TempDir()
		path := filepath.Join(dir, "s.sock")
		if err := udsServer(t, path, 0o660, group); err != nil {
			t.Fatalf("--uds-group %s: %v", group, err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 || int(st.Gid) != gid {
			t.Fatalf("--uds-group %s: socket %v with gid %d, want a socket with 0660 and gid %d", group, fi.Mode(), st.Gid, gid)
		}
		if os.Geteuid() != 0 || group != groups[0] {
			continue
		}
		// A user that is not the owner: the group lets it in, nothing else does.
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		bin := helperBinary(t)
		if err := dialAs(t, bin, path, 65534, uint32(gid)); err != nil {
			t.Errorf("uid 65534 in group %d could not connect to the socket of that group: %v", gid, err)
		}
		if err := dialAs(t, bin, path, 65534, 65534); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("uid 65534 outside group %d: got %v, want permission denied", gid, err)
		}
	}
}

func TestUDSModeAndGroupRefusals(t *testing.T) {
	for _, c := range []struct {
		mode  os.FileMode
		group string
		want  string
	}{
		{0o666, "", "--uds-mode 0666: the last digit gives every local user access"},
		{0o601, "", "--uds-mode 0601: the last digit"},
		{0o660, "no-such-group-edge-tunnel", `--uds-group no-such-group-edge-tunnel: no group named "no-such-group-edge-tunnel"`},
		{0o660, "4294967295", "--uds-group 4294967295: gid 4294967295 is out of range"},
	} {
		path := filepath.Join(t.TempDir(), "s.sock")
		err := udsServer(t, path, c.mode, c.group)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("mode %04o, group %q: got %v, want an error saying %q", c.mode, c.group, err, c.want)
		}
		if _, serr := os.Lstat(path); err != nil && !errors.Is(serr, os.ErrNotExist) {
			t.Errorf("mode %04o, group %q: the refused socket was left at %s", c.mode, c.group, path)
		}
	}
}

// helperBinary copies the test binary where any user may run it.
func helperBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "server.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// dialAs connects to the socket at path as uid:gid (no supplementary
// groups) in a child process, and returns why it could not.
func dialAs(t *testing.T, bin, path string, uid, gid uint32) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^TestUDSDialHelper$")
	cmd.Env = append(os.Environ(), "EDGE_TUNNEL_UDS_DIAL="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return errors.New(strings.TrimSpace(string(out)) + ": " + err.Error())
	}
	return nil
}

// TestUDSDialHelper is the child process of dialAs; it does nothing in a
// normal run.
func TestUDSDialHelper(t *testing.T) {
	path := os.Getenv("EDGE_TUNNEL_UDS_DIAL")
	if path == "" {
		t.Skip("only run as dialAs's child process")
	}
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		os.Stdout.WriteString(err.Error() + "\n")
		os.Exit(3)
	}
	c.Close()
}
