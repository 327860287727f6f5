package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// The fuzz targets here feed arbitrary bytes, as gRPC messages, into the
// packet streams of a real server: an agent's control stream
// (AgentService.Connect on the agent port, over mTLS) and a client's
// ProxyService stream (the frontend's UNIX socket). The bytes reach the
// server's own codec, so undecodable messages are part of the input space.
// Each iteration opens fresh streams on connections made once, so it takes
// a few milliseconds, and every wait is bounded by promptly.
//
// An input is a sequence of messages, each a uvarint length and that many
// bytes (a length past the end takes the rest); see splitMessages.

const (
	fuzzMaxMessages = 32
	fuzzMaxMessage  = 64 << 10
)

// splitMessages cuts a fuzz input into messages.
func splitMessages(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 && len(out) < fuzzMaxMessages {
		n, k := binary.Uvarint(b)
		if k <= 0 {
			out = append(out, b) // no valid length: the rest is one message
			break
		}
		b = b[k:]
		n = min(n, uint64(len(b)), fuzzMaxMessage)
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// rawMsg is a message sent as it is, whatever its bytes.
type rawMsg []byte

// rawCodec sends rawMsg untouched and everything else as protobuf. The
// server's codec is forced on its side, so the name only has to be valid.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(rawMsg); ok {
		if len(b) == 0 {
			return nil, nil
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	b, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// rawSender is the client half of a packet stream that can send raw bytes.
type rawSender interface {
	SendMsg(any) error
}

// decode is how any protobuf peer reads a message: nil when it is not a
// Packet.
func decode(b []byte) *client.Packet {
	var p client.Packet
	if proto.Unmarshal(b, &p) != nil {
		return nil
	}
	return &p
}

func marshal(p *client.Packet) []byte {
	b, err := proto.Marshal(p)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzAgentPackets plays a rogue agent. Before the input is sent, a
// frontend client asks for a dial through the agent, so the input can
// answer it: a DIAL_RSP or DIAL_CLS whose random is 1 stands for the
// server's real, unguessable dial ID. The invariants:
//   - undecodable bytes end the stream with an error status; anything
//     decodable, whatever its type or payload, is at most ignored: the
//     stream stays up and still answers DATA for an unknown connection with
//     CLOSE_REQ;
//   - the frontend client's dial ends the way the packets say (a connection,
//     or an error), and every DATA byte the agent sent on that connection
//     reaches the client, in order;
//   - once the agent is gone, its dial and connection are failed, no
//     connection or session is left behind, and another agent's open
//     connection still carries data.
func FuzzAgentPackets(f *testing.F) {
	reg := prometheus.NewRegistry()
	e := newEnv(f, envOptions{connStreams: true, registry: reg})
	e.addAgent(f, "node-a", true, "127.0.0.1")
	by := newBystander(f, e, echoServer(f))
	cc := agentClient(f, e)
	fe := frontendClient(f, e)
	var seq atomic.Int64

	f.Fuzz(func(t *testing.T, input []byte) {
		id := fmt.Sprintf("fuzz-%d", seq.Add(1))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		md := metadata.Pairs(agentpb.AgentIDKey, id, agentpb.AgentIdentifiersKey, "host="+id)
		as, err := agentpb.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(ctx, md), grpc.ForceCodecV2(rawCodec{}))
		if err != nil {
			t.Fatalf("opening the agent stream: %v", err)
		}
		if _, err := as.Header(); err != nil {
			t.Fatalf("agent handshake: %v", err)
		}
		a := newRawStream(t, ctx, cancel, as)
		p := openProxyOn(t, fe)
		random := awaitDialReq(t, a, p, id+":81")

		// Send the input, modelling what the server makes of it.
		var m agentModel
		m.registered = map[int64]bool{}
		for _, b := range splitMessages(input) {
			pkt := decode(b)
			if pkt == nil {
				m.ended = true
			} else if changed := m.apply(pkt, random); changed != nil {
				b = changed
			}
			if as.SendMsg(rawMsg(b)) != nil || m.ended {
				break
			}
		}

		if m.ended {
			a.expectEndWithError(t)
		} else {
			// The session still reads its stream.
			probe := int64(1 << 40)
			for m.registered[probe] {
				probe++
			}
			a.send(t, dataPkt(probe, nil))
			a.await(t, "CLOSE_REQ for the unknown connection of the probe", func(pkt *client.Packet) bool {
				return pkt.Type == client.PacketType_CLOSE_REQ && pkt.GetCloseRequest().GetConnectID() == probe
			})
		}

		// The client's dial, as the packets decided it.
		var feID int64
		if m.dial != dialPending {
			rsp := p.dialRsp(t, 7)
			switch {
			case m.dial == dialOK && (rsp.Error != "" || rsp.ConnectID == 0):
				t.Fatalf("the agent answered the dial with connection %d, but the client got %+v", m.connID, rsp)
			case m.dial == dialFailed && (rsp.Error == "" || rsp.ConnectID != 0):
				t.Fatalf("the agent failed the dial, but the client got %+v", rsp)
			}
			feID = rsp.ConnectID
		}
		if m.dial == dialOK && !m.ended {
			got := p.readData(t, feID, len(m.data))
			if !bytes.Equal(got, m.data) {
				t.Fatalf("the agent sent %q on the connection, the client got %q", m.data, got)
			}
		}

		// The agent goes away: whatever it left open is failed.
		cancel()
		<-a.done
		if m.dial == dialPending {
			if rsp := p.dialRsp(t, 7); rsp.Error == "" || rsp.ConnectID != 0 {
				t.Fatalf("the agent left without answering the dial, but the client got %+v", rsp)
			}
		}
		if feID != 0 {
			p.await(t, "CLOSE_RSP after the agent left", func(pkt *client.Packet) bool {
				return pkt.Type == client.PacketType_CLOSE_RSP && pkt.GetCloseResponse().GetConnectID() == feID
			})
		}
		p.cancel()
		<-p.done
		eventually(t, "no connection and only the bystander's agent left", func() bool {
			open, _ := gather(t, reg, "edge_tunnel_server_open_connections", "frontend", "grpc")
			agents, _ := gather(t, reg, "edge_tunnel_server_connected_agents")
			return open == 1 && agents == 1 // the bystander's
		})
		echoRoundTrip(t, by.c, 100)
	})
}

type dialState int

const (
	dialPending dialState = iota
	dialOK
	dialFailed
)

// agentModel is what the server's session makes of the packets it is sent.
type agentModel struct {
	ended      bool           // an undecodable message ended the stream
	registered map[int64]bool // connection IDs the session holds
	dial       dialState      // the frontend client's dial
	connID     int64          // its connection, when dialOK
	open       bool           // that connection is not closed by the agent
	data       []byte         // the DATA the agent sent on it
}

// apply records pkt, with random 1 meaning the pending dial's. It returns
// the packet re-encoded when it replaced the random, or nil: the input's own
// bytes go out.
func (m *agentModel) apply(pkt *client.Packet, dialID int64) []byte {
	var out []byte
	switch pkt.Type {
	case client.PacketType_DIAL_RSP:
		r := pkt.GetDialResponse()
		if r == nil {
			break
		}
		ours := r.Random == 1
		if ours {
			r.Random = dialID
			out = marshal(pkt)
		}
		pending := ours && m.dial == dialPending
		switch {
		case r.Error != "" || r.ConnectID == 0:
			if pending {
				m.dial = dialFailed
			}
		case m.registered[r.ConnectID]:
			if pending {
				m.dial = dialFailed // a reused connection ID fails the dial
			}
		default:
			m.registered[r.ConnectID] = true
			if pending {
				m.dial, m.connID, m.open = dialOK, r.ConnectID, true
			}
		}
	case client.PacketType_DIAL_CLS:
		if c := pkt.GetCloseDial(); c != nil && c.Random == 1 {
			c.Random = dialID
			out = marshal(pkt)
			if m.dial == dialPending {
				m.dial = dialFailed
			}
		}
	case client.PacketType_DATA:
		if d := pkt.GetData(); d != nil && m.open && d.ConnectID == m.connID {
			m.data = append(m.data, d.Data...)
		}
	case client.PacketType_CLOSE_RSP:
		if c := pkt.GetCloseResponse(); c != nil {
			delete(m.registered, c.ConnectID)
			if m.open && c.ConnectID == m.connID {
				m.open = false
			}
		}
	}
	return out
}

// FuzzFrontendPackets plays a frontend client that sends anything on a
// ProxyService stream. Dials can reach one agent (upstream-node, which
// echoes); every other destination is refused without a network dial. The
// invariants:
//   - undecodable bytes end the stream with an error status; a packet type
//     a client does not send, or one without its payload, ends it with
//     InvalidArgument naming the type; anything else keeps it up, and it
//     still answers a CLOSE_REQ for an unknown connection with an error;
//   - the server sends only DIAL_RSP, DATA and CLOSE_RSP with their
//     payloads; a DIAL_RSP answers a DIAL_REQ, either with an error or with
//     a connection ID no other dial got; every DIAL_REQ not given up with
//     DIAL_CLS is answered;
//   - once the client is gone, no connection is left open on the server.
func FuzzFrontendPackets(f *testing.F) {
	reg := prometheus.NewRegistry()
	e := newEnv(f, envOptions{connStreams: true, registry: reg})
	startUpstreamAgent(f, e, "upstream-node")
	fe := frontendClient(f, e)

	f.Fuzz(func(t *testing.T, input []byte) {
		p := openProxyOn(t, fe)
		type end struct {
			code codes.Code
			word string
		}
		var want *end
		dials := map[int64]bool{} // DIAL_REQs that must be answered
		asked := map[int64]bool{}
		for _, b := range splitMessages(input) {
			pkt := decode(b)
			switch {
			case pkt == nil:
				want = &end{codes.Internal, ""}
			case !clientPacket(pkt.Type):
				want = &end{codes.InvalidArgument, pkt.Type.String()}
			case !hasPayload(pkt):
				want = &end{codes.InvalidArgument, "payload"}
			case pkt.Type == client.PacketType_DIAL_REQ:
				r := pkt.GetDialRequest()
				dials[r.Random], asked[r.Random] = true, true
			case pkt.Type == client.PacketType_DIAL_CLS:
				delete(dials, pkt.GetCloseDial().Random)
			}
			if p.s.(rawSender).SendMsg(rawMsg(b)) != nil || want != nil {
				break
			}
		}

		if want == nil {
			probe := int64(-1 << 62)
			p.send(t, closeReq(probe))
		}
		conns := map[int64]bool{}
		probed := false
		deadline := time.Now().Add(promptly)
		for {
			if want == nil && len(dials) == 0 && probed {
				break // probe answered, every dial answered
			}
			pkt := p.next(t, time.Until(deadline))
			if pkt == nil {
				break
			}
			switch pkt.Type {
			case client.PacketType_DIAL_RSP:
				r := pkt.GetDialResponse()
				switch {
				case r == nil:
					t.Fatalf("DIAL_RSP without its payload")
				case !asked[r.Random]:
					t.Fatalf("DIAL_RSP for dial %d, which was never asked for", r.Random)
				case r.Error == "" && (r.ConnectID <= 0 || conns[r.ConnectID]):
					t.Fatalf("successful DIAL_RSP with connection ID %d (taken or not positive)", r.ConnectID)
				case r.Error != "" && r.ConnectID != 0:
					t.Fatalf("failed DIAL_RSP %q with connection ID %d", r.Error, r.ConnectID)
				}
				delete(dials, r.Random)
				if r.Error == "" {
					conns[r.ConnectID] = true
				}
			case client.PacketType_DATA:
				if pkt.GetData() == nil {
					t.Fatalf("DATA without its payload")
				}
			case client.PacketType_CLOSE_RSP:
				c := pkt.GetCloseResponse()
				if c == nil {
					t.Fatalf("CLOSE_RSP without its payload")
				}
				if c.ConnectID == -1<<62 {
					if c.Error == "" {
						t.Fatalf("CLOSE_RSP for a connection never opened carries no error")
					}
					probed = true
				}
			default:
				t.Fatalf("the server sent %s on ProxyService", pkt.Type)
			}
		}
		if want != nil {
			p.expectEnd(t, want.code, want.word)
		} else {
			if p.ended() {
				t.Fatalf("the stream ended (%v) on input a client may send", p.err)
			}
			if !probed {
				t.Fatalf("no CLOSE_RSP for the probe within %v", promptly)
			}
			if len(dials) > 0 {
				t.Fatalf("%d DIAL_REQs unanswered within %v", len(dials), promptly)
			}
		}
		p.cancel()
		<-p.done
		eventually(t, "no open connection after the client left", func() bool {
			open, _ := gather(t, reg, "edge_tunnel_server_open_connections", "frontend", "grpc")
			return open == 0
		})
	})
}

func clientPacket(t client.PacketType) bool {
	switch t {
	case client.PacketType_DIAL_REQ, client.PacketType_DATA, client.PacketType_CLOSE_REQ, client.PacketType_DIAL_CLS:
		return true
	}
	return false
}

func hasPayload(p *client.Packet) bool {
	switch p.Type {
	case client.PacketType_DIAL_REQ:
		return p.GetDialRequest() != nil
	case client.PacketType_DATA:
		return p.GetData() != nil
	case client.PacketType_CLOSE_REQ:
		return p.GetCloseRequest() != nil
	case client.PacketType_DIAL_CLS:
		return p.GetCloseDial() != nil
	}
	return false
}

// frontendClient is one gRPC connection to the frontend's UNIX socket that
// sends raw messages; every stream of a fuzz run shares it.
func frontendClient(t testing.TB, e *env) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///edge-tunnel-frontend", grpc.WithContextDialer(udsDialer(e.uds)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// proxyStream is a raw ProxyService stream and its cancel.
type proxyStream struct {
	*rawStream
	cancel context.CancelFunc
}

func openProxyOn(t *testing.T, cc *grpc.ClientConn) *proxyStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.NewProxyServiceClient(cc).Proxy(ctx, grpc.ForceCodecV2(rawCodec{}))
	if err != nil {
		cancel()
		t.Fatalf("opening a ProxyService stream: %v", err)
	}
	return &proxyStream{rawStream: newRawStream(t, ctx, cancel, s), cancel: cancel}
}

// awaitDialReq asks p for a dial of address, retrying while the server has
// not registered the agent yet, and returns the DIAL_REQ's random as a sees
// it.
func awaitDialReq(t *testing.T, a *rawStream, p *proxyStream, address string) int64 {
	t.Helper()
	deadline := time.Now().Add(promptly)
	p.send(t, dialReq(7, "tcp", address))
	for time.Now().Before(deadline) {
		select {
		case pkt := <-a.pkts:
			if r := pkt.GetDialRequest(); r != nil && r.Address == address {
				return r.Random
			}
		case pkt := <-p.pkts:
			r := pkt.GetDialResponse()
			if r == nil || !strings.Contains(r.Error, "no edge-tunnel-agent is connected") {
				t.Fatalf("asking for a dial through the fuzzed agent: got %v", pkt)
			}
			time.Sleep(time.Millisecond) // the session is not registered yet
			p.send(t, dialReq(7, "tcp", address))
		case <-time.After(time.Until(deadline)):
		}
	}
	t.Fatalf("no DIAL_REQ for %s reached the agent within %v", address, promptly)
	return 0
}

// readData reads DATA of connection id until n bytes arrived.
func (r *rawStream) readData(t *testing.T, id int64, n int) []byte {
	t.Helper()
	var got []byte
	for len(got) < n {
		pkt := r.await(t, fmt.Sprintf("%d more bytes on connection %d", n-len(got), id), func(pkt *client.Packet) bool {
			if c := pkt.GetCloseResponse(); pkt.Type == client.PacketType_CLOSE_RSP && c.GetConnectID() == id {
				t.Fatalf("connection %d closed (%q) after %d of the %d bytes the agent sent", id, c.Error, len(got), n)
			}
			return pkt.GetData().GetConnectID() == id
		})
		got = append(got, pkt.GetData().Data...)
	}
	return got
}

// expectEndWithError waits for the stream to end with an error status.
func (r *rawStream) expectEndWithError(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(promptly):
		t.Fatalf("the stream did not end within %v after undecodable bytes", promptly)
	}
	if st, ok := status.FromError(r.err); !ok || st.Code() == codes.OK || st.Message() == "" {
		t.Fatalf("the stream ended with %v, want an error status that says why", r.err)
	}
}

// eventually is waitFor with a short poll and promptly's bound: a fuzz
// iteration should not sleep longer than the server takes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(promptly)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", promptly, what)
		}
		time.Sleep(time.Millisecond)
	}
}
