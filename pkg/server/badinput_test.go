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
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
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
