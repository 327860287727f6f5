package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
	"github.com/edge-tunnel/edge-tunnel/pkg/agentauth"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// TestRogueAgentIsRefused: an agent with a valid certificate for node-a
// that claims node-b's name or address is refused with PermissionDenied
// naming both sides, counted, and never becomes a route: dials for node-b
// keep going to node-b's real agent, also while the rogue keeps trying.
func TestRogueAgentIsRefused(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{connStreams: true, registry: reg, agentIdentity: &agentauth.Binder{}})
	regA, regB, regRogue := prometheus.NewRegistry(), prometheus.NewRegistry(), prometheus.NewRegistry()
	startAgent(t, e, "node-a", true, regA, "127.0.0.2")
	startAgent(t, e, "node-b", true, regB, "127.0.0.3")
	target := echoServerOn(t, "127.0.0.3:0")
	_, port, _ := net.SplitHostPort(target)

	rogueTLS := e.nodeTLS(t, "system:node:node-a", "127.0.0.2")
	for _, tc := range []struct {
		name, agentID, idents string
		reason, want          string
	}{
		{"node-b's name as agent ID", "node-b", "host=node-b", "host",
			"certificate proves node(s) [node-a], agent claims host node-b"},
		{"node-b's name as a host identifier", "node-a", "host=node-a&host=NODE-B", "host",
			"certificate proves node(s) [node-a], agent claims host NODE-B"},
		{"node-b's address", "node-a", "host=node-a&ipv4=127.0.0.3", "address",
			"certificate proves node(s) [node-a, 127.0.0.2], agent claims address 127.0.0.3"},
		{"a network", "node-a", "host=node-a&cidr=127.0.0.0/8", "network", "agent claims cidr 127.0.0.0/8"},
		{"the default route", "node-a", "host=node-a&default-route=true", "network", "agent claims the default route"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := metricValue(t, reg, "edge_tunnel_server_agent_identity_refusals_total", "reason", tc.reason)
			err := connectRaw(t, e.agentAdr, rogueTLS, tc.agentID, tc.idents)
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v; want PermissionDenied saying %q", err, tc.want)
			}
			if after := metricValue(t, reg, "edge_tunnel_server_agent_identity_refusals_total", "reason", tc.reason); after != before+1 {
				t.Errorf("refusals{reason=%s} went from %v to %v, want one more", tc.reason, before, after)
			}
		})
	}
	t.Run("own name and address are accepted", func(t *testing.T) {
		if err := connectRaw(t, e.agentAdr, rogueTLS, "node-a", "host=node-a&ipv4=127.0.0.2"); err != nil {
			t.Fatalf("the certificate's own node was refused: %v", err)
		}
	})
	t.Run("a certificate without a node name", func(t *testing.T) {
		err := connectRaw(t, e.agentAdr, e.nodeTLS(t, "agent"), "node-a", "host=node-a")
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "names no node") {
			t.Fatalf("got %v; want PermissionDenied saying the certificate names no node", err)
		}
	})

	// A real agent that keeps claiming node-b with node-a's certificate.
	ids, err := identity.Parse("host=node-b&ipv4=127.0.0.3")
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := agent.New(agent.Config{ServerAddr: e.agentAdr, TLS: rogueTLS, AgentID: "node-b", Identifiers: ids,
		SyncInterval: 20 * time.Millisecond, SyncIntervalCap: 50 * time.Millisecond, ConnStreams: true, Mux: true, Registry: regRogue})
	if err != nil {
		t.Fatal(err)
	}
	before := metricValue(t, reg, "edge_tunnel_server_agent_identity_refusals_total", "reason", "host")
	runUntilCleanup(t, rogue.Run)
	waitFor(t, "the rogue agent refused twice", func() bool {
		return metricValue(t, reg, "edge_tunnel_server_agent_identity_refusals_total", "reason", "host") >= before+2
	})

	const dials = 6
	for i := range dials {
		host := "127.0.0.3"
		if i%2 == 1 {
			host = "node-b"
		}
		if err := echoOnce(e, net.JoinHostPort(host, port)); err != nil {
			t.Fatalf("dial %d to %s: %v", i, host, err)
		}
	}
	if n := metricValue(t, regB, "edge_tunnel_agent_dials_total", "result", "ok"); n != dials {
		t.Errorf("node-b's agent made %v dials, want all %d", n, dials)
	}
	if n := metricValue(t, regA, "edge_tunnel_agent_dials_total", "result", "ok"); n != 0 {
		t.Errorf("node-a's agent made %v dials, want none", n)
	}
	if n, _ := gather(t, regRogue, "edge_tunnel_agent_dials_total"); n != 0 {
		t.Errorf("the rogue agent was asked for %v dials, want none", n)
	}
	if n := metricValue(t, reg, "edge_tunnel_server_connected_agents"); n != 2 {
		t.Errorf("%v agents connected, want 2 (node-a and node-b, not the rogue)", n)
	}
}

// connectRaw opens AgentService.Connect with tlsCfg and the given metadata
// and returns the stream's error: nil once the server sent its handshake
// header (it has registered the agent), the refusal otherwise.
func connectRaw(t *testing.T, addr string, tlsCfg *tls.Config, agentID, idents string) error {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), promptly)
	defer cancel()
	md := metadata.Pairs(agentpb.AgentIDKey, agentID, agentpb.AgentIdentifiersKey, idents)
	s, err := agentpb.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		return err
	}
	hdr, err := s.Header()
	if err != nil {
		return err
	}
	if hdr == nil {
		// Ended without a header: the status comes with the stream's end.
		_, err := s.Recv()
		return err
	}
	return nil
}

// echoOnce dials address through the UNIX socket frontend and checks that
// what it sends comes back, within promptly.
func echoOnce(e *env, address string) error {
	ctx, cancel := context.WithTimeout(context.Background(), promptly)
	defer cancel()
	c, err := e.dialGRPC(ctx, address)
	if err != nil {
		return err
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		if _, err := io.WriteString(c, "ping"); err != nil {
			done <- err
			return
		}
		got := make([]byte, 4)
		if _, err := io.ReadFull(c, got); err != nil {
			done <- err
			return
		}
		if string(got) != "ping" {
			done <- fmt.Errorf("read %q, want the echo of %q", got, "ping")
			return
		}
		done <- nil
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no echo within %v", promptly)
	}
}
