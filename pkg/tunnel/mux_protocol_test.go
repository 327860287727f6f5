package tunnel

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// rawFrames reads the frames a client Mux sends to the test's raw server.
func rawFrames(t *testing.T, e *muxEnv) <-chan *agentpb.Frame {
	ch := make(chan *agentpb.Frame, 1000)
	go func() {
		defer close(ch)
		for {
			f := &agentpb.Frame{}
			if err := e.raw.RecvMsg(f); err != nil {
				return
			}
			ch <- f
		}
	}()
	return ch
}

// nextFrame returns the next frame of conn that matches want, skipping
// credit frames.
func nextFrame(t *testing.T, frames <-chan *agentpb.Frame, conn int64, what string) *agentpb.Frame {
	t.Helper()
	return nextFrameWithin(t, frames, conn, what, 10*time.Second)
}

func nextFrameWithin(t *testing.T, frames <-chan *agentpb.Frame, conn int64, what string, d time.Duration) *agentpb.Frame {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatalf("waiting for %s: the stream ended", what)
			}
			if f.Conn == conn && !(f.Credit > 0 && !f.Open && !f.Close && len(f.Data) == 0) {
				return f
			}
		case <-deadline:
			t.Fatalf("waiting for %s: nothing in %v", what, d)
		}
	}
}

// TestMuxProtocolViolations: data for an unknown connection is dropped, a
// sender that overruns its window has that connection closed with an
// error its peer sees, and OnBadFrame hears of the overrun; the stream
// and the other connections go on.
func TestMuxProtocolViolations(t *testing.T) {
	bad := make(chan error, 100)
	e := startMux(t, muxConfig{raw: true, clientOpts: MuxOptions{OnBadFrame: func(err error) { bad <- err }}})
	frames := rawFrames(t, e)
	send := func(f *agentpb.Frame) {
		t.Helper()
		if err := e.raw.SendMsg(f); err != nil {
			t.Fatalf("raw send: %v", err)
		}
	}
	c7, err := e.client.Open(7)
	if err != nil {
		t.Fatal(err)
	}
	c8, err := e.client.Open(8)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []int64{7, 8} {
		if f := nextFrame(t, frames, id, "an open frame"); !f.Open {
			t.Fatalf("first frame of %d: %v, want open", id, f)
		}
	}
	// ping checks connection 8 still works both ways; since frames are in
	// order it also means everything sent before was handled.
	ping := func(what string) {
		t.Helper()
		send(&agentpb.Frame{Conn: 8, Data: []byte("ping " + what)})
		b := make([]byte, 100)
		if n, err := c8.Read(b); err != nil || string(b[:n]) != "ping "+what {
			t.Fatalf("%s: connection 8 read %q, %v", what, b[:n], err)
		}
		if _, err := c8.Write([]byte("pong " + what)); err != nil {
			t.Fatalf("%s: connection 8 write: %v", what, err)
		}
		if f := nextFrame(t, frames, 8, "a pong"); string(f.Data) != "pong "+what {
			t.Fatalf("%s: connection 8 sent %v, want the pong", what, f)
		}
	}
	noBad := func(what string) {
		t.Helper()
		select {
		case err := <-bad:
			t.Fatalf("%s: OnBadFrame(%v)", what, err)
		default:
		}
	}

	// Data for a connection this side does not know: dropped quietly (it
	// may be one it forgot).
	send(&agentpb.Frame{Conn: 12345, Data: []byte("nobody's")})
	ping("after data for an unknown connection")
	noBad("data for an unknown connection")

	// Exactly the window is allowed...
	chunk := make([]byte, ChunkSize)
	for sent := 0; sent < MuxWindow; {
		n := min(ChunkSize, MuxWindow-sent)
		send(&agentpb.Frame{Conn: 7, Data: chunk[:n]})
		sent += n
	}
	ping("after a full window")
	noBad("a full window")
	// ...one byte more is not.
	send(&agentpb.Frame{Conn: 7, Data: []byte{1}})
	select {
	case err := <-bad:
		if !strings.Contains(err.Error(), "window") {
			t.Errorf("OnBadFrame(%v): want it to name the window", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnBadFrame did not hear of a window overrun")
	}
	f := nextFrame(t, frames, 7, "the overrun connection's close")
	if !f.Close || f.Error == "" {
		t.Fatalf("the overrun connection sent %v, want a close with an error", f)
	}
	b := make([]byte, 10)
	if _, err := c7.Read(b); err == nil {
		t.Fatal("Read on the connection closed for an overrun succeeded")
	}
	if _, err := c7.Write(b); err == nil {
		t.Fatal("Write on the connection closed for an overrun succeeded")
	}
	ping("after the overrun")
	// The peer's own close lets the client forget the connection.
	send(&agentpb.Frame{Conn: 7, Close: true})
	ping("after the peer's close")
	if n := e.client.Len(); n != 1 {
		t.Fatalf("client Mux holds %d connections, want 1 (connection 8)", n)
	}
	noBad("the end")
}

// TestMuxUnexpectedOpen: an open frame on the side without OnOpen is
// reported to OnBadFrame and answered with a close carrying an error, so
// the peer's connection does not wait forever; the stream goes on.
func TestMuxUnexpectedOpen(t *testing.T) {
	bad := make(chan error, 100)
	e := startMux(t, muxConfig{raw: true, clientOpts: MuxOptions{OnBadFrame: func(err error) { bad <- err }}})
	frames := rawFrames(t, e)
	c8, err := e.client.Open(8)
	if err != nil {
		t.Fatal(err)
	}
	nextFrame(t, frames, 8, "an open frame")
	if err := e.raw.SendMsg(&agentpb.Frame{Conn: 99, Open: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-bad:
		if !strings.Contains(err.Error(), "open") {
			t.Errorf("OnBadFrame(%v): want it to name the open frame", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnBadFrame did not hear of an open frame on the side without OnOpen")
	}
	// The stream goes on.
	if err := e.raw.SendMsg(&agentpb.Frame{Conn: 8, Data: []byte("still here")}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 100)
	if n, err := c8.Read(b); err != nil || string(b[:n]) != "still here" {
		t.Fatalf("connection 8 after the unexpected open: %q, %v", b[:n], err)
	}
	if e.client.Len() != 1 {
		t.Fatalf("client Mux holds %d connections, want 1", e.client.Len())
	}
	// The peer that sent the open holds a connection: it must hear that
	// this side will not take it. The receive loop would have sent that
	// before it handled the data read above.
	f := nextFrameWithin(t, frames, 99, "a refusal of the unexpected open", 2*time.Second)
	if !f.Close || f.Error == "" {
		t.Fatalf("answer to the unexpected open: %v, want a close with an error", f)
	}
}

// TestMuxWriteFramesAndWindow: Write of many chunks' worth goes out in
// data frames of at most ChunkSize, and never has more than MuxWindow
// bytes outstanding beyond the credit the receiver granted.
func TestMuxWriteFramesAndWindow(t *testing.T) {
	e := startMux(t, muxConfig{raw: true})
	frames := rawFrames(t, e)
	c, err := e.client.Open(3)
	if err != nil {
		t.Fatal(err)
	}
	nextFrame(t, frames, 3, "the open frame")
	const total = 2*MuxWindow + 5
	payload := pattern(total)
	wdone := make(chan error, 1)
	go func() {
		n, err := c.Write(payload)
		if err == nil && n != total {
			err = fmt.Errorf("wrote %d of %d bytes", n, total)
		}
		wdone <- err
	}()
	var got []byte
	granted := 0
	within(t, 20*time.Second, "receiving the writes", func() {
		for len(got) < total {
			f := nextFrame(t, frames, 3, "data")
			if len(f.Data) == 0 || f.Open || f.Close {
				t.Errorf("frame %v, want data", f)
				return
			}
			if len(f.Data) > ChunkSize {
				t.Errorf("a data frame of %d bytes, more than ChunkSize %d", len(f.Data), ChunkSize)
			}
			got = append(got, f.Data...)
			out := len(got) - granted
			if out > MuxWindow {
				t.Errorf("%d bytes outstanding, more than the window %d", out, MuxWindow)
				return
			}
			if out < MuxWindow || len(got) == total {
				continue
			}
			// The window is used up: nothing more may come until a grant.
			select {
			case f := <-frames:
				t.Errorf("with the window used up the sender sent a frame (conn %d, %d bytes of data)", f.Conn, len(f.Data))
				return
			case <-time.After(100 * time.Millisecond):
			}
			// Grant back an odd-sized batch, as a reader would.
			if err := e.raw.SendMsg(&agentpb.Frame{Conn: 3, Credit: 300_000}); err != nil {
				t.Errorf("granting credit: %v", err)
				return
			}
			granted += 300_000
		}
	})
	if t.Failed() {
		return
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("the written bytes differ")
	}
	if err := <-wdone; err != nil {
		t.Fatal(err)
	}
}

// TestMuxRefusedOpen: a connection OnOpen refuses is closed with the
// refusal's reason, which the opener's Read returns, whatever bytes the
// reason holds (a dial error may quote a target's invalid UTF-8, which a
// proto3 string cannot carry); both Muxes then forget it.
func TestMuxRefusedOpen(t *testing.T) {
	for _, tc := range []struct{ name, reason, want string }{
		{"text", "dial tcp 10.0.0.1:80: connection refused", "connection refused"},
		{"invalid-utf8", "dial tcp: lookup bad\xffhost: no such host", "no such host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e *muxEnv
			e = startMux(t, muxConfig{onOpen: func(c *MuxConn) error {
				if c.ID() == 2 {
					e.accepted <- c
					return nil
				}
				return errors.New(tc.reason)
			}})
			other, err := e.client.Open(2)
			if err != nil {
				t.Fatal(err)
			}
			otherS := e.accept(t)
			c, err := e.client.Open(1)
			if err != nil {
				t.Fatal(err)
			}
			rerr := make(chan error, 1)
			go func() {
				var b [1]byte
				_, err := c.Read(b[:])
				rerr <- err
			}()
			select {
			case err := <-rerr:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("Read on a refused connection: %v, want the reason %q", err, tc.reason)
				}
			case <-time.After(3 * time.Second):
				t.Fatalf("Read on a connection the server refused (%q) still waits after 3s", tc.reason)
			}
			c.Close()
			if !eventually(5*time.Second, func() bool { return e.client.Len() == 1 && e.server.Len() == 1 }) {
				t.Fatalf("the refused connection is still held: client Mux %d, server Mux %d connections, want 1 each", e.client.Len(), e.server.Len())
			}
			// The refusal ended that connection only.
			serr := make(chan error, 1)
			go func() { serr <- exchange(otherS, []byte("down"), []byte("up")) }()
			if err := exchange(other, []byte("up"), []byte("down")); err != nil {
				t.Fatalf("the other connection after the refusal: %v", err)
			}
			if err := <-serr; err != nil {
				t.Fatalf("the other connection after the refusal, server side: %v", err)
			}
		})
	}
}
