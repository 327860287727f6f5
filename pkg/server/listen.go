package server

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/health"
)

// listenUnix listens on a UNIX socket with the given file mode. A socket
// file left behind by a previous run (nothing accepts on it) is removed; one
// that a live process still serves is an error, so two servers never fight
// over one path.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
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
	return ln, nil
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
