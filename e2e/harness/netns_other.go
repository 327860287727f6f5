//go:build !linux

package harness

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"testing"
	"time"
)

// Edge networks are network namespaces, which only Linux has; elsewhere
// these stand-ins let the package build and report why.

type EdgeNetwork struct {
	Prefix   string
	Subnet   netip.Prefix
	HostAddr netip.Addr
}

type EdgeNode struct {
	Name  string
	Netns string
	Addr  netip.Addr
}

func NetworkTools() string { return "edge networks need Linux network namespaces" }

func NewEdgeNetwork(t testing.TB, prefix, subnet string) *EdgeNetwork {
	t.Helper()
	t.Fatal(NetworkTools())
	return nil
}

func (n *EdgeNetwork) AddNode(t testing.TB, name string) *EdgeNode {
	t.Helper()
	t.Fatal(NetworkTools())
	return nil
}

func (e *EdgeNode) Command(bin string, args ...string) (string, []string) { return bin, args }

func (e *EdgeNode) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New(NetworkTools())
}

func (e *EdgeNode) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: e.DialContext}}
}

// DieWithTestProcess is a no-op: only Linux has a parent-death signal.
func DieWithTestProcess(*exec.Cmd) {}

func RemoveEdgeNetwork(prefix string) string { return "" }
