package controlplane

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// TokenAgentOptions tune StartTokenAgent.
type TokenAgentOptions struct {
	// TokenFile is the agent's --service-account-token-path.
	TokenFile string
	// Name is --agent-id and the host= identifier; IPv4 the ipv4=
	// identifier. They default to the node's name and address: a rogue
	// agent claims another node's.
	Name string
	IPv4 string
	// NoWait returns at once instead of waiting for the agent's /readyz,
	// for an agent the server is expected to refuse.
	NoWait bool
}

// StartTokenAgent starts an edge-tunnel-agent in n's namespace that
// authenticates with a ServiceAccount token only, as the DaemonSet does
// with a projected token: TLS to the server verified with the cluster CA,
// no client certificate. It does not replace n.Agent.
func (c *Cluster) StartTokenAgent(t testing.TB, n *Node, opts TokenAgentOptions) *harness.Agent {
	t.Helper()
	if opts.Name == "" {
		opts.Name = n.Name
	}
	if opts.IPv4 == "" {
		opts.IPv4 = n.Addr.String()
	}
	serverHost, agentPort, err := net.SplitHostPort(c.Server.AgentAddr)
	if err != nil {
		t.Fatalf("server agent address %q: %v", c.Server.AgentAddr, err)
	}
	ports := harness.FreePorts(t, 2)
	a := &harness.Agent{
		Name:      opts.Name,
		IPv4:      opts.IPv4,
		HealthURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		AdminURL:  fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
	}
	bin, args := n.Command(c.bins.Agent,
		"--proxy-server-host", serverHost,
		"--proxy-server-port", agentPort,
		"--ca-cert", c.tunnelPKI.ClusterCA,
		"--service-account-token-path", opts.TokenFile,
		"--agent-id", opts.Name,
		"--agent-identifiers", "host="+opts.Name+"&ipv4="+opts.IPv4,
		"--drain-grace", "1s",
		"--health-bind-address", "127.0.0.1",
		"--health-server-port", strconv.Itoa(ports[0]),
		"--admin-server-port", strconv.Itoa(ports[1]),
		"--sync-interval", "200ms",
		"--sync-interval-cap", "1s",
		"-v", "2",
	)
	a.Process = harness.StartProcess(t, "token-agent-"+n.Name+"-as-"+opts.Name, t.TempDir(), bin, args...)
	if opts.NoWait {
		return a
	}
	client := n.HTTPClient(time.Second)
	err = poll(harness.ReadyTimeout, 100*time.Millisecond, func() (bool, error) {
		if a.Exited() {
			return false, fmt.Errorf("the agent exited")
		}
		resp, err := client.Get(a.HealthURL + "/readyz")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		t.Fatalf("token agent %s on %s not ready: %v\n%s", opts.Name, n.Name, err, a.LogTail(40))
	}
	return a
}

// AgentPortCA is the CA file that verifies the server's agent port (the
// agents' --ca-cert).
func (c *Cluster) AgentPortCA() string { return c.tunnelPKI.ClusterCA }
