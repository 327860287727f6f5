package ha_test

import (
	"encoding/csv"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// haproxy is a running HAProxy in TCP mode in front of the servers: one
// frontend for agents (to the servers' agent ports) and one for cloud
// clients (to their TCP frontends). TLS passes through untouched, so the
// servers see the agents' and clients' own certificates. A replica gets new
// connections only while its /readyz answers 200.
type haproxy struct {
	*harness.Process
	// AgentAddr is the agents' frontend on loopback; NodeAgentAddr the
	// same frontend on the edge network's host address (empty without an
	// edge network).
	AgentAddr     string
	NodeAgentAddr string
	// FrontendAddr balances cloud clients over the servers' TCP frontends.
	FrontendAddr string
	statsURL     string
}

// Backend names in the configuration and in the statistics.
const (
	agentBackend    = "agent-ports"
	frontendBackend = "frontends"
)

// haproxyBinary returns the haproxy executable, or skips the test.
func haproxyBinary(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy not found: install the Debian package haproxy (hack/test.sh does when it runs as root)")
	}
	return p
}

// haproxyConfig is the whole configuration. Health checks ask each
// replica's /readyz, which fails from SIGTERM on, so a replica that is
// shutting down gets no new connection; a connection refused anyway is
// retried on another replica (redispatch). Idle timeouts are long: agent
// connections are idle between keepalive pings for as long as a node has
// no traffic.
const haproxyConfig = `global
    nbthread 1
    maxconn 4096
    log stdout format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    option redispatch 1
    retries 3
    timeout connect 1s
    timeout client 1h
    timeout server 1h
    timeout check 1s
    default-server inter 250ms fall 2 rise 1

frontend agents
%s    default_backend ` + agentBackend + `

backend ` + agentBackend + `
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
%s
frontend clients
    bind %s
    default_backend ` + frontendBackend + `

backend ` + frontendBackend + `
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
%s
listen stats
    mode http
    bind %s
    stats enable
    stats uri /stats
`

// startHAProxy writes the configuration to a temp dir, checks it with
// haproxy -c, starts haproxy in the foreground and waits until it counts
// every replica as up in both backends. nodeHost, when set, is a second
// address for the agents' frontend (the edge network's host address).
func startHAProxy(t *testing.T, servers []*harness.Server, nodeHost string) *haproxy {
	t.Helper()
	bin := haproxyBinary(t)
	ports := harness.FreePorts(t, 3)
	lb := &haproxy{
		AgentAddr:    net.JoinHostPort("127.0.0.1", fmt.Sprint(ports[0])),
		FrontendAddr: net.JoinHostPort("127.0.0.1", fmt.Sprint(ports[1])),
	}
	statsAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(ports[2]))
	lb.statsURL = "http://" + statsAddr + "/stats;csv"
	binds := fmt.Sprintf("    bind %s\n", lb.AgentAddr)
	if nodeHost != "" {
		lb.NodeAgentAddr = net.JoinHostPort(nodeHost, fmt.Sprint(ports[0]))
		binds += fmt.Sprintf("    bind %s\n", lb.NodeAgentAddr)
	}
	var agentServers, frontendServers strings.Builder
	for _, s := range servers {
		u, err := url.Parse(s.HealthURL)
		if err != nil {
			t.Fatalf("health URL %q: %v", s.HealthURL, err)
		}
		name := serverName(s)
		fmt.Fprintf(&agentServers, "    server %s %s check port %s\n", name, s.AgentAddr, u.Port())
		fmt.Fprintf(&frontendServers, "    server %s %s check port %s\n", name, s.FrontendAddr, u.Port())
	}
	cfg := fmt.Sprintf(haproxyConfig, binds, agentServers.String(), lb.FrontendAddr, frontendServers.String(), statsAddr)
	dir := t.TempDir()
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-c", "-f", path).CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c rejects the test's configuration: %v\n%s\nconfiguration:\n%s", err, out, cfg)
	}
	lb.Process = harness.StartProcess(t, "haproxy", dir, bin, "-db", "-f", path)
	for _, s := range servers {
		lb.waitStatus(t, s, "UP")
	}
	return lb
}

// serverName is a replica's name in HAProxy: its --server-id.
func serverName(s *harness.Server) string { return strings.TrimPrefix(s.Name, "server-") }

// status returns HAProxy's view ("UP", "DOWN", ...) of every server of
// every backend, keyed "backend/server".
func (lb *haproxy) status() (map[string]string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(lb.statsURL)
	if err != nil {
		return nil, fmt.Errorf("haproxy statistics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("haproxy statistics: GET %s: %s", lb.statsURL, resp.Status)
	}
	r := csv.NewReader(resp.Body)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		return nil, fmt.Errorf("haproxy statistics: read CSV: %v (%d rows)", err, len(rows))
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[strings.TrimPrefix(strings.TrimSpace(name), "# ")] = i
	}
	px, sv, st := col["pxname"], col["svname"], col["status"]
	if st == 0 {
		return nil, fmt.Errorf("haproxy statistics: no status column in %q", rows[0])
	}
	out := map[string]string{}
	for _, row := range rows[1:] {
		if len(row) > st {
			out[row[px]+"/"+row[sv]] = row[st]
		}
	}
	return out, nil
}

// waitStatus waits until HAProxy counts replica s as want in both backends.
func (lb *haproxy) waitStatus(t *testing.T, s *harness.Server, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		if lb.Exited() {
			t.Fatalf("haproxy exited\n%s", lb.LogTail(30))
		}
		st, err := lb.status()
		if err == nil {
			a, f := st[agentBackend+"/"+serverName(s)], st[frontendBackend+"/"+serverName(s)]
			if a == want && f == want {
				return
			}
			last = fmt.Sprintf("%s: %s, %s: %s", agentBackend, a, frontendBackend, f)
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("haproxy does not count %s as %s within 10 s (%s)", serverName(s), want, last)
}
