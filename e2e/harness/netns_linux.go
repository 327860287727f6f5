package harness

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An EdgeNetwork puts edge nodes where they are in real life: each node is
// a network namespace with its own address, plugged into a bridge on the
// host, and a firewall in the namespace drops every new inbound TCP
// connection that does not come from the node itself. Processes in a node
// can dial out to the host's bridge address (where edge-tunnel-server's
// agent port listens); the host cannot dial in. The namespaces have no
// default route, so nothing in them reaches beyond the bridge's subnet.
//
// It needs root, ip (iproute2) and nft (nftables). All names start with
// the network's prefix; NewEdgeNetwork removes leftovers of a crashed
// earlier run with the same prefix, and cleanup removes everything.
type EdgeNetwork struct {
	Prefix string
	// Subnet is the bridge's subnet; HostAddr (its first address) is the
	// host's address on the bridge.
	Subnet   netip.Prefix
	HostAddr netip.Addr
	bridge   string
	nodes    []*EdgeNode
}

// EdgeNode is one node's namespace.
type EdgeNode struct {
	// Name is the node name; Netns the namespace (for `ip netns exec`).
	Name  string
	Netns string
	// Addr is the node's address on the bridge.
	Addr netip.Addr
}

// NetworkTools reports why edge networks cannot be made here, or "" when
// they can: the caller must be root and ip and nft must be installed.
func NetworkTools() string {
	if os.Geteuid() != 0 {
		return "network namespaces need root (run as root, as CI does)"
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Sprintf("%s not found: install iproute2 and nftables (hack/e2e.sh does)", tool)
		}
	}
	return ""
}

// NewEdgeNetwork makes the bridge with address subnet.Addr()+1. prefix
// names every link and namespace (at most 8 characters: link names are
// limited to 15). It refuses a subnet that overlaps any address or route
// the host already has, so the tests never capture or send traffic meant
// for somewhere else.
func NewEdgeNetwork(t testing.TB, prefix, subnet string) *EdgeNetwork {
	t.Helper()
	if why := NetworkTools(); why != "" {
		t.Fatalf("edge network: %s", why)
	}
	if len(prefix) == 0 || len(prefix) > 8 {
		t.Fatalf("edge network prefix %q: want 1 to 8 characters", prefix)
	}
	pfx, err := netip.ParsePrefix(subnet)
	if err != nil || !pfx.Addr().Is4() || pfx.Bits() > 24 {
		t.Fatalf("edge network subnet %q: want an IPv4 prefix of /24 or larger (%v)", subnet, err)
	}
	pfx = pfx.Masked()
	RemoveEdgeNetwork(prefix)
	if err := checkSubnetUnused(pfx); err != nil {
		t.Fatalf("edge network: %v", err)
	}
	n := &EdgeNetwork{Prefix: prefix, Subnet: pfx, HostAddr: pfx.Addr().Next(), bridge: prefix + "-br"}
	t.Cleanup(func() {
		if out := RemoveEdgeNetwork(prefix); out != "" {
			t.Logf("edge network cleanup: %s", out)
		}
	})
	hostCIDR := fmt.Sprintf("%s/%d", n.HostAddr, pfx.Bits())
	for _, args := range [][]string{
		{"link", "add", n.bridge, "type", "bridge"},
		{"addr", "add", hostCIDR, "dev", n.bridge},
		{"link", "set", n.bridge, "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatalf("edge network: %v", err)
		}
	}
	return n
}

// AddNode makes the namespace of node name with the next free address,
// links it to the bridge and installs its firewall.
func (n *EdgeNetwork) AddNode(t testing.TB, name string) *EdgeNode {
	t.Helper()
	i := len(n.nodes) + 1
	addr := n.HostAddr
	for range 10 + i - 1 {
		addr = addr.Next()
	}
	if !n.Subnet.Contains(addr) {
		t.Fatalf("edge network %s is full", n.Subnet)
	}
	node := &EdgeNode{Name: name, Netns: fmt.Sprintf("%s-n%d", n.Prefix, i), Addr: addr}
	hostEnd := fmt.Sprintf("%s-v%d", n.Prefix, i)
	nodeCIDR := fmt.Sprintf("%s/%d", addr, n.Subnet.Bits())
	for _, args := range [][]string{
		{"netns", "add", node.Netns},
		{"link", "add", hostEnd, "type", "veth", "peer", "name", "eth0", "netns", node.Netns},
		{"link", "set", hostEnd, "master", n.bridge, "up"},
		{"-n", node.Netns, "addr", "add", nodeCIDR, "dev", "eth0"},
		{"-n", node.Netns, "link", "set", "eth0", "up"},
		{"-n", node.Netns, "link", "set", "lo", "up"},
	} {
		if err := ip(args...); err != nil {
			t.Fatalf("edge node %s: %v", name, err)
		}
	}
	// New inbound TCP from outside the node is dropped (as behind NAT or
	// a firewall); replies to the node's own connections pass.
	const rules = `table inet edge_tunnel_e2e {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "lo" accept
    ct state established,related accept
    meta l4proto tcp ct state new drop
  }
}
`
	cmd := exec.Command("ip", "netns", "exec", node.Netns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("edge node %s: firewall: nft -f: %v: %s", name, err, out)
	}
	n.nodes = append(n.nodes, node)
	return node
}

// Command returns the command line that runs bin with args inside the
// node's namespace. `ip netns exec` execs bin in place, so the process id
// is bin's and signals reach it directly.
func (e *EdgeNode) Command(bin string, args ...string) (string, []string) {
	return "ip", append([]string{"netns", "exec", e.Netns, bin}, args...)
}

// DialContext dials from inside the node's namespace, as a process on the
// node would.
func (e *EdgeNode) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := inNetns(e.Netns, func() error {
		var err error
		conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// HTTPClient is a client whose connections start inside the node.
func (e *EdgeNode) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: e.DialContext, DisableKeepAlives: true}}
}

// inNetns runs fn on an OS thread switched into namespace ns. Sockets fn
// creates belong to ns. If the thread cannot be switched back, it stays
// locked and Go ends it with the goroutine, so no other goroutine runs in
// the wrong namespace. (Go does not spawn new threads from a locked one.)
func inNetns(ns string, fn func() error) error {
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", syscall.Gettid()))
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open own network namespace: %w", err)
	}
	defer orig.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter namespace %s: %w", ns, err)
	}
	fnErr := fn()
	if err := setns(orig); err != nil {
		return fmt.Errorf("leave namespace %s: %w (after: %v)", ns, err, fnErr)
	}
	runtime.UnlockOSThread()
	return fnErr
}

func setns(f *os.File) error {
	// The syscall package predates setns(2); its number per architecture
	// (golang.org/x/sys/unix has them, but is not a direct dependency).
	nr, ok := map[string]uintptr{"amd64": 308, "arm64": 268, "riscv64": 268, "loong64": 268, "386": 346, "arm": 375, "ppc64le": 350, "s390x": 339}[runtime.GOARCH]
	if !ok {
		return fmt.Errorf("setns: system call number for %s unknown", runtime.GOARCH)
	}
	if _, _, errno := syscall.RawSyscall(nr, f.Fd(), syscall.CLONE_NEWNET, 0); errno != 0 {
		return errno
	}
	return nil
}

// DieWithTestProcess makes the kernel kill cmd's process when the test
// process dies (a timeout panic, a kill), so no stray server outlives a run.
func DieWithTestProcess(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
}

// RemoveEdgeNetwork deletes every namespace and link whose name starts
// with prefix+"-" and returns what it could not delete ("" when all went).
// The namespaces' processes must have been stopped; a namespace with a
// process left in it disappears from `ip netns` but lives on until the
// process ends.
func RemoveEdgeNetwork(prefix string) string {
	var problems []string
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			fields := strings.Fields(line)
			if len(fields) > 0 && strings.HasPrefix(fields[0], prefix+"-") {
				if err := ip("netns", "delete", fields[0]); err != nil {
					problems = append(problems, err.Error())
				}
			}
		}
	}
	if out, err := exec.Command("ip", "-o", "link", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			// "7: et-v1@if2: <...>": the name is the second field, up to "@" or ":".
			fields := strings.Fields(line)
			if len(fields) < 2 {
				continue
			}
			name := strings.TrimSuffix(fields[1], ":")
			if at := strings.IndexByte(name, '@'); at >= 0 {
				name = name[:at]
			}
			if strings.HasPrefix(name, prefix+"-") {
				if err := ip("link", "delete", name); err != nil && !strings.Contains(err.Error(), "Cannot find device") {
					problems = append(problems, err.Error())
				}
			}
		}
	}
	return strings.Join(problems, "; ")
}

// checkSubnetUnused fails when subnet overlaps an address or a non-default
// route of the host (in any routing table).
func checkSubnetUnused(subnet netip.Prefix) error {
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		return fmt.Errorf("ip -4 addr show: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		for i, f := range fields {
			if f == "inet" && i+1 < len(fields) {
				if p, err := netip.ParsePrefix(fields[i+1]); err == nil && p.Masked().Overlaps(subnet) {
					return fmt.Errorf("subnet %s overlaps address %s of the host (%s); choose another with E2E_SUBNET", subnet, fields[i+1], fields[1])
				}
			}
		}
	}
	out, err = exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return fmt.Errorf("ip -4 route show table all: %w", err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		dst := fields[0]
		if dst == "local" || dst == "broadcast" || dst == "unicast" {
			if len(fields) < 2 {
				continue
			}
			dst = fields[1]
		}
		if dst == "default" {
			continue
		}
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil && p.Overlaps(subnet) {
			return fmt.Errorf("subnet %s overlaps route %q of the host; choose another with E2E_SUBNET", subnet, line)
		}
	}
	return nil
}

func ip(args ...string) error {
	var out bytes.Buffer
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
