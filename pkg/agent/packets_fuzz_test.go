package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// FuzzServerPackets plays a rogue server: a real agent connects to it over
// mTLS, and the fuzz input goes down the agent's control stream. An input
// is a sequence of messages, each a uvarint length and that many bytes;
// messages that are not Packets are skipped (a server that sends them is
// cut off by gRPC before the agent sees them). Three rewrites keep the
// agent's dials on the test's own echo server and make connections
// reachable: a DIAL_REQ's port becomes the echo server's, the harness waits
// for each DIAL_REQ's answer before sending on, and the connection IDs 1,
// 2, ... in DATA and CLOSE_REQ stand for the connections opened so far in
// this input. The invariants:
//   - the agent sends only DIAL_RSP, DATA and CLOSE_RSP, with payloads; a
//     DIAL_RSP answers a DIAL_REQ, with an error or with a connection ID no
//     other connection holds;
//   - whatever arrives, the control stream stays up and still answers a
//     CLOSE_REQ for an unknown connection with an error;
//   - every byte sent on a connection comes back from the echo server, in
//     order, and every connection, once closed, is answered with CLOSE_RSP;
//   - afterwards, no dial, connection or target connection is left open.
func FuzzServerPackets(f *testing.F) {
	echo := newEchoTarget(f)
	_, echoPort, _ := net.SplitHostPort(echo.addr)
	streams := make(chan agentpb.AgentService_ConnectServer, 1)
	srvAddr, clientTLS := startFakeServer(f, streams)
	ids, err := identity.Parse("host=fuzz-node")
	if err != nil {
		f.Fatal(err)
	}
	a, err := New(Config{ServerAddr: srvAddr, TLS: clientTLS, AgentID: "fuzz-node", Identifiers: ids,
		SyncInterval: 10 * time.Millisecond, DialTimeout: time.Second})
	if err != nil {
		f.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); a.Run(ctx) }()
	f.Cleanup(func() { cancel(); <-ran })
	var srv *fakeStream

	f.Fuzz(func(t *testing.T, input []byte) {
		if srv == nil || srv.ended() {
			select {
			case s := <-streams:
				srv = newFakeStream(s)
			case <-time.After(promptly):
				t.Fatalf("the agent did not connect within %v", promptly)
			}
		}
		var conns []int64          // this input's connections, in the order opened
		open := map[int64]bool{}   // not yet closed by a CLOSE_REQ
		sent := map[int64][]byte{} // DATA sent on each open connection
		for _, b := range splitMessages(input) {
			pkt := &client.Packet{}
			if proto.Unmarshal(b, pkt) != nil {
				continue
			}
			var dial *client.DialRequest
			switch pkt.Type {
			case client.PacketType_DIAL_REQ:
				if dial = pkt.GetDialRequest(); dial != nil {
					if host, _, err := net.SplitHostPort(dial.Address); err == nil {
						dial.Address = net.JoinHostPort(host, echoPort)
					}
				}
			case client.PacketType_DATA:
				if d := pkt.GetData(); d != nil {
					d.ConnectID = nth(conns, d.ConnectID)
					if open[d.ConnectID] {
						sent[d.ConnectID] = append(sent[d.ConnectID], d.Data...)
					}
				}
			case client.PacketType_CLOSE_REQ:
				if c := pkt.GetCloseRequest(); c != nil {
					c.ConnectID = nth(conns, c.ConnectID)
					delete(open, c.ConnectID)
				}
			}
			srv.send(t, pkt)
			if dial == nil {
				continue
			}
			rsp := srv.await(t, fmt.Sprintf("DIAL_RSP for dial %d (%s)", dial.Random, dial.Address), func(p *client.Packet) bool {
				return p.GetDialResponse() != nil && p.GetDialResponse().Random == dial.Random
			}).GetDialResponse()
			switch {
			case rsp.Error != "" && rsp.ConnectID != 0:
				t.Fatalf("failed DIAL_RSP %q carries connection ID %d", rsp.Error, rsp.ConnectID)
			case rsp.Error == "" && (rsp.ConnectID <= 0 || open[rsp.ConnectID]):
				t.Fatalf("successful DIAL_RSP with connection ID %d (taken or not positive)", rsp.ConnectID)
			case rsp.Error == "":
				conns = append(conns, rsp.ConnectID)
				open[rsp.ConnectID] = true
			}
		}

		// The control stream still works.
		const probe = -1 << 62
		srv.send(t, closeReq(probe))
		if c := srv.await(t, "CLOSE_RSP for an unknown connection", func(p *client.Packet) bool {
			return p.GetCloseResponse() != nil && p.GetCloseResponse().ConnectID == probe
		}).GetCloseResponse(); c.Error == "" {
			t.Fatalf("CLOSE_RSP for a connection that never existed carries no error")
		}

		// Every open connection echoes what was sent on it.
		for id, want := range sent {
			if !open[id] {
				continue // closed by the input: the echo may be cut short
			}
			srv.until(t, fmt.Sprintf("%d bytes echoed on connection %d", len(want), id), func() bool {
				if srv.closes[id] > 0 {
					t.Fatalf("connection %d closed after echoing %d of %d bytes", id, len(srv.data[id]), len(want))
				}
				return len(srv.data[id]) >= len(want)
			})
			if got := srv.data[id]; !bytes.Equal(got, want) {
				t.Fatalf("connection %d: sent %q, echoed %q", id, want, got)
			}
		}
		// Close what is open; every connection of the input ends with
		// exactly one CLOSE_RSP.
		for id := range open {
			srv.send(t, closeReq(id))
		}
		for _, id := range conns {
			srv.until(t, fmt.Sprintf("CLOSE_RSP for connection %d", id), func() bool { return srv.closes[id] > 0 })
		}
		eventually(t, "no dial or connection open in the agent, none at the target", func() bool {
			return a.openConns() == 0 && echo.open.Load() == 0
		})
		srv.drainPending(t)
		for _, id := range conns {
			if n := srv.closes[id]; n != 1 {
				t.Fatalf("%d CLOSE_RSPs for connection %d, want exactly 1", n, id)
			}
		}
		srv.forget()
	})
}

// nth maps connection ID k (1, 2, ...) to the k-th connection of the
// input; other IDs stay as they are.
func nth(conns []int64, k int64) int64 {
	if k >= 1 && k <= int64(len(conns)) {
		return conns[k-1]
	}
	return k
}

const promptly = 5 * time.Second

func closeReq(id int64) *client.Packet {
	return &client.Packet{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{
		CloseRequest: &client.CloseRequest{ConnectID: id}}}
}

// splitMessages cuts a fuzz input into at most 32 messages of at most
// 64 KiB: a uvarint length and that many bytes (a length past the end
// takes the rest; an invalid length makes the rest one message).
func splitMessages(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 && len(out) < 32 {
		n, k := binary.Uvarint(b)
		if k <= 0 {
			out = append(out, b)
			break
		}
		b = b[k:]
		n = min(n, uint64(len(b)), 64<<10)
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

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

// fakeServer is the server end of the agent's control stream, driven by
// the fuzz target. It speaks the handshake and nothing else by itself.
type fakeServer struct {
	agentpb.UnimplementedAgentServiceServer
	streams chan<- agentpb.AgentService_ConnectServer
}

func (s *fakeServer) Connect(stream agentpb.AgentService_ConnectServer) error {
	hdr := metadata.Pairs(agentpb.ServerIDKey, "fuzz-server", agentpb.ServerCountKey, "1")
	if err := stream.SendHeader(hdr); err != nil {
		return err
	}
	select {
	case s.streams <- stream:
	case <-stream.Context().Done():
		return nil
	}
	<-stream.Context().Done()
	return nil
}

// startFakeServer serves fakeServer with mTLS on loopback and returns its
// address and the agent's client TLS config.
func startFakeServer(t testing.TB, streams chan<- agentpb.AgentService_ConnectServer) (string, *tls.Config) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA("edge-tunnel-fuzz")
	if err != nil {
		t.Fatal(err)
	}
	pairs := map[string]pki.Pair{}
	for name, usage := range map[string]string{"server": pki.UsageServer, "agent": pki.UsageClient} {
		if pairs[name], err = ca.Issue(name, []string{"127.0.0.1"}, usage); err != nil {
			t.Fatal(err)
		}
	}
	if err := pki.WriteFiles(dir, ca, pairs); err != nil {
		t.Fatal(err)
	}
	path := func(n string) string { return filepath.Join(dir, n) }
	srvTLS, err := tlsutil.ServerConfig(path("server.crt"), path("server.key"), path("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	clientTLS, err := tlsutil.ClientConfig(path("ca.crt"), path("agent.crt"), path("agent.key"), "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(srvTLS)), grpc.ForceServerCodecV2(protoCodec{}))
	agentpb.RegisterAgentServiceServer(gs, &fakeServer{streams: streams})
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return ln.Addr().String(), clientTLS
}

// protoCodec is plain protobuf, so that the fuzz target's packets reach
// the agent exactly as they were built.
type protoCodec struct{}

func (protoCodec) Name() string { return "proto" }

func (protoCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

func (protoCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// fakeStream reads everything the agent sends into pkts. Packets taken
// from pkts are checked and their DATA and CLOSE_RSPs recorded, whichever
// wait takes them.
type fakeStream struct {
	s    agentpb.AgentService_ConnectServer
	pkts chan *client.Packet
	done chan struct{}
	err  error

	data   map[int64][]byte // DATA payloads by connection
	closes map[int64]int    // CLOSE_RSPs by connection
}

func newFakeStream(s agentpb.AgentService_ConnectServer) *fakeStream {
	fs := &fakeStream{s: s, pkts: make(chan *client.Packet, 1024), done: make(chan struct{}),
		data: map[int64][]byte{}, closes: map[int64]int{}}
	go func() {
		defer close(fs.done)
		for {
			p, err := s.Recv()
			if err != nil {
				fs.err = err
				return
			}
			fs.pkts <- p
		}
	}()
	return fs
}

func (fs *fakeStream) ended() bool {
	select {
	case <-fs.done:
		return true
	default:
		return false
	}
}

func (fs *fakeStream) send(t *testing.T, p *client.Packet) {
	t.Helper()
	if err := fs.s.Send(p); err != nil {
		t.Fatalf("sending %s to the agent: %v", p.Type, err)
	}
}

// await checks every packet the agent sends on the way and returns the
// first that matches.
func (fs *fakeStream) await(t *testing.T, what string, match func(*client.Packet) bool) *client.Packet {
	t.Helper()
	timer := time.NewTimer(promptly)
	defer timer.Stop()
	for {
		select {
		case p := <-fs.pkts:
			fs.record(t, p)
			if match(p) {
				return p
			}
		case <-fs.done:
			t.Fatalf("the agent ended its control stream (%v) before %s", fs.err, what)
		case <-timer.C:
			t.Fatalf("no %s within %v", what, promptly)
		}
	}
}

// until takes packets until cond holds.
func (fs *fakeStream) until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if cond() {
		return
	}
	fs.await(t, what, func(*client.Packet) bool { return cond() })
}

// drainPending takes the packets already sent, without waiting.
func (fs *fakeStream) drainPending(t *testing.T) {
	t.Helper()
	for {
		select {
		case p := <-fs.pkts:
			fs.record(t, p)
		default:
			return
		}
	}
}

// forget clears what was recorded, between inputs.
func (fs *fakeStream) forget() {
	clear(fs.data)
	clear(fs.closes)
}

// record checks p, failing on anything an agent must not send, and records
// its DATA or CLOSE_RSP.
func (fs *fakeStream) record(t *testing.T, p *client.Packet) {
	t.Helper()
	if d := p.GetData(); d != nil {
		fs.data[d.ConnectID] = append(fs.data[d.ConnectID], d.Data...)
	}
	if c := p.GetCloseResponse(); c != nil {
		fs.closes[c.ConnectID]++
	}
	ok := false
	switch p.Type {
	case client.PacketType_DIAL_RSP:
		ok = p.GetDialResponse() != nil
	case client.PacketType_DATA:
		ok = p.GetData() != nil
	case client.PacketType_CLOSE_RSP:
		ok = p.GetCloseResponse() != nil
	}
	if !ok {
		t.Fatalf("the agent sent %s with payload %T", p.Type, p.Payload)
	}
}

// echoTarget is a loopback TCP echo server that counts its open
// connections.
type echoTarget struct {
	addr string
	open atomic.Int64
}

func newEchoTarget(t testing.TB) *echoTarget {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e := &echoTarget{addr: ln.Addr().String()}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.open.Add(1)
			go func() {
				defer e.open.Add(-1)
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return e
}
