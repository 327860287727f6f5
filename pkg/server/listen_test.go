package server

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")

	// A socket left behind by a crashed server: nothing accepts on it.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("setup: the stale socket file should exist: %v", err)
	}

	ln, err := listenUnix(path, 0o660, "")
	if err != nil {
		t.Fatalf("a stale socket must be replaced: %v", err)
	}
	defer ln.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}

	// A live server on the path: refuse instead of stealing its socket.
	if _, err := listenUnix(path, 0o660, ""); err == nil || !strings.Contains(err.Error(), "another process is serving") {
		t.Fatalf("got %v, want a refusal naming the live socket", err)
	}

	// Not a socket: refuse, do not delete the user's file.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o600)
	if _, err := listenUnix(file, 0o660, ""); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("got %v, want a refusal saying it is not a socket", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Fatal("a regular file at --uds-name was modified")
	}
}
