package tunnel

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMuxManyConnections: 50 connections opened at once move data of every
// size both ways (zero, tiny, beyond the window) without mixing it up, are
// closed from either side, and leave neither Mux holding anything; the
// server accepted exactly the opened IDs.
func TestMuxManyConnections(t *testing.T) {
	e := startMux(t, muxConfig{})
	type plan struct {
		up, down     int
		clientCloses bool
	}
	rng := rand.New(rand.NewPCG(7, 11))
	size := func(i int) int {
		switch i % 10 {
		case 0:
			return 3*MuxWindow/2 + 7
		case 1:
			return MuxWindow + 1
		case 2:
			return 0
		case 3:
			return 1
		case 4:
			return ChunkSize + 1
		}
		return rng.IntN(64 << 10)
	}
	const conns = 50
	plans := map[int64]plan{}
	for i := range conns {
		id := int64(i)*7919 + 1<<40
		plans[id] = plan{up: size(i), down: size(i + 3), clientCloses: i%2 == 0}
	}

	var wg sync.WaitGroup
	var mu sync.Mutex
	acceptedIDs := map[int64]bool{}
	wg.Add(1)
	go func() { // the server: every accepted connection answers its plan
		defer wg.Done()
		var sw sync.WaitGroup
		for range conns {
			var c *MuxConn
			select {
			case c = <-e.accepted:
			case <-time.After(20 * time.Second):
				t.Error("the server did not accept all connections")
				return
			}
			mu.Lock()
			if acceptedIDs[c.ID()] {
				t.Errorf("connection %d accepted twice", c.ID())
			}
			acceptedIDs[c.ID()] = true
			mu.Unlock()
			p, ok := plans[c.ID()]
			if !ok {
				t.Errorf("the server accepted connection %d, which was never opened", c.ID())
				c.Close()
				continue
			}
			sw.Add(1)
			go func() {
				defer sw.Done()
				if err := exchange(c, connData(c.ID(), 'd', p.down), connData(c.ID(), 'u', p.up)); err != nil {
					t.Errorf("server: %v", err)
					c.Close()
					return
				}
				if err := finish(c, !p.clientCloses); err != nil {
					t.Errorf("server: %v", err)
				}
			}()
		}
		sw.Wait()
	}()
	for id, p := range plans {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := e.client.Open(id)
			if err != nil {
				t.Errorf("Open(%d): %v", id, err)
				return
			}
			if err := exchange(c, connData(id, 'u', p.up), connData(id, 'd', p.down)); err != nil {
				t.Errorf("client: %v", err)
				c.Close()
				return
			}
			if err := finish(c, p.clientCloses); err != nil {
				t.Errorf("client: %v", err)
			}
		}()
	}
	within(t, 60*time.Second, "50 connections", wg.Wait)
	if t.Failed() {
		return
	}
	if !eventually(5*time.Second, func() bool { return e.client.Len() == 0 && e.server.Len() == 0 }) {
		t.Fatalf("closed connections still held: client Mux %d, server Mux %d", e.client.Len(), e.server.Len())
	}
	if len(acceptedIDs) != conns {
		t.Fatalf("the server accepted %d connections, want %d", len(acceptedIDs), conns)
	}
}

// TestMuxStalledReader: a connection whose reader never reads stops its
// sender after one window, and another connection on the same stream
// moves 32 MiB meanwhile; once the reader reads, the sender completes.
func TestMuxStalledReader(t *testing.T) {
	e := startMux(t, muxConfig{})
	a, err := e.client.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	sa := e.accept(t)
	b, err := e.client.Open(2)
	if err != nil {
		t.Fatal(err)
	}
	sb := e.accept(t)

	const piece = 16 << 10
	const total = 4 * MuxWindow
	payloadA := connData(1, 'u', total)
	var written atomic.Int64
	aDone := make(chan error, 1)
	go func() {
		for off := 0; off < total; off += piece {
			if _, err := a.Write(payloadA[off : off+piece]); err != nil {
				aDone <- err
				return
			}
			written.Add(piece)
		}
		aDone <- nil
	}()
	// The sender fills the window and stops there.
	if !eventually(10*time.Second, func() bool { return written.Load() >= MuxWindow }) {
		t.Fatalf("the sender wrote only %d bytes of a %d-byte window in 10s", written.Load(), MuxWindow)
	}
	blocked := func(when string) {
		t.Helper()
		time.Sleep(100 * time.Millisecond)
		if w := written.Load(); w > MuxWindow+ChunkSize {
			t.Fatalf("%s: the sender wrote %d bytes to a reader that reads nothing, more than the window %d (+%d)", when, w, MuxWindow, ChunkSize)
		}
		select {
		case err := <-aDone:
			t.Fatalf("%s: the sender to a stalled reader finished (%v)", when, err)
		default:
		}
	}
	blocked("before the bulk transfer")

	// The other connection moves 32 MiB all the same.
	const bulk = 32 << 20
	payloadB := pattern(bulk)
	within(t, 30*time.Second, "32 MiB on a connection beside a stalled one", func() {
		werr := make(chan error, 1)
		go func() { _, err := b.Write(payloadB); werr <- err }()
		got := make([]byte, bulk)
		if _, err := io.ReadFull(sb, got); err != nil {
			t.Errorf("reading the bulk connection: %v", err)
			return
		}
		if !bytes.Equal(got, payloadB) {
			t.Error("the bulk connection's bytes differ")
		}
		if err := <-werr; err != nil {
			t.Errorf("writing the bulk connection: %v", err)
		}
	})
	if t.Failed() {
		return
	}
	blocked("after the bulk transfer")

	// The stalled reader reads at last: everything arrives, the sender ends.
	within(t, 20*time.Second, "the stalled connection's reader", func() {
		got := make([]byte, total)
		if _, err := io.ReadFull(sa, got); err != nil {
			t.Errorf("reading the stalled connection: %v", err)
			return
		}
		if !bytes.Equal(got, payloadA) {
			t.Error("the stalled connection's bytes differ")
		}
		if err := <-aDone; err != nil {
			t.Errorf("the stalled connection's sender: %v", err)
		}
	})
}

// tcpEcho serves TCP connections on 127.0.0.1 by echoing them, one
// goroutine each; stop closes the listener.
func tcpEcho(t *testing.T) (addr string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { lis.Close(); wg.Wait() }) }
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

// TestMuxSplicePush: Splice between TCP sockets and MuxConns on both
// sides moves bytes intact, and because MuxConn is a Pusher an idle
// spliced connection costs one goroutine per side (the one waiting on its
// socket), not two. Closing the clients ends everything.
func TestMuxSplicePush(t *testing.T) {
	base := goroutineBaseline(t)
	echo, stopEcho := tcpEcho(t)
	e := startMux(t, muxConfig{})

	// Server side: each accepted connection is spliced to the echo server.
	var splices sync.WaitGroup
	splices.Add(1)
	go func() {
		defer splices.Done()
		for c := range e.accepted {
			splices.Add(1)
			go func() {
				defer splices.Done()
				tc, err := net.Dial("tcp", echo)
				if err != nil {
					t.Errorf("dialing the echo server: %v", err)
					c.Close()
					return
				}
				Splice(tc, c)
			}()
		}
	}()
	// Client side: each TCP connection to front is a new Mux connection.
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	var nextID atomic.Int64
	splices.Add(1)
	go func() {
		defer splices.Done()
		for {
			tc, err := front.Accept()
			if err != nil {
				return
			}
			splices.Add(1)
			go func() {
				defer splices.Done()
				mc, err := e.client.Open(nextID.Add(1))
				if err != nil {
					t.Errorf("Open: %v", err)
					tc.Close()
					return
				}
				Splice(tc, mc)
			}()
		}
	}()

	const conns = 200
	clients := make([]net.Conn, conns)
	within(t, 30*time.Second, "200 spliced echo round trips", func() {
		var wg sync.WaitGroup
		for i := range clients {
			c, err := net.Dial("tcp", front.Addr().String())
			if err != nil {
				t.Errorf("dialing the front listener: %v", err)
				return
			}
			clients[i] = c
			n := 1 + i*97%3000
			if i < 3 {
				n = 5*MuxWindow/2 + i // beyond the window, through both pushes
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				msg := connData(int64(i), 's', n)
				werr := make(chan error, 1)
				go func() { _, err := c.Write(msg); werr <- err }()
				got := make([]byte, n)
				if _, err := io.ReadFull(c, got); err != nil {
					t.Errorf("connection %d: reading the echo: %v", i, err)
					return
				}
				if !bytes.Equal(got, msg) {
					t.Errorf("connection %d: the echo of %d bytes differs", i, n)
				}
				if err := <-werr; err != nil {
					t.Errorf("connection %d: writing: %v", i, err)
				}
			}()
		}
		wg.Wait()
	})
	if t.Failed() {
		return
	}
	// Idle now: per connection one echo goroutine and one Splice goroutine
	// on each side. Without PushTo each Splice would keep a second one.
	const perConnOther = 1 // the echo server's
	limit := base + conns*perConnOther + 2*conns*11/10 + 30
	eventually(5*time.Second, func() bool { return runtime.NumGoroutine() <= limit })
	if n := runtime.NumGoroutine(); n > limit {
		perSide := float64(n-base-conns*perConnOther) / float64(2*conns)
		t.Fatalf("%d idle spliced connections run %d goroutines over the baseline of %d: %.2f per connection and side, want about 1 (the socket reader)",
			conns, n-base, base, perSide)
	}
	if e.client.Len() != conns || e.server.Len() != conns {
		t.Fatalf("Muxes hold %d (client) and %d (server) connections, want %d", e.client.Len(), e.server.Len(), conns)
	}

	// Closing the clients ends every splice on both sides.
	for _, c := range clients {
		c.Close()
	}
	if !eventually(10*time.Second, func() bool { return e.client.Len() == 0 && e.server.Len() == 0 }) {
		t.Fatalf("after the clients closed, Muxes still hold %d (client) and %d (server) connections", e.client.Len(), e.server.Len())
	}
	front.Close()
	e.stop()
	select {
	case <-e.serverDone: // no OnOpen any more: the accept loop may end
	case <-time.After(10 * time.Second):
		t.Fatal("the server Mux did not end with the stream")
	}
	close(e.accepted)
	stopEcho()
	within(t, 10*time.Second, "the splices' end", splices.Wait)
	waitGoroutines(t, base, 10*time.Second, "after every spliced connection closed")
}

// TestMuxStreamEnd: when the stream ends (the client cancels it; or it
// half-closes, the server's Serve returns nil and its handler returns, which
// the client's Serve sees as a clean end), every connection on each side
// ends with ErrMuxEnded once its queued bytes are read, pushes report the
// end, a writer waiting for credit returns, Open fails, and no goroutine
// stays behind.
func TestMuxStreamEnd(t *testing.T) {
	for _, how := range []string{"cancel", "clean"} {
		t.Run(how, func(t *testing.T) {
			base := goroutineBaseline(t)
			e := startMux(t, muxConfig{})
			type pair struct{ c, s *MuxConn }
			var ps []pair
			for id := int64(1); id <= 4; id++ {
				c, err := e.client.Open(id)
				if err != nil {
					t.Fatal(err)
				}
				ps = append(ps, pair{c, e.accept(t)})
			}
			// 1: both sides' readers wait in Read.
			reads := make(chan error, 2)
			for _, c := range []*MuxConn{ps[0].c, ps[0].s} {
				go func() {
					var b [10]byte
					_, err := c.Read(b[:])
					reads <- err
				}()
			}
			// 2: both sides push to a writer.
			pushes := make(chan error, 2)
			var sink1, sink2 bytes.Buffer
			for i, c := range []*MuxConn{ps[1].c, ps[1].s} {
				w := []*bytes.Buffer{&sink1, &sink2}[i]
				if !c.PushTo(w, func(n int64, err error) { pushes <- err }) {
					t.Fatal("PushTo refused a fresh connection")
				}
			}
			// 3: the client's writer waits for credit the server never grants.
			wdone := make(chan error, 1)
			go func() {
				_, err := ps[2].c.Write(make([]byte, 2*MuxWindow))
				wdone <- err
			}()
			// 4: bytes wait, unread, in the client's queue.
			queued := []byte("still queued")
			if _, err := ps[3].s.Write(queued); err != nil {
				t.Fatal(err)
			}
			if !eventually(5*time.Second, func() bool {
				ps[3].c.mu.Lock()
				defer ps[3].c.mu.Unlock()
				return ps[3].c.queued == len(queued)
			}) {
				t.Fatal("the queued bytes never arrived")
			}
			// The writer has sent its window and waits for credit: the
			// server holds all of it. (A send after CloseSend would end the
			// stream with an error instead of cleanly.)
			if !eventually(5*time.Second, func() bool {
				ps[2].s.mu.Lock()
				defer ps[2].s.mu.Unlock()
				return ps[2].s.queued == MuxWindow
			}) {
				t.Fatal("the writer's window never arrived")
			}
			time.Sleep(50 * time.Millisecond) // the readers block

			switch how {
			case "cancel":
				e.cancel()
			case "clean":
				// gRPC allows no CloseSend during a SendMsg: take the
				// Mux's send lock.
				e.client.sendMu.Lock()
				err := e.stream.CloseSend()
				e.client.sendMu.Unlock()
				if err != nil {
					t.Fatal(err)
				}
			}
			for _, side := range []struct {
				name string
				done chan error
			}{{"client", e.clientDone}, {"server", e.serverDone}} {
				select {
				case err := <-side.done:
					if how == "clean" && err != nil {
						t.Errorf("%s Serve after a clean end: %v, want nil", side.name, err)
					}
					if how == "cancel" && err == nil && side.name == "client" {
						t.Error("client Serve after its stream was canceled: nil, want the error")
					}
				case <-time.After(10 * time.Second):
					t.Fatalf("the %s Mux's Serve did not return after the stream ended", side.name)
				}
			}
			for i := range 2 {
				select {
				case err := <-reads:
					if !errors.Is(err, ErrMuxEnded) {
						t.Errorf("a waiting Read returned %v, want ErrMuxEnded", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("waiting Read %d did not return after the stream ended", i)
				}
				select {
				case err := <-pushes:
					if !errors.Is(err, ErrMuxEnded) {
						t.Errorf("a push reported %v, want ErrMuxEnded", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("push %d did not report the stream's end", i)
				}
			}
			select {
			case err := <-wdone:
				if err == nil {
					t.Error("a Write waiting for credit succeeded after the stream ended")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a Write waiting for credit still waits after the stream ended")
			}
			b := make([]byte, 100)
			if n, err := ps[3].c.Read(b); err != nil || string(b[:n]) != string(queued) {
				t.Errorf("reading the queued bytes after the end: %q, %v; want %q", b[:n], err, queued)
			}
			for _, p := range ps {
				for _, c := range []*MuxConn{p.c, p.s} {
					// Queued bytes first (a window's on the server side of
					// connection 3), then the end.
					if _, err := io.Copy(io.Discard, c); !errors.Is(err, ErrMuxEnded) {
						t.Errorf("connection %d: Read after the end = %v, want ErrMuxEnded", c.ID(), err)
					}
					if _, err := c.Write([]byte("x")); err == nil {
						t.Errorf("connection %d: Write after the end succeeded", c.ID())
					}
				}
			}
			if _, err := e.client.Open(9); !errors.Is(err, ErrMuxEnded) {
				t.Errorf("Open after the end: %v, want ErrMuxEnded", err)
			}
			if e.client.Len() != 0 || e.server.Len() != 0 {
				t.Errorf("ended Muxes hold %d (client) and %d (server) connections", e.client.Len(), e.server.Len())
			}
			for _, p := range ps {
				p.c.Close()
				p.s.Close()
			}
			e.stop()
			waitGoroutines(t, base, 10*time.Second, "after the stream ended")
		})
	}
}

// TestMuxSmallReads: Read with buffers smaller than, and straddling, the
// received chunks returns every byte in order.
func TestMuxSmallReads(t *testing.T) {
	e := startMux(t, muxConfig{})
	c, err := e.client.Open(5)
	if err != nil {
		t.Fatal(err)
	}
	s := e.accept(t)
	const total = 3*ChunkSize + 777
	payload := pattern(total)
	go s.Write(payload)
	var got []byte
	sizes := []int{1, 7, 4093, ChunkSize + 3, 65536}
	within(t, 20*time.Second, "small reads", func() {
		for i := 0; len(got) < total; i++ {
			b := make([]byte, sizes[i%len(sizes)])
			n, err := c.Read(b)
			if err != nil {
				t.Errorf("Read after %d bytes: %v", len(got), err)
				return
			}
			if n == 0 {
				t.Errorf("Read(%d bytes) returned 0, nil", len(b))
				return
			}
			got = append(got, b[:n]...)
		}
	})
	if !bytes.Equal(got, payload) {
		t.Fatalf("read %d bytes that differ from the %d written", len(got), total)
	}
}
