package tunnel

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// FuzzMuxFrames feeds arbitrary received messages, cut into receive
// buffers at an arbitrary size, through Codec into a Mux's receive path, as
// Serve does. It must never panic; the in-place parse of a muxFrame must
// agree with protobuf's decoding of the same bytes; no connection may hold
// more than its window; and once the connections end every receive buffer
// is freed exactly once.
func FuzzMuxFrames(f *testing.F) {
	frame := func(fr *agentpb.Frame) []byte {
		b, err := proto.Marshal(fr)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	data := frame(&agentpb.Frame{Conn: 1, Data: pattern(300)})
	f.Add(data, frame(&agentpb.Frame{Conn: 1, Credit: 4096}), uint16(1024))
	f.Add(frame(&agentpb.Frame{Conn: 2, Open: true}), frame(&agentpb.Frame{Conn: 2, Data: []byte("hello")}), uint16(3))
	f.Add(frame(&agentpb.Frame{Conn: 2, Open: true, Data: pattern(200)}), frame(&agentpb.Frame{Conn: 2, Close: true, Error: "refused"}), uint16(2000))
	f.Add(frame(&agentpb.Frame{Conn: 1, Close: true}), frame(&agentpb.Frame{Conn: 1, Data: []byte("late")}), uint16(64))
	f.Add(frame(&agentpb.Frame{Conn: -1 << 62, Data: []byte{0}}), []byte{}, uint16(1))
	f.Add(data[:len(data)-1], append(data[:len(data):len(data)], 0x08, 0x01), uint16(4096)) // truncated; a trailing field
	f.Add([]byte{0x08, 0x01, 0x32, 0xff, 0xff, 0xff, 0xff, 0x0f}, []byte{0x08}, uint16(7))  // huge length; cut varint
	f.Add(frame(&agentpb.Frame{Conn: 3, Data: []byte("x")}), frame(&agentpb.Frame{Conn: 2, Open: true, Credit: 1 << 31}), uint16(5))

	f.Fuzz(muxFramesBody)
}

func muxFramesBody(t *testing.T, a, b []byte, split uint16) {
	if len(a)+len(b) > 16<<10 {
		// Frames are parsed by their first bytes; long ones only make an
		// execution slow, and a slow one can hit Go 1.26's fuzztime race
		// (golang/go#75804, see hack/fuzz.sh).
		return
	}
	cut := int(split)%(64<<10) + 1
	pool := &countingPool{}
	var accepted []*MuxConn
	m := NewMux(&wireStream{}, MuxOptions{
		OnOpen: func(c *MuxConn) error {
			accepted = append(accepted, c)
			if len(accepted) > 2 {
				return errors.New("too many")
			}
			return nil
		},
		OnBadFrame: func(error) {},
	})
	opened, err := m.Open(1)
	if err != nil {
		t.Fatal(err)
	}
	pushed := make(chan struct{})
	if !opened.PushTo(io.Discard, func(int64, error) { close(pushed) }) {
		t.Fatal("PushTo refused")
	}
	for _, msg := range [][]byte{a, b} {
		var want agentpb.Frame
		werr := proto.Unmarshal(msg, &want)
		var fr muxFrame
		buf := pooled(pool, msg, cut)
		err := Codec.Unmarshal(buf, &fr)
		buf.Free() // as gRPC does once Unmarshal returns
		if (err == nil) != (werr == nil) {
			t.Fatalf("Codec.Unmarshal: %v; proto.Unmarshal: %v", err, werr)
		}
		if err != nil {
			continue
		}
		var got []byte
		for _, v := range fr.data.appendViews(nil) {
			got = append(got, v...)
		}
		if fr.conn != want.Conn || fr.open != want.Open || fr.close != want.Close || fr.credit != want.Credit ||
			fr.errText != want.Error || !bytes.Equal(got, want.Data) || fr.data.left != len(want.Data) {
			t.Fatalf("muxFrame {conn %d open %v close %v credit %d error %q data %d/%d bytes}, protobuf says %v",
				fr.conn, fr.open, fr.close, fr.credit, fr.errText, len(got), fr.data.left, &want)
		}
		m.handle(&fr)
	}
	for _, c := range append(accepted, opened) {
		c.mu.Lock()
		held, queued, qlen := c.held, c.queued, c.queue.Len()
		c.mu.Unlock()
		if held > MuxWindow || queued > held || queued != qlen {
			t.Fatalf("connection %d: held %d, queued %d, queue of %d bytes (window %d)", c.id, held, queued, qlen, MuxWindow)
		}
	}
	if len(accepted) > 0 {
		var p [100]byte
		c := accepted[0]
		c.mu.Lock()
		readable := c.queued > 0
		c.mu.Unlock()
		if readable {
			c.Read(p[:])
		}
	}
	m.end(nil) // the stream ended
	for _, c := range append(accepted, opened) {
		c.Close()
	}
	select {
	case <-pushed:
	case <-time.After(5 * time.Second):
		t.Fatal("the push did not report the end")
	}
	if n := pool.out.Load(); n != 0 {
		t.Fatalf("%d receive buffers never freed", n)
	}
}
