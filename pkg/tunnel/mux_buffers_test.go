package tunnel

import (
	"bytes"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// TestMuxSendBuffersPooled: SendBuffers sends pooled buffers intact and
// frees each exactly once (mem panics on a second free, the pool counts
// the first), also when the connection is closed while some still wait
// for credit.
func TestMuxSendBuffersPooled(t *testing.T) {
	e := startMux(t, muxConfig{})
	c, err := e.client.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	s := e.accept(t)
	pool := &countingPool{}
	payload := connData(1, 'b', 5*MuxWindow/2+3)
	serr := make(chan error, 1)
	go func() { serr <- c.SendBuffers(pooled(pool, payload, 50_000)) }()
	got := make([]byte, len(payload))
	within(t, 20*time.Second, "reading what SendBuffers sent", func() {
		if _, err := io.ReadFull(s, got); err != nil {
			t.Errorf("reading: %v", err)
		}
	})
	if !bytes.Equal(got, payload) {
		t.Fatal("the sent buffers arrived different")
	}
	if err := <-serr; err != nil {
		t.Fatal(err)
	}
	if !eventually(5*time.Second, func() bool { return pool.out.Load() == 0 }) {
		t.Fatalf("%d sent buffers never freed", pool.out.Load())
	}

	// A reader that reads nothing: SendBuffers waits after a window; Close
	// frees what is left.
	c2, err := e.client.Open(2)
	if err != nil {
		t.Fatal(err)
	}
	e.accept(t)
	go func() { serr <- c2.SendBuffers(pooled(pool, connData(2, 'b', 3*MuxWindow), 50_000)) }()
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-serr:
		t.Fatalf("SendBuffers to a reader that reads nothing returned %v", err)
	default:
	}
	c2.Close()
	select {
	case err := <-serr:
		if err == nil {
			t.Fatal("SendBuffers on a closed connection returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("SendBuffers still waits after Close")
	}
	if !eventually(5*time.Second, func() bool { return pool.out.Load() == 0 }) {
		t.Fatalf("%d buffers never freed after Close", pool.out.Load())
	}
}

// feedFrame hands msg to m as Serve would: Codec unmarshals it from buffers
// of pool (cut at split) into a muxFrame, gRPC frees its reference, the
// Mux handles the frame.
func feedFrame(m *Mux, pool *countingPool, msg []byte, split int) error {
	var f muxFrame
	data := pooled(pool, msg, split)
	err := Codec.Unmarshal(data, &f)
	data.Free()
	if err != nil {
		return err
	}
	m.handle(&f)
	return nil
}

// TestMuxReceivedBuffersFreed: received data stays in the receive buffers
// until read, and Close frees what is still queued, each buffer once.
func TestMuxReceivedBuffersFreed(t *testing.T) {
	for _, mode := range []string{"read", "push", "close"} {
		t.Run(mode, func(t *testing.T) {
			pool := &countingPool{}
			var conns []*MuxConn
			m := NewMux(&wireStream{}, MuxOptions{OnOpen: func(c *MuxConn) error { conns = append(conns, c); return nil }})
			open, _ := proto.Marshal(&agentpb.Frame{Conn: 4, Open: true})
			if err := feedFrame(m, pool, open, 4096); err != nil || len(conns) != 1 {
				t.Fatalf("open frame: %v, %d connections", err, len(conns))
			}
			c := conns[0]
			var want []byte
			for _, n := range []int{100_000, 5000, ChunkSize} {
				p := connData(int64(n), 'r', n)
				want = append(want, p...)
				wire, _ := proto.Marshal(&agentpb.Frame{Conn: 4, Data: p})
				if err := feedFrame(m, pool, wire, 16384); err != nil {
					t.Fatal(err)
				}
			}
			if pool.out.Load() == 0 {
				t.Fatal("the received data was copied out of the receive buffers")
			}
			switch mode {
			case "read":
				var got []byte
				b := make([]byte, 3001)
				for len(got) < len(want) {
					n, err := c.Read(b)
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, b[:n]...)
				}
				if !bytes.Equal(got, want) {
					t.Fatal("read bytes differ")
				}
			case "push":
				var sink bytes.Buffer
				done := make(chan error, 1)
				c.PushTo(&sink, func(n int64, err error) { done <- err })
				if !eventually(5*time.Second, func() bool {
					c.mu.Lock()
					defer c.mu.Unlock()
					return c.queued == 0 && !c.pushing
				}) {
					t.Fatal("the push never drained the queue")
				}
				if !bytes.Equal(sink.Bytes(), want) {
					t.Fatal("pushed bytes differ")
				}
				c.Close()
				select {
				case err := <-done:
					if err != nil {
						t.Fatalf("push after Close reported %v, want nil", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the push did not report Close")
				}
			case "close":
				b := make([]byte, 777) // leave a split buffer at the head
				if _, err := c.Read(b); err != nil {
					t.Fatal(err)
				}
			}
			c.Close()
			if n := pool.out.Load(); n != 0 {
				t.Fatalf("%d receive buffers never freed", n)
			}
		})
	}
}
