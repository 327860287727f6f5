// Package router decides where a requested host:port goes: through which
// agent, to which address, or directly from the server, or nowhere (with the
// reason). Every frontend asks the same Router, so policy lives here once.
package router

import (
	"context"
	"io"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// Backend is an agent session that can dial for the server.
type Backend interface {
	// AgentID names the agent in messages and metrics.
	AgentID() string
	// Dial asks the agent to dial address and returns the tunneled connection.
	Dial(ctx context.Context, address string) (io.ReadWriteCloser, error)
}

// Agents finds the agent that serves a host.
type Agents interface {
	// Lookup returns the best agent for the normalized host key
	// (identity.NormalizeHost), or false when no connected agent has it.
	Lookup(hostKey string) (Backend, bool)
	// Departed reports the agent that last served the host key when none
	// serves it now, and since when: such a host is an edge node, so it is
	// refused at once rather than dialed directly (which would only time
	// out, the edge being unreachable from the cloud).
	Departed(hostKey string) (agentID string, since time.Time, ok bool)
}

// Kind says how a Route is dialed.
type Kind string

const (
	// ViaAgent: through an agent's tunnel.
	ViaAgent Kind = "agent"
	// Direct: by the server itself (cloud-side destinations).
	Direct Kind = "direct"
)

// Route is a decision for one dial.
type Route struct {
	Kind    Kind
	Address string  // what is dialed (may differ from the request, e.g. localhost rewriting)
	Agent   Backend // set when Kind is ViaAgent
	direct  *net.Dialer
	// checked: a direct dial of a name --direct-dial-allow does not
	// list, so its addresses are resolved and checked before the dial.
	checked *Router
}

// Dial opens the connection the route describes.
func (r Route) Dial(ctx context.Context) (io.ReadWriteCloser, error) {
	if r.Kind == ViaAgent {
		return r.Agent.Dial(ctx, r.Address)
	}
	if r.checked != nil {
		return r.checked.dialChecked(ctx, r.direct, r.Address)
	}
	c, err := r.direct.DialContext(ctx, "tcp", r.Address)
	if err != nil {
		if ctx.Err() != nil {
			return nil, tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-server: direct dial of %s timed out", r.Address)
		}
		return nil, tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-server: direct dial of %s failed: %v", r.Address, err)
	}
	return c, nil
}

// Router holds the routing policy.
type Router struct {
	agents     Agents
	directDial bool
	dialer     net.Dialer
	ports      atomic.Pointer[ports.Config]
	allow      *Allow // where direct dials may go; nil: anywhere
	refused    func() // counts direct dials refused by allow
}

// New returns a Router with the default port policy. directDial allows hosts
// that no agent serves to be dialed by the server itself.
func New(agents Agents, directDial bool) *Router {
	r := &Router{agents: agents, directDial: directDial, dialer: net.Dialer{KeepAlive: 30 * time.Second}}
	r.ports.Store(ports.Default())
	return r
}

// SetPorts replaces the edge-node port policy. Dials decided before keep
// their route; connections already open are not affected.
func (r *Router) SetPorts(c *ports.Config) { r.ports.Store(c) }

// Ports returns the port policy in effect.
func (r *Router) Ports() *ports.Config { return r.ports.Load() }

// Route decides where address (host:port) goes. The error is a
// *tunnel.DialError whose text is meant for the end user.
func (r *Router) Route(address string) (Route, error) {
	host, portStr, err := net.SplitHostPort(address)
	if err != nil {
		return Route{}, tunnel.Errorf(tunnel.KindBadRequest, "edge-tunnel-server: bad address %q: want host:port", address)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return Route{}, tunnel.Errorf(tunnel.KindBadRequest, "edge-tunnel-server: bad port %q in address %q: want 1-65535", portStr, address)
	}
	key := identity.NormalizeHost(host)
	if key == "" {
		return Route{}, tunnel.Errorf(tunnel.KindBadRequest, "edge-tunnel-server: empty host in address %q", address)
	}
	if b, ok := r.agents.Lookup(key); ok {
		pc := r.ports.Load()
		if !pc.Allowed(port) {
			return Route{}, tunnel.Errorf(tunnel.KindForbidden,
				"edge-tunnel-server: port %d of edge node %q is not forwarded: add %d to %q (plain HTTP) or %q (TLS) in ConfigMap kube-system/edge-tunnel-server-cfg",
				port, host, port, ports.KeyHTTP, ports.KeyHTTPS)
		}
		if pc.Loopback(port) {
			// The server, not the agent, rewrites: an upstream agent
			// dials whatever address it is sent.
			address = net.JoinHostPort("127.0.0.1", portStr)
		}
		return Route{Kind: ViaAgent, Address: address, Agent: b}, nil
	}
	if id, since, ok := r.agents.Departed(key); ok {
		return Route{}, tunnel.Errorf(tunnel.KindUnavailable,
			"edge-tunnel-server: edge-tunnel-agent %s, which serves %q, disconnected %s ago; dials to it work again once it reconnects (check the agent's pod and its logs)",
			id, host, time.Since(since).Round(time.Second))
	}
	if r.directDial {
		resolve, err := r.checkDirect(address, host)
		if err != nil {
			return Route{}, err
		}
		rt := Route{Kind: Direct, Address: address, direct: &r.dialer}
		if resolve {
			rt.checked = r
		}
		return rt, nil
	}
	return Route{}, tunnel.Errorf(tunnel.KindNoRoute,
		"edge-tunnel-server: no edge-tunnel-agent is connected for host %q: check that edge-tunnel-agent runs on that node and lists %q in its identifiers (--agent-identifiers, NODE_NAME, NODE_IP)", host, host)
}
