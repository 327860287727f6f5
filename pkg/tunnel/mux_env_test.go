package tunnel

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// The Mux tests run over a real gRPC connection on 127.0.0.1: a server
// registering MuxService whose handler serves a Mux (or hands its raw
// stream to the test), and a client Mux on the client stream.

type muxService struct {
	agentpb.UnimplementedMuxServiceServer
	handle func(agentpb.MuxService_MuxServer) error
}

func (s muxService) Mux(st agentpb.MuxService_MuxServer) error { return s.handle(st) }

// muxEnv is one MuxService stream with a Mux on the client side and, unless
// raw, one on the server side that accepts every connection.
type muxEnv struct {
	client     *Mux
	stream     agentpb.MuxService_MuxClient
	cancel     context.CancelFunc
	clientDone chan error // Serve's result of the client Mux

	server     *Mux // nil when raw
	serverDone chan error
	accepted   chan *MuxConn
	serverBad  chan error

	raw agentpb.MuxService_MuxServer // the server's stream when raw

	stopOnce sync.Once
	stopFn   func()
}

type muxConfig struct {
	raw        bool // the test plays the server side by hand
	clientOpts MuxOptions
	// onOpen replaces the server's accept-into-channel OnOpen.
	onOpen func(c *MuxConn) error
}

func startMux(t *testing.T, cfg muxConfig) *muxEnv {
	t.Helper()
	e := &muxEnv{
		clientDone: make(chan error, 1),
		serverDone: make(chan error, 1),
		accepted:   make(chan *MuxConn, 1000),
		serverBad:  make(chan error, 100),
	}
	servers := make(chan *Mux, 1)
	raws := make(chan agentpb.MuxService_MuxServer, 1)
	handle := func(st agentpb.MuxService_MuxServer) error {
		if cfg.raw {
			raws <- st
			<-st.Context().Done()
			return nil
		}
		onOpen := cfg.onOpen
		if onOpen == nil {
			onOpen = func(c *MuxConn) error { e.accepted <- c; return nil }
		}
		m := NewMux(st, MuxOptions{OnOpen: onOpen, OnBadFrame: func(err error) {
			select {
			case e.serverBad <- err:
			default:
			}
		}})
		servers <- m
		err := m.Serve()
		e.serverDone <- err
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodecV2(Codec))
	agentpb.RegisterMuxServiceServer(srv, muxService{handle: handle})
	served := make(chan struct{})
	go func() { srv.Serve(lis); close(served) }()
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(CallOptions()...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.stream, err = agentpb.NewMuxServiceClient(cc).Mux(ctx)
	if err != nil {
		t.Fatalf("opening the Mux stream: %v", err)
	}
	e.client = NewMux(e.stream, cfg.clientOpts)
	go func() { e.clientDone <- e.client.Serve() }()
	e.stopFn = func() {
		cancel()
		cc.Close()
		srv.Stop()
		<-served
	}
	t.Cleanup(e.stop)
	// The stream exists at the server once its first message arrives; wait
	// for the handler so the test can use e.server or e.raw.
	deadline := time.After(10 * time.Second)
	if cfg.raw {
		// The handler runs once headers arrive: send them now.
		if err := e.stream.SendMsg(&agentpb.Frame{}); err != nil {
			t.Fatalf("sending an empty frame: %v", err)
		}
		select {
		case e.raw = <-raws:
		case <-deadline:
			t.Fatal("the MuxService handler never ran")
		}
		var f agentpb.Frame
		if err := e.raw.RecvMsg(&f); err != nil || proto.Size(&f) != 0 {
			t.Fatalf("raw server: first frame %v, %v; want the empty one", &f, err)
		}
		return e
	}
	// An empty frame (conn 0) is one the server Mux drops as unknown.
	if err := e.stream.SendMsg(&agentpb.Frame{}); err != nil {
		t.Fatalf("sending an empty frame: %v", err)
	}
	select {
	case e.server = <-servers:
	case <-deadline:
		t.Fatal("the MuxService handler never ran")
	}
	return e
}

func (e *muxEnv) stop() { e.stopOnce.Do(e.stopFn) }

// accept returns the next connection the server Mux accepted.
func (e *muxEnv) accept(t *testing.T) *MuxConn {
	t.Helper()
	select {
	case c := <-e.accepted:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the server accepted no connection in 10s")
		return nil
	}
}

// connData is the payload of connection id in direction dir: different
// for every connection and direction, so crossed streams show.
func connData(id int64, dir byte, n int) []byte {
	var seed [32]byte
	binary.LittleEndian.PutUint64(seed[:], uint64(id))
	seed[8] = dir
	b := make([]byte, n)
	rand.NewChaCha8(seed).Read(b)
	return b
}

// eventually polls cond every 10ms for up to d.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGoroutines waits until at most max goroutines run, and fails with
// their stacks if that does not happen within d.
func waitGoroutines(t *testing.T, max int, d time.Duration, what string) {
	t.Helper()
	if eventually(d, func() bool { return runtime.NumGoroutine() <= max }) {
		return
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Fatalf("%s: %d goroutines after %v, want at most %d:\n%s", what, runtime.NumGoroutine(), d, max, buf)
}

// goroutineBaseline counts goroutines once a Mux environment has run and
// stopped, so gRPC's lazily started globals are in the count.
func goroutineBaseline(t *testing.T) int {
	t.Helper()
	e := startMux(t, muxConfig{})
	e.stop()
	time.Sleep(50 * time.Millisecond)
	var n int
	eventually(2*time.Second, func() bool {
		before := runtime.NumGoroutine()
		time.Sleep(20 * time.Millisecond)
		n = runtime.NumGoroutine()
		return n == before
	})
	return n
}

// within runs f and fails if it takes longer than d: a hang guard, not a
// speed test.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%s: not done after %v:\n%s", what, d, buf)
	}
}

// exchange writes send to c while it reads want bytes of the peer's payload
// and compares them.
func exchange(c *MuxConn, send, want []byte) error {
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(send)
		werr <- err
	}()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("connection %d: reading %d bytes: %w", c.ID(), len(want), err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("connection %d: received %d bytes that differ from what the peer sent", c.ID(), len(want))
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("connection %d: writing %d bytes: %w", c.ID(), len(send), err)
	}
	return nil
}

// finish ends an exchanged connection: the closer closes, the other side
// must then read io.EOF and closes too.
func finish(c *MuxConn, closer bool) error {
	if !closer {
		var b [1]byte
		if n, err := c.Read(b[:]); n != 0 || err != io.EOF {
			return fmt.Errorf("connection %d: after the peer's close Read = %d, %v; want 0, io.EOF", c.ID(), n, err)
		}
	}
	return c.Close()
}
