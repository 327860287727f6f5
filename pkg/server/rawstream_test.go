package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
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
	return serveTCP(t, "127.0.0.1:0", func(c net.Conn) { io.WriteString(c, msg); c.Close() })
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
