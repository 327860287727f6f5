package server

import (
	"net"
	"strconv"

	"github.com/edge-tunnel/edge-tunnel/pkg/httpproxy"
	"github.com/edge-tunnel/edge-tunnel/pkg/router"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// proxyPolicy tells the HTTP proxy what the router and the port policy say
// about host:port: an edge node's port takes plain HTTP only when it is
// 10255 or in http-proxy-ports (TLS ports are reached with CONNECT); a host
// no agent serves is dialed directly when --direct-dial allows it, and is
// then plain HTTP as far as the proxy knows.
func (s *Server) proxyPolicy(host string, port int) httpproxy.Verdict {
	route, err := s.router.Route(net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		// Only an edge node's port is refused as forbidden.
		return httpproxy.Verdict{Refused: err, Edge: tunnel.KindOf(err) == tunnel.KindForbidden}
	}
	if route.Kind == router.Direct {
		return httpproxy.Verdict{PlainHTTP: true}
	}
	return httpproxy.Verdict{Edge: true, PlainHTTP: s.router.Ports().PlainHTTP(port)}
}
