package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/health"
)

// listenUnix listens on a UNIX socket with the given file mode and, when
// group is not empty, owner group (a name or a numeric gid). A socket file
// left behind by a previous run (nothing accepts on it) is removed; one that
// a live process still serves is an error, so two servers never fight over
// one path.
//
// Whoever can open the socket can dial into every edge node, so the mode
// may give nothing to other users; kube-apiserver gets in as the socket's
// owner, as root, or through the group.
func listenUnix(path string, mode os.FileMode, group string) (net.Listener, error) {
	if err := CheckSocketMode(mode); err != nil {
		return nil, fmt.Errorf("--uds-mode %04o: %w", mode, err)
	}
	gid := -1
	if group != "" {
		var err error
		if gid, err = LookupGroup(group); err != nil {
			return nil, fmt.Errorf("--uds-group %s: %w", group, err)
		}
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--uds-name %s exists and is not a socket; remove it or choose another path", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("--uds-name %s: another process is serving this socket; stop it or choose another path", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--uds-name %s: checking for a stale socket: %w", path, err)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--uds-name %s: removing the stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on the UNIX socket %s: %w", path, err)
	}
	// The socket is removed explicitly on shutdown; net's automatic unlink
	// would also remove a socket a successor has already replaced.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting mode %o on the UNIX socket %s: %w", mode, path, err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			ln.Close()
			os.Remove(path)
			return nil, fmt.Errorf("setting group %s (gid %d) on the UNIX socket %s: %w; the server must run as root (or with CAP_CHOWN) or be a member of that group", group, gid, path, err)
		}
	}
	return ln, nil
}

// CheckSocketMode accepts permission bits that give other users nothing:
// anyone who can connect to the frontend socket can dial into every edge
// node.
func CheckSocketMode(mode os.FileMode) error {
	if mode&^os.ModePerm != 0 {
		return errors.New("only permission bits (at most 0777) are allowed")
	}
	if mode&0o007 != 0 {
		return fmt.Errorf("the last digit gives every local user access to the socket, and so a way into every edge node; use 0660 (owner and --uds-group) or 0600, and give kube-apiserver access through --uds-group")
	}
	return nil
}

// maxGID is the largest valid group ID; (gid_t)-1 means "no change".
const maxGID = 1<<32 - 2

// LookupGroup resolves a group name (from the host's group database,
// /etc/group in the container) or a numeric gid.
func LookupGroup(group string) (int, error) {
	if n, err := strconv.ParseInt(group, 10, 64); err == nil {
		if n < 0 || n > maxGID {
			return -1, fmt.Errorf("gid %d is out of range (0 to %d)", n, maxGID)
		}
		return int(n), nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return -1, fmt.Errorf("no group named %q here (%v); give a numeric gid, which need not exist in the server's /etc/group", group, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return -1, fmt.Errorf("group %q has gid %q, which is not a number", group, g.Gid)
	}
	return gid, nil
}

// healthHandler serves the health port. Ready means every listener is up;
// a port configuration that cannot be read is a non-failing detail.
// Connected agents are reported (edge_tunnel_server_connected_agents) but
// not required: a server with no agents yet must still be in the load
// balancer to receive them.
func (s *Server) healthHandler() http.Handler {
	ready := []health.Check{{Name: "listeners", Fn: func(*http.Request) error {
		if !s.Ready() {
			return errors.New("listeners are not up (starting or shutting down)")
		}
		return nil
	}}, s.portsCheck()}
	return health.Handler(nil, ready, s.reg)
}
