package server_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

func TestAgentPortBadInput(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, envOptions{connStreams: true, registry: reg})
	e.addAgent(t, "node-a", true, "127.0.0.1")
	target := echoServer(t)
	by := newBystander(t, e, target)

	t.Run("handshake metadata", func(t *testing.T) {
		const id, ids = agentpb.AgentIDKey, agentpb.AgentIdentifiersKey
		for _, tc := range []struct {
			name string
			md   metadata.MD
			want []string
		}{
			{"no agentID", metadata.Pairs(ids, "host=bad-agent"), []string{"agentID", "got 0"}},
			{"empty agentID", metadata.Pairs(id, ""), []string{"agentID"}},
			{"two agentIDs", metadata.Pairs(id, "bad-agent", id, "bad-agent-2"), []string{"agentID", "got 2"}},
			{"bad ipv4", metadata.Pairs(id, "bad-agent", ids, "host=bad-agent&ipv4=999.1.1.1"), []string{"ipv4", "999.1.1.1"}},
			{"bad host", metadata.Pairs(id, "bad-agent", ids, "host=bad_agent"), []string{"host", "bad_agent"}},
			{"bad cidr", metadata.Pairs(id, "bad-agent", ids, "cidr=10.0.0.0"), []string{"cidr", "10.0.0.0"}},
			{"two agentIdentifiers", metadata.Pairs(id, "bad-agent", ids, "host=a", ids, "host=b"), []string{"agentIdentifiers", "at most one"}},
		} {
			s := openAgentStream(t, agentClient(t, e), tc.md)
			s.expectEnd(t, codes.InvalidArgument, tc.want...)
		}
		// None of them was registered.
		if _, err := e.dialGRPC(context.Background(), "bad-agent:1"); err == nil || !strings.Contains(err.Error(), "no edge-tunnel-agent is connected") {
			t.Fatalf("a dial to bad-agent got %v, want no agent connected", err)
		}
		by.check(t)
	})

	t.Run("rogue agent packets", func(t *testing.T) {
		before, _ := gather(t, reg, "edge_tunnel_server_bad_packets_total", "source", "agent") // no series before the first
		rogue := openAgentStream(t, agentClient(t, e),
			metadata.Pairs(agentpb.AgentIDKey, "rogue", agentpb.AgentIdentifiersKey, "host=rogue-node"))
		isCloseReq := func(id int64) func(*client.Packet) bool {
			return func(pkt *client.Packet) bool {
				return pkt.Type == client.PacketType_CLOSE_REQ && pkt.GetCloseRequest().GetConnectID() == id
			}
		}
		// DATA for a connection the server never had: it asks the agent to
		// close it.
		rogue.send(t, dataPkt(777, []byte("stray")))
		rogue.await(t, "CLOSE_REQ 777", isCloseReq(777))
		// Packets that are unknown, malformed or for the other direction
		// are counted and ignored; a successful answer to a dial nobody
		// asked for is closed at once.
		rogue.send(t,
			&client.Packet{Type: 99},
			&client.Packet{Type: client.PacketType_DATA},
			&client.Packet{Type: client.PacketType_DIAL_RSP},
			dialReq(1, "tcp", "node-a:80"),
			closeReq(1),
			closeRsp(4242, ""),
			dialRsp(31337, 0, "an error for a dial nobody made"),
			dialRsp(31338, 5, ""),
		)
		rogue.await(t, "CLOSE_REQ 5 for the unasked DIAL_RSP", isCloseReq(5))
		// The rogue's stream is still served, and is the only one affected.
		rogue.send(t, dataPkt(778, nil))
		rogue.await(t, "CLOSE_REQ 778", isCloseReq(778))
		if rogue.ended() {
			t.Fatalf("the server ended the rogue's stream: %v", rogue.err)
		}
		if d := metricValue(t, reg, "edge_tunnel_server_bad_packets_total", "source", "agent") - before; d < 7 {
			t.Errorf("bad_packets_total{source=agent} rose by %v, want at least 7", d)
		}
		by.check(t)
	})

	t.Run("ConnService stream", func(t *testing.T) {
		cc := agentClient(t, e)
		openAgentStream(t, cc, metadata.Pairs(agentpb.AgentIDKey, "prober", agentpb.AgentIdentifiersKey, "host=prober"))
		conn := func(cc *grpc.ClientConn, md metadata.MD) error {
			ctx, cancel := context.WithTimeout(context.Background(), promptly)
			defer cancel()
			cs, err := agentpb.NewConnServiceClient(cc).Conn(metadata.NewOutgoingContext(ctx, md))
			if err != nil {
				return err
			}
			_, err = cs.Recv()
			return err
		}
		md := func(id, dialID string) metadata.MD {
			return metadata.Pairs(agentpb.AgentIDKey, id, agentpb.DialIDKey, dialID)
		}
		// The control stream is registered just after its header is sent.
		var err error
		waitFor(t, "the prober's control stream", func() bool {
			err = conn(cc, md("prober", "12345"))
			return status.Code(err) != codes.FailedPrecondition
		})
		checkStatus(t, err, codes.NotFound, "12345", "not pending")

		checkStatus(t, conn(cc, nil), codes.InvalidArgument, agentpb.AgentIDKey, agentpb.DialIDKey)
		checkStatus(t, conn(cc, metadata.Pairs(agentpb.AgentIDKey, "prober")), codes.InvalidArgument, agentpb.DialIDKey)
		checkStatus(t, conn(cc, md("prober", "twelve")), codes.InvalidArgument, agentpb.DialIDKey)
		// Another TCP connection, or another agent's ID on this one, cannot
		// claim dials of the prober's control stream.
		checkStatus(t, conn(agentClient(t, e), md("prober", "12345")), codes.FailedPrecondition, "prober", "Connect")
		checkStatus(t, conn(cc, md("node-a", "12345")), codes.FailedPrecondition, "node-a")
		by.check(t)
	})

	t.Run("MuxService stream", func(t *testing.T) {
		cc := agentClient(t, e)
		openAgentStream(t, cc, metadata.Pairs(agentpb.AgentIDKey, "mux-prober", agentpb.AgentIdentifiersKey, "host=mux-prober"))
		open := func(cc *grpc.ClientConn, id string) (agentpb.MuxService_MuxClient, context.CancelFunc) {
			ctx, cancel := context.WithTimeout(context.Background(), promptly)
			if id != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, agentpb.AgentIDKey, id)
			}
			ms, err := agentpb.NewMuxServiceClient(cc).Mux(ctx)
			if err != nil {
				cancel()
				t.Fatal(err)
			}
			return ms, cancel
		}
		refused := func(cc *grpc.ClientConn, id string) error {
			ms, cancel := open(cc, id)
			defer cancel()
			_, err := ms.Recv()
			return err
		}
		checkStatus(t, refused(cc, ""), codes.InvalidArgument, agentpb.AgentIDKey)
		// Another TCP connection, or another agent's ID on this one, may
		// not hold a mux stream: no control stream proved who it is.
		checkStatus(t, refused(agentClient(t, e), "mux-prober"), codes.FailedPrecondition, "mux-prober", "Connect")
		checkStatus(t, refused(cc, "node-a"), codes.FailedPrecondition, "node-a")

		// The control stream is registered just after its header is sent.
		var ms agentpb.MuxService_MuxClient
		var f *agentpb.Frame
		waitFor(t, "the mux prober's control stream", func() bool {
			var cancel context.CancelFunc
			ms, cancel = open(cc, "mux-prober")
			t.Cleanup(cancel)
			// Frames for connections that do not exist are dropped; an
			// open frame for a dial nobody made is refused with a close
			// frame; the stream goes on.
			for _, f := range []*agentpb.Frame{{Conn: 7, Data: []byte("stray")}, {Conn: 7, Credit: 100}, {Conn: 7, Close: true}, {Conn: 12345, Open: true}} {
				if err := ms.Send(f); err != nil {
					break // the status comes with Recv
				}
			}
			var err error
			f, err = ms.Recv()
			if status.Code(err) == codes.FailedPrecondition {
				return false
			}
			if err != nil {
				t.Fatalf("waiting for the refusal of the open frame: %v", err)
			}
			return true
		})
		if f.Conn != 12345 || !f.Close || !strings.Contains(f.Error, "not pending") {
			t.Fatalf("answer to an open frame for a dial nobody made: %v, want a close of 12345 saying it is not pending", f)
		}
		if err := ms.Send(&agentpb.Frame{Conn: 12345, Close: true}); err != nil {
			t.Fatalf("the stream ended after a refused open: %v", err)
		}
		ms.CloseSend()
		if _, err := ms.Recv(); err != io.EOF {
			t.Fatalf("after CloseSend the server should end the stream cleanly, got %v", err)
		}
		by.check(t)
	})

	t.Run("upstream-style agent", func(t *testing.T) {
		up := startUpstreamAgent(t, e, "upstream-node")
		closedBefore := up.closed()
		if got := up.hdr.Get(agentpb.ServerIDKey); len(got) != 1 || got[0] != "s1" {
			t.Fatalf("handshake serverID %q, want exactly one \"s1\"", got)
		}
		if got := up.hdr.Get(agentpb.ServerCountKey); len(got) != 1 || got[0] != "1" {
			t.Fatalf("handshake serverCount %q, want exactly one \"1\"", got)
		}
		c, err := e.dialGRPC(context.Background(), "upstream-node:443")
		if err != nil {
			t.Fatalf("dial through the upstream-style agent: %v", err)
		}
		echoRoundTrip(t, c, 1)
		echoRoundTrip(t, c, 300000) // several DATA packets each way
		closeKonn(t, c)
		waitFor(t, "the agent to see the CLOSE_REQ", func() bool { return up.closed() > closedBefore })
		if n := up.dialsFor("upstream-node:443"); n != 1 {
			t.Fatalf("the agent saw %d DIAL_REQs for upstream-node:443, want 1", n)
		}
		by.check(t)
	})
}

// ---- raw packet streams ----
