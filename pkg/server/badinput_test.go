package server_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// These tests feed a real server and agent bad input on both of the server's
// sides: a raw ProxyService client on the frontend, and raw AgentService and
// ConnService clients on the agent port. Every case must end promptly with a
// clear gRPC status or DIAL_RSP error, and must leave the other connections
// of the same server and agent working.

// promptly bounds every answer these tests wait for. The server answers bad
// input at once; needing longer means something hangs.
const promptly = 5 * time.Second

func TestFrontendBadInput(t *testing.T) {
	e := newEnv(t, envOptions{connStreams: true})
	e.addAgent(t, "node-a", true, "127.0.0.1") // conn-streams, serves 127.0.0.1
	e.addAgent(t, "node-b", false)             // single-stream, dialed by name
	up := startUpstreamAgent(t, e, "upstream-node")
	target := echoServer(t)
	_, targetPort, _ := net.SplitHostPort(target)
	by := newBystander(t, e, target)

	t.Run("unknown or client-forbidden packet type", func(t *testing.T) {
		for _, tc := range []struct {
			pkt  *client.Packet
			want string
		}{
			{&client.Packet{Type: 99}, "99"},
			{dialRsp(1, 1, ""), "DIAL_RSP"},
			{closeRsp(1, ""), "CLOSE_RSP"},
			{&client.Packet{Type: client.PacketType_DRAIN, Payload: &client.Packet_Drain{Drain: &client.Drain{}}}, "DRAIN"},
		} {
			p := openProxy(t, e)
			p.send(t, tc.pkt)
			p.expectEnd(t, codes.InvalidArgument, "unexpected packet type", tc.want)
		}
		by.check(t)
	})

	t.Run("packet without its payload", func(t *testing.T) {
		for _, pkt := range []*client.Packet{
			{Type: client.PacketType_DATA},
			{Type: client.PacketType_DIAL_REQ},
			{Type: client.PacketType_CLOSE_REQ},
			{Type: client.PacketType_DIAL_CLS},
			// A payload of another type is no payload for this one.
			{Type: client.PacketType_DATA, Payload: dialReq(1, "tcp", target).Payload},
		} {
			p := openProxy(t, e)
			p.send(t, pkt)
			p.expectEnd(t, codes.InvalidArgument, pkt.Type.String(), "payload")
		}
		by.check(t)
	})

	t.Run("DATA for a connection never opened", func(t *testing.T) {
		p := openProxy(t, e)
		p.send(t, dataPkt(42, []byte("nobody reads this")), dataPkt(0, nil))
		rsp := p.dial(t, 7, target)
		if rsp.Error != "" || rsp.ConnectID == 0 {
			t.Fatalf("dial after stray DATA: %+v", rsp)
		}
		p.echo(t, rsp.ConnectID, []byte("still works"))
		p.closeConn(t, rsp.ConnectID)
		by.check(t)
	})

	t.Run("CLOSE_REQ for a connection never opened", func(t *testing.T) {
		p := openProxy(t, e)
		for _, id := range []int64{42, 0, -1} {
			start := time.Now()
			p.send(t, closeReq(id))
			pkt := p.await(t, fmt.Sprintf("CLOSE_RSP %d", id), func(pkt *client.Packet) bool {
				return pkt.Type == client.PacketType_CLOSE_RSP && pkt.GetCloseResponse().GetConnectID() == id
			})
			if pkt.GetCloseResponse().Error == "" {
				t.Fatalf("CLOSE_RSP for never-opened connection %d has no error", id)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("CLOSE_RSP for never-opened connection %d took %v", id, d)
			}
		}
		rsp := p.dial(t, 7, target)
		if rsp.Error != "" {
			t.Fatalf("dial after bad CLOSE_REQs: %s", rsp.Error)
		}
		p.closeConn(t, rsp.ConnectID)
		by.check(t)
	})

	t.Run("duplicate dial ID while the first is pending", func(t *testing.T) {
		// The upstream-style agent holds its answer, so the first dial is
		// certainly pending when the duplicate arrives.
		addr := "upstream-node:81"
		release := up.hold(addr)
		p := openProxy(t, e)
		p.send(t, dialReq(5, "tcp", addr), dialReq(5, "tcp", addr))
		dup := p.dialRsp(t, 5)
		if !strings.Contains(dup.Error, "duplicate") || dup.ConnectID != 0 {
			t.Fatalf("the duplicate DIAL_REQ got %+v, want an error mentioning \"duplicate\"", dup)
		}
		release()
		first := p.dialRsp(t, 5)
		if first.Error != "" || first.ConnectID == 0 {
			t.Fatalf("the first dial got %+v, want success", first)
		}
		if n := up.dialsFor(addr); n != 1 {
			t.Fatalf("the agent saw %d DIAL_REQs for %s, want 1 (the duplicate must not reach it)", n, addr)
		}
		p.echo(t, first.ConnectID, []byte("first one works"))
		p.closeConn(t, first.ConnectID)
		by.check(t)
	})

	t.Run("duplicate dial ID back to back", func(t *testing.T) {
		// Against real agents the first dial may complete before the
		// duplicate is read (its ID is then free again), so either the
		// duplicate is refused, saying so, or both are distinct, working
		// connections. The held case above is the deterministic one.
		for _, addr := range []string{target, "node-b:" + targetPort} {
			p := openProxy(t, e)
			p.send(t, dialReq(9, "tcp", addr), dialReq(9, "tcp", addr))
			var ok []int64
			for i := 0; i < 2; i++ {
				rsp := p.dialRsp(t, 9)
				switch {
				case rsp.Error == "":
					ok = append(ok, rsp.ConnectID)
				case !strings.Contains(rsp.Error, "duplicate"):
					t.Fatalf("%s: a dial failed with %q, want only the duplicate to fail, saying so", addr, rsp.Error)
				}
			}
			switch {
			case len(ok) == 0:
				t.Fatalf("%s: both dials were refused as duplicates", addr)
			case len(ok) == 2 && ok[0] == ok[1]:
				t.Fatalf("%s: both dials got connection ID %d", addr, ok[0])
			case len(ok) == 2:
				t.Logf("%s: the first dial completed before the second was read", addr)
			}
			for _, id := range ok {
				p.echo(t, id, []byte("ping"))
				p.closeConn(t, id)
			}
		}
		by.check(t)
	})

	t.Run("unsupported protocol", func(t *testing.T) {
		p := openProxy(t, e)
		for i, proto := range []string{"udp", "unix", ""} {
			random := int64(100 + i)
			p.send(t, dialReq(random, proto, target))
			rsp := p.dialRsp(t, random)
			if rsp.ConnectID != 0 || !strings.Contains(rsp.Error, fmt.Sprintf("protocol %q", proto)) || !strings.Contains(rsp.Error, "tcp") {
				t.Fatalf("protocol %q: got %+v, want an error naming the protocol and tcp", proto, rsp)
			}
		}
		by.check(t)
	})

	t.Run("malformed address", func(t *testing.T) {
		p := openProxy(t, e)
		for i, tc := range []struct{ addr, want string }{
			{"no-port", "want host:port"},
			{"", "want host:port"},
			{"node-a:99999", "1-65535"},
			{"node-a:0", "1-65535"},
			{"node-a:http", "1-65535"},
			{":80", "empty host"},
		} {
			random := int64(200 + i)
			start := time.Now()
			p.send(t, dialReq(random, "tcp", tc.addr))
			rsp := p.dialRsp(t, random)
			if rsp.ConnectID != 0 || !strings.Contains(rsp.Error, tc.want) || !strings.Contains(rsp.Error, fmt.Sprintf("%q", tc.addr)) {
				t.Fatalf("address %q: got %+v, want an error quoting the address and saying %q", tc.addr, rsp, tc.want)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("address %q: refusal took %v", tc.addr, d)
			}
		}
		by.check(t)
	})

	t.Run("oversized packet", func(t *testing.T) {
		// One DATA larger than gRPC's default 4 MiB limit but within the
		// server's: the konnectivity client sends each Write unchunked.
		p := openProxy(t, e)
		rsp := p.dial(t, 1, target)
		if rsp.Error != "" {
			t.Fatal(rsp.Error)
		}
		p.echo(t, rsp.ConnectID, bytes.Repeat([]byte("5MiB"), 5<<20/4))
		// One byte over the limit (maxPacket, 16 MiB) ends the stream with
		// gRPC's own status.
		// Send may fail: the server ends the stream without reading it all.
		p.s.Send(dataPkt(rsp.ConnectID, make([]byte, 16<<20+1)))
		p.expectEnd(t, codes.ResourceExhausted)
		by.check(t)
	})

	t.Run("client closes while the target streams", func(t *testing.T) {
		// The agent's copy toward the server is in Send when the close
		// arrives: the close must not race it (run with -race).
		bulk := byteServer(t)
		_, port, _ := net.SplitHostPort(bulk)
		var hdr [9]byte
		binary.BigEndian.PutUint64(hdr[:8], 1<<40)
		hdr[8] = 'd'
		p := openProxy(t, e)
		for i := int64(1); i <= 60; i++ {
			addr := bulk
			if i%2 == 0 {
				addr = "node-b:" + port
			}
			rsp := p.dial(t, i, addr)
			if rsp.Error != "" {
				t.Fatal(rsp.Error)
			}
			id := rsp.ConnectID
			p.send(t, dataPkt(id, hdr[:]))
			p.await(t, "streamed DATA", func(pkt *client.Packet) bool { return pkt.GetData().GetConnectID() == id })
			p.send(t, closeReq(id))
			p.await(t, fmt.Sprintf("CLOSE_RSP %d", id), func(pkt *client.Packet) bool {
				return pkt.Type == client.PacketType_CLOSE_RSP && pkt.GetCloseResponse().GetConnectID() == id
			})
		}
		by.check(t)
	})

	t.Run("exactly one CLOSE_RSP per connection", func(t *testing.T) {
		closer := closingServer(t, "bye")
		_, port, _ := net.SplitHostPort(closer)
		t.Run("cases", func(t *testing.T) {
			for _, via := range []struct{ name, addr string }{
				{"conn-streams", closer},
				{"single-stream", "node-b:" + port},
				{"upstream-style", "upstream-node:1"},
			} {
				for _, clientFirst := range []bool{false, true} {
					if via.name == "upstream-style" && !clientFirst {
						continue // that agent's targets never close by themselves
					}
					name := via.name + "/target closes first"
					if clientFirst {
						name = via.name + "/client closes first"
					}
					t.Run(name, func(t *testing.T) {
						t.Parallel() // each waits a second for stray packets
						oneCloseResponse(t, openProxy(t, e), via.addr, clientFirst)
					})
				}
			}
		})
		by.check(t)
	})
}

// oneCloseResponse opens a connection to address and checks that it gets
// exactly one CLOSE_RSP, whoever closes first. With clientFirst false the
// target must close by itself right after sending "bye".
func oneCloseResponse(t *testing.T, p *rawStream, address string, clientFirst bool) {
	rsp := p.dial(t, 1, address)
	if rsp.Error != "" {
		t.Fatal(rsp.Error)
	}
	id := rsp.ConnectID
	var pkts []*client.Packet
	if clientFirst {
		// The client's CLOSE_REQ races the target's close.
		p.send(t, closeReq(id))
	} else {
		// The target closes first: DATA "bye", then an unprompted
		// CLOSE_RSP. The client's CLOSE_REQ and DATA that cross it must
		// not bring a second one.
		var got []byte
		for {
			pkt := p.next(t, promptly)
			if pkt == nil {
				t.Fatalf("the stream ended (%v) before the unprompted CLOSE_RSP", p.err)
			}
			pkts = append(pkts, pkt)
			if d := pkt.GetData(); d != nil {
				got = append(got, d.Data...)
			}
			if pkt.Type == client.PacketType_CLOSE_RSP {
				break
			}
		}
		if string(got) != "bye" {
			t.Fatalf("got %q before CLOSE_RSP, want the target's \"bye\"", got)
		}
		p.send(t, closeReq(id), dataPkt(id, []byte("late")), closeReq(id))
	}
	pkts = append(pkts, p.collect(time.Second)...)
	n := 0
	for _, pkt := range pkts {
		if c := pkt.GetCloseResponse(); pkt.Type == client.PacketType_CLOSE_RSP && c.GetConnectID() == id {
			n++
			if c.Error != "" {
				t.Errorf("CLOSE_RSP carries error %q", c.Error)
			}
		}
	}
	if n != 1 {
		t.Fatalf("%d CLOSE_RSPs for connection %d, want exactly 1", n, id)
	}
	if p.ended() {
		t.Fatalf("the stream ended (%v); closing one connection must not end it", p.err)
	}
}

// TestFrontendDialCloseRace gives up many dials right after asking for them,
// the way kube-apiserver's client does when its dial times out, so that
// DIAL_CLS races DIAL_RSP at every stage. No connection may leak: not on the
// server, not on the agents, not as goroutines.
func TestFrontendDialCloseRace(t *testing.T) {
	reg, regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry(), prometheus.NewRegistry()
	e := newEnv(t, envOptions{connStreams: true, registry: reg})
	startAgent(t, e, "node-a", true, regA, "127.0.0.1")
	startAgent(t, e, "node-b", false, regB)
	target := echoServer(t)
	_, port, _ := net.SplitHostPort(target)
	addrs := []string{target, "node-b:" + port}
	for _, a := range addrs { // warm up both paths
		c, err := e.dialGRPC(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		echoRoundTrip(t, c, 100)
		c.Close()
	}
	open := func() (srv, a, b float64) {
		return metricValue(t, reg, "edge_tunnel_server_open_connections", "frontend", "grpc"),
			metricValue(t, regA, "edge_tunnel_agent_open_connections"),
			metricValue(t, regB, "edge_tunnel_agent_open_connections")
	}
	waitFor(t, "no open connections before the race", func() bool { s, a, b := open(); return s+a+b == 0 })
	base := runtime.NumGoroutine()

	const n, workers = 300, 16
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		raced int
		sem   = make(chan struct{}, workers)
	)
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			won, err := dialAndGiveUp(e.uds, int64(i+1), addrs[i%2], i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			if won {
				raced++
			}
		}()
	}
	wg.Wait()
	for _, err := range errs[:min(len(errs), 5)] {
		t.Error(err)
	}
	if len(errs) > 0 {
		t.Fatalf("%d of %d given-up dials misbehaved", len(errs), n)
	}
	t.Logf("%d of %d dials were answered before their DIAL_CLS took effect", raced, n)

	deadline := time.Now().Add(promptly)
	for {
		s, a, b := open()
		if s == 0 && a == 0 && b == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("connections leaked: server open_connections{frontend=grpc}=%v, agent node-a=%v, agent node-b=%v", s, a, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
	const margin = 10
	for g := runtime.NumGoroutine(); g > base+margin; g = runtime.NumGoroutine() {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines leaked: %d before the race, %d after\n%s", base, g, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, a := range addrs {
		c, err := e.dialGRPC(context.Background(), a)
		if err != nil {
			t.Fatalf("dial after the race: %v", err)
		}
		echoRoundTrip(t, c, 1000)
		c.Close()
	}
}

// dialAndGiveUp opens a fresh stream (as kube-apiserver does per dial), asks
// for address and gives the dial up with DIAL_CLS after a delay that varies
// with i, then ends the stream in one of three ways. won reports that a
// successful DIAL_RSP arrived anyway (the dial completed first).
func dialAndGiveUp(uds string, random int64, address string, i int) (won bool, err error) {
	cc, err := grpc.NewClient("passthrough:///edge-tunnel-frontend", grpc.WithContextDialer(udsDialer(uds)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return false, err
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), promptly)
	defer cancel()
	s, err := client.NewProxyServiceClient(cc).Proxy(ctx)
	if err != nil {
		return false, fmt.Errorf("dial %d: opening the stream: %w", i, err)
	}
	if err := s.Send(dialReq(random, "tcp", address)); err != nil {
		return false, fmt.Errorf("dial %d: sending DIAL_REQ: %w", i, err)
	}
	time.Sleep(time.Duration(i%7) * 300 * time.Microsecond)
	if err := s.Send(dialCls(random)); err != nil {
		return false, fmt.Errorf("dial %d: sending DIAL_CLS: %w", i, err)
	}
	switch i % 3 {
	case 0:
		// kube-apiserver's way: drop the stream right after DIAL_CLS.
		return false, nil
	case 1:
		// Keep the stream open for a while, so an answer racing the
		// DIAL_CLS meets a live stream, then drop it.
		time.AfterFunc(50*time.Millisecond, cancel)
	case 2:
		// End the stream politely and read what the server still sends.
		s.CloseSend()
	}
	for {
		pkt, err := s.Recv()
		switch {
		case err == io.EOF || status.Code(err) == codes.Canceled:
			return won, nil
		case err != nil:
			return won, fmt.Errorf("dial %d: the stream ended with %v", i, err)
		}
		if r := pkt.GetDialResponse(); r != nil && r.Error == "" {
			won = true
		} else if r != nil {
			return won, fmt.Errorf("dial %d: a given-up dial answered with error %q; a cancelled dial gets no answer", i, r.Error)
		}
	}
}

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

// packetClient is the client side of either packet stream: ProxyService.Proxy
// and AgentService.Connect.
type packetClient interface {
	Send(*client.Packet) error
	Recv() (*client.Packet, error)
}

// rawStream is a packet stream the test drives by hand. A goroutine reads
// every packet into pkts; err is why the stream ended, set before done closes.
type rawStream struct {
	s    packetClient
	pkts chan *client.Packet
	done chan struct{}
	err  error
}

func newRawStream(t testing.TB, ctx context.Context, cancel context.CancelFunc, s packetClient) *rawStream {
	r := &rawStream{s: s, pkts: make(chan *client.Packet, 256), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			pkt, err := s.Recv()
			if err != nil {
				r.err = err
				return
			}
			select {
			case r.pkts <- pkt:
			case <-ctx.Done():
				r.err = ctx.Err()
				return
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

func udsDialer(path string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// openProxy opens a ProxyService stream on its own connection to the UNIX
// socket.
func openProxy(t testing.TB, e *env) *rawStream {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///edge-tunnel-frontend", grpc.WithContextDialer(udsDialer(e.uds)),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	s, err := client.NewProxyServiceClient(cc).Proxy(ctx)
	if err != nil {
		cancel()
		t.Fatalf("opening a ProxyService stream: %v", err)
	}
	return newRawStream(t, ctx, cancel, s)
}

// agentClient is a new gRPC connection to the agent port with the agent's
// client certificate.
func agentClient(t testing.TB, e *env) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient(e.agentAdr, grpc.WithTransportCredentials(credentials.NewTLS(e.agentTLS)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// openAgentStream opens AgentService.Connect on cc with md.
func openAgentStream(t testing.TB, cc *grpc.ClientConn, md metadata.MD) *rawStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := agentpb.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		cancel()
		t.Fatalf("opening an AgentService stream: %v", err)
	}
	return newRawStream(t, ctx, cancel, s)
}

func (r *rawStream) send(t testing.TB, pkts ...*client.Packet) {
	t.Helper()
	for _, pkt := range pkts {
		if err := r.s.Send(pkt); err != nil {
			t.Fatalf("sending %s: %v", pkt.Type, err)
		}
	}
}

// next returns the next packet, or nil once the stream has ended and every
// packet was read. It fails the test if neither happens within d.
func (r *rawStream) next(t testing.TB, d time.Duration) *client.Packet {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case pkt := <-r.pkts:
		return pkt
	case <-r.done:
		select {
		case pkt := <-r.pkts:
			return pkt
		default:
			return nil
		}
	case <-timer.C:
		t.Fatalf("no packet and no end of the stream within %v", d)
		return nil
	}
}

// await skips packets until one matches and returns it.
func (r *rawStream) await(t testing.TB, what string, match func(*client.Packet) bool) *client.Packet {
	t.Helper()
	deadline := time.Now().Add(promptly)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, promptly)
		}
		pkt := r.next(t, time.Until(deadline))
		if pkt == nil {
			t.Fatalf("the stream ended (%v) before %s", r.err, what)
		}
		if match(pkt) {
			return pkt
		}
	}
}

// collect returns the packets that arrive within d, or until the stream ends.
func (r *rawStream) collect(d time.Duration) []*client.Packet {
	var out []*client.Packet
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case pkt := <-r.pkts:
			out = append(out, pkt)
		case <-r.done:
			for {
				select {
				case pkt := <-r.pkts:
					out = append(out, pkt)
				default:
					return out
				}
			}
		case <-timer.C:
			return out
		}
	}
}

func (r *rawStream) ended() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// expectEnd waits for the stream to end with code and a message containing
// every word.
func (r *rawStream) expectEnd(t testing.TB, code codes.Code, words ...string) {
	t.Helper()
	timer := time.NewTimer(promptly)
	defer timer.Stop()
	for {
		select {
		case <-r.pkts:
		case <-r.done:
			checkStatus(t, r.err, code, words...)
			return
		case <-timer.C:
			t.Fatalf("the stream did not end within %v; want status %s", promptly, code)
		}
	}
}

func checkStatus(t testing.TB, err error, code codes.Code, words ...string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code {
		t.Fatalf("got %v, want status %s", err, code)
	}
	for _, w := range words {
		if !strings.Contains(st.Message(), w) {
			t.Fatalf("status message %q does not mention %q", st.Message(), w)
		}
	}
}

// dial asks for address and returns the DIAL_RSP.
func (r *rawStream) dial(t testing.TB, random int64, address string) *client.DialResponse {
	t.Helper()
	r.send(t, dialReq(random, "tcp", address))
	return r.dialRsp(t, random)
}

func (r *rawStream) dialRsp(t testing.TB, random int64) *client.DialResponse {
	t.Helper()
	return r.await(t, fmt.Sprintf("DIAL_RSP for dial %d", random), func(pkt *client.Packet) bool {
		return pkt.Type == client.PacketType_DIAL_RSP && pkt.GetDialResponse().GetRandom() == random
	}).GetDialResponse()
}

// echo sends msg on connection id, whose target echoes, and checks the reply.
func (r *rawStream) echo(t testing.TB, id int64, msg []byte) {
	t.Helper()
	r.send(t, dataPkt(id, msg))
	var got []byte
	for len(got) < len(msg) {
		pkt := r.await(t, "echoed DATA", func(pkt *client.Packet) bool {
			if pkt.Type == client.PacketType_CLOSE_RSP && pkt.GetCloseResponse().GetConnectID() == id {
				t.Fatalf("connection %d closed while echoing", id)
			}
			return pkt.GetData().GetConnectID() == id
		})
		got = append(got, pkt.GetData().Data...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("connection %d echoed %d bytes that differ from the %d sent", id, len(got), len(msg))
	}
}

// closeConn closes connection id and waits for its CLOSE_RSP.
func (r *rawStream) closeConn(t testing.TB, id int64) {
	t.Helper()
	r.send(t, closeReq(id))
	pkt := r.await(t, fmt.Sprintf("CLOSE_RSP %d", id), func(pkt *client.Packet) bool {
		return pkt.Type == client.PacketType_CLOSE_RSP && pkt.GetCloseResponse().GetConnectID() == id
	})
	if e := pkt.GetCloseResponse().Error; e != "" {
		t.Fatalf("closing connection %d: %s", id, e)
	}
}

func dialReq(random int64, protocol, address string) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: protocol, Address: address, Random: random}}}
}

func dialRsp(random, id int64, errText string) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{
		DialResponse: &client.DialResponse{Random: random, ConnectID: id, Error: errText}}}
}

func dataPkt(id int64, b []byte) *client.Packet {
	return &client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{
		Data: &client.Data{ConnectID: id, Data: b}}}
}

func closeReq(id int64) *client.Packet {
	return &client.Packet{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{
		CloseRequest: &client.CloseRequest{ConnectID: id}}}
}

func closeRsp(id int64, errText string) *client.Packet {
	return &client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{
		CloseResponse: &client.CloseResponse{ConnectID: id, Error: errText}}}
}

func dialCls(random int64) *client.Packet {
	return &client.Packet{Type: client.PacketType_DIAL_CLS, Payload: &client.Packet_CloseDial{
		CloseDial: &client.CloseDial{Random: random}}}
}

// ---- the rest of the cast ----

// bystander is a connection opened before the bad input, through the real
// agent, that must still work after it.
type bystander struct {
	e      *env
	target string
	c      net.Conn
}

func newBystander(t testing.TB, e *env, target string) *bystander {
	t.Helper()
	c, err := e.dialGRPC(context.Background(), target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	echoRoundTrip(t, c, 100)
	return &bystander{e: e, target: target, c: c}
}

// check: the open connection still echoes and a new dial works.
func (b *bystander) check(t testing.TB) {
	t.Helper()
	echoRoundTrip(t, b.c, 64<<10)
	ctx, cancel := context.WithTimeout(context.Background(), promptly)
	defer cancel()
	c, err := b.e.dialGRPC(ctx, b.target)
	if err != nil {
		t.Fatalf("a normal dial after the bad input failed: %v", err)
	}
	echoRoundTrip(t, c, 1000)
	closeKonn(t, c)
}

// closeKonn closes a konnectivity-client connection and checks that the
// server answered promptly. The client's Close returns "tunnel closed"
// instead of nil when its reader, which stops right after delivering the
// CLOSE_RSP, wins a select against it (konnectivity-client v0.37.0,
// conn.Close), so that error is an answer too; the raw-stream tests check
// the CLOSE_RSP itself.
func closeKonn(t testing.TB, c net.Conn) {
	t.Helper()
	start := time.Now()
	if err := c.Close(); err != nil && err.Error() != "tunnel closed" {
		t.Fatalf("closing a tunneled connection: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("closing a tunneled connection took %v; the CLOSE_RSP was late or missing", d)
	}
}

// closingServer accepts on loopback, writes msg and closes at once.
func closingServer(t testing.TB, msg string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, msg)
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// metricValue sums the series of a gauge or counter whose labels include
// the given name/value pairs. The metric must have series.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	v, ok := gather(t, reg, name, labels...)
	if !ok {
		t.Fatalf("metric %s has no series", name)
	}
	return v
}

func gather(t testing.TB, reg *prometheus.Registry, name string, labels ...string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
	series:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue series
				}
			}
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
		return sum, true
	}
	return 0, false
}

// upstreamAgent is an agent written the way upstream konnectivity's is, on
// nothing but the generated AgentService client: no edge-tunnel-features
// metadata, connectIDs it allocates from 1, and DIAL_RSP, DATA and CLOSE_RSP
// on the control stream. It dials nothing: every connection echoes its DATA.
type upstreamAgent struct {
	stream agentpb.AgentService_ConnectClient
	hdr    metadata.MD
	sendMu sync.Mutex
	wg     sync.WaitGroup

	mu        sync.Mutex
	lastID    int64
	open      map[int64]bool
	dials     map[string]int // DIAL_REQs by address
	closeReqs int
	holds     map[string]chan struct{}
}

// startUpstreamAgent connects an upstreamAgent serving host and waits until
// the server routes to it.
func startUpstreamAgent(t testing.TB, e *env, host string) *upstreamAgent {
	t.Helper()
	cc := agentClient(t, e)
	ctx, cancel := context.WithCancel(context.Background())
	md := metadata.Pairs(agentpb.AgentIDKey, host, agentpb.AgentIdentifiersKey, "host="+host)
	s, err := agentpb.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	a := &upstreamAgent{stream: s, open: map[int64]bool{}, dials: map[string]int{}, holds: map[string]chan struct{}{}}
	if a.hdr, err = s.Header(); err != nil {
		cancel()
		t.Fatalf("upstream-style agent handshake: %v", err)
	}
	done := make(chan struct{})
	go func() { defer close(done); a.serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done; a.wg.Wait() })
	waitFor(t, host+" routable", func() bool {
		c, err := e.dialGRPC(context.Background(), net.JoinHostPort(host, "10250"))
		if c != nil {
			c.Close()
		}
		return err == nil
	})
	return a
}

func (a *upstreamAgent) send(p *client.Packet) {
	a.sendMu.Lock()
	defer a.sendMu.Unlock()
	a.stream.Send(p)
}

func (a *upstreamAgent) serve(ctx context.Context) {
	for {
		pkt, err := a.stream.Recv()
		if err != nil {
			return
		}
		switch pkt.Type {
		case client.PacketType_DIAL_REQ:
			r := pkt.GetDialRequest()
			a.mu.Lock()
			a.dials[r.Address]++
			a.lastID++
			id, hold := a.lastID, a.holds[r.Address]
			a.mu.Unlock()
			answer := func() {
				a.mu.Lock()
				a.open[id] = true
				a.mu.Unlock()
				a.send(dialRsp(r.Random, id, ""))
			}
			if hold == nil {
				answer()
				continue
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				select {
				case <-hold:
					answer()
				case <-ctx.Done():
				}
			}()
		case client.PacketType_DATA:
			d := pkt.GetData()
			a.mu.Lock()
			ok := a.open[d.ConnectID]
			a.mu.Unlock()
			if ok {
				a.send(dataPkt(d.ConnectID, d.Data))
			}
		case client.PacketType_CLOSE_REQ:
			id := pkt.GetCloseRequest().GetConnectID()
			a.mu.Lock()
			known := a.open[id]
			delete(a.open, id)
			a.closeReqs++
			a.mu.Unlock()
			if known {
				a.send(closeRsp(id, ""))
			} else {
				a.send(closeRsp(id, "Unknown connectID"))
			}
		}
	}
}

// hold makes the agent hold its answer to dials of address until release.
func (a *upstreamAgent) hold(address string) (release func()) {
	ch := make(chan struct{})
	a.mu.Lock()
	a.holds[address] = ch
	a.mu.Unlock()
	return func() { close(ch) }
}

func (a *upstreamAgent) dialsFor(address string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dials[address]
}

func (a *upstreamAgent) closed() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closeReqs
}
