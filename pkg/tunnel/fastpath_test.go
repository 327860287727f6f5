package tunnel

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// countingPool is a BufferPool that knows how many of its buffers are out,
// so a test sees a buffer that is never freed (or freed twice: mem panics).
type countingPool struct{ out atomic.Int64 }

func (p *countingPool) Get(n int) *[]byte {
	p.out.Add(1)
	b := make([]byte, n)
	return &b
}

func (p *countingPool) Put(*[]byte) { p.out.Add(-1) }

// pooled cuts b into pool buffers of at most n bytes, as gRPC's reader
// hands over a message that arrived in several frames.
func pooled(p *countingPool, b []byte, n int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		if mem.IsBelowBufferPoolingThreshold(k) {
			s = append(s, mem.SliceBuffer(append([]byte(nil), b[:k]...)))
		} else {
			bp := p.Get(k)
			copy(*bp, b[:k])
			s = append(s, mem.NewBuffer(bp, p))
		}
		b = b[k:]
	}
	return s
}

// wireStream plays gRPC's part of a send: marshal with Codec, keep the wire
// bytes, free the buffers. Received messages come from recv.
type wireStream struct {
	sent [][]byte
	recv []mem.BufferSlice
}

func (s *wireStream) SendMsg(m any) error {
	bs, err := Codec.Marshal(m)
	if err != nil {
		return err
	}
	s.sent = append(s.sent, bs.Materialize())
	bs.Free()
	return nil
}

func (s *wireStream) RecvMsg(m any) error {
	if len(s.recv) == 0 {
		return io.EOF
	}
	data := s.recv[0]
	s.recv = s.recv[1:]
	err := Codec.Unmarshal(data, m)
	data.Free() // as gRPC does once Unmarshal returns
	return err
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*31 + i>>8)
	}
	return b
}

// chunks decodes the sent Chunks, none larger than max, and joins them.
func chunks(t *testing.T, wire [][]byte, max int) []byte {
	t.Helper()
	var all []byte
	for _, w := range wire {
		var c agentpb.Chunk
		if err := proto.Unmarshal(w, &c); err != nil {
			t.Fatalf("a sent message is not a protobuf Chunk: %v", err)
		}
		if len(c.Data) > max {
			t.Fatalf("a Chunk of %d bytes, more than %d", len(c.Data), max)
		}
		all = append(all, c.Data...)
	}
	return all
}

// TestReadChunksFromSendsProtobufChunks: what ReadChunksFrom sends is plain
// protobuf that any peer decodes, in chunks no larger than ChunkSize.
func TestReadChunksFromSendsProtobufChunks(t *testing.T) {
	want := pattern(3*ChunkSize + 777)
	s := &wireStream{}
	n, err := NewStreamConn(s, func() {}).ReadChunksFrom(bytes.NewReader(want))
	if err != nil || n != int64(len(want)) {
		t.Fatalf("ReadChunksFrom = %d, %v; want %d, nil", n, err, len(want))
	}
	if got := chunks(t, s.sent, ChunkSize); !bytes.Equal(got, want) {
		t.Fatalf("the chunks carry %d bytes that differ from the %d read", len(got), len(want))
	}
}

// TestSendBuffersForwardsWithoutLeaks: a received DATA payload, in gRPC's
// buffers, goes on as Chunks; every buffer is freed exactly once, however
// the payload was cut into frames.
func TestSendBuffersForwardsWithoutLeaks(t *testing.T) {
	for _, size := range []int{1, 100, ChunkSize, maxForward - 1, maxForward, maxForward + 1, 2*maxForward + 5000} {
		for _, frame := range []int{1000, 16384, 50000} {
			pool := &countingPool{}
			payload := pattern(size)
			pkt, _ := proto.Marshal(&client.Packet{Type: client.PacketType_DATA,
				Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 7, Data: payload}}})
			in := &wireStream{recv: []mem.BufferSlice{pooled(pool, pkt, frame)}}
			var rp RecvPacket
			if err := in.RecvMsg(&rp); err != nil || !rp.IsData || rp.ConnectID != 7 {
				t.Fatalf("size %d frames %d: RecvMsg = %v, IsData %v, id %d", size, frame, err, rp.IsData, rp.ConnectID)
			}
			out := &wireStream{}
			if err := rp.WriteData(NewStreamConn(out, func() {})); err != nil {
				t.Fatal(err)
			}
			if got := chunks(t, out.sent, maxForward); !bytes.Equal(got, payload) {
				t.Fatalf("size %d frames %d: forwarded %d bytes that differ", size, frame, len(got))
			}
			if n := pool.out.Load(); n != 0 {
				t.Fatalf("size %d frames %d: %d receive buffers never freed", size, frame, n)
			}
		}
	}
}

// TestWriteChunksToDataPackets: Chunks received from the agent leave as
// konnectivity DATA packets (the gRPC frontend's download path) that the
// konnectivity client's protobuf code decodes, and as plain bytes to a
// socket; no buffer is kept.
func TestWriteChunksToDataPackets(t *testing.T) {
	pool := &countingPool{}
	var recv []mem.BufferSlice
	var want []byte
	for _, size := range []int{1, 5000, ChunkSize} {
		p := pattern(size)
		want = append(want, p...)
		wire, _ := proto.Marshal(&agentpb.Chunk{Data: p})
		recv = append(recv, pooled(pool, wire, 16384))
	}
	out := &wireStream{}
	src := NewStreamConn(&wireStream{recv: recv}, func() {})
	if _, err := src.WriteChunksTo(packetWriter{id: 42, s: out}); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for _, w := range out.sent {
		var p client.Packet
		if err := proto.Unmarshal(w, &p); err != nil {
			t.Fatalf("not a konnectivity Packet: %v", err)
		}
		if p.Type != client.PacketType_DATA || p.GetData().ConnectID != 42 {
			t.Fatalf("packet %v, want DATA for connection 42", &p)
		}
		got = append(got, p.GetData().Data...)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("DATA packets carry %d bytes that differ from the %d received", len(got), len(want))
	}
	if n := pool.out.Load(); n != 0 {
		t.Fatalf("%d receive buffers never freed", n)
	}

	// The same through a socket: one vectored write per Chunk.
	a, b := net.Pipe()
	defer a.Close()
	recv = nil
	for _, size := range []int{3, ChunkSize} {
		wire, _ := proto.Marshal(&agentpb.Chunk{Data: pattern(size)})
		recv = append(recv, pooled(pool, wire, 1000))
	}
	done := make(chan []byte)
	go func() { all, _ := io.ReadAll(b); done <- all }()
	src = NewStreamConn(&wireStream{recv: recv}, func() {})
	if _, err := src.WriteChunksTo(a); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if got := <-done; !bytes.Equal(got, append(pattern(3), pattern(ChunkSize)...)) {
		t.Fatalf("the socket got %d bytes that differ", len(got))
	}
	if n := pool.out.Load(); n != 0 {
		t.Fatalf("%d receive buffers never freed", n)
	}
}

// packetWriter is the gRPC frontend's side of WriteChunksTo: a BufferWriter
// that wraps payload in DATA packets.
type packetWriter struct {
	id int64
	s  ChunkStream
}

func (w packetWriter) Write(p []byte) (int, error) { panic("WriteChunksTo must use WriteBuffers") }

func (w packetWriter) WriteBuffers(bufs mem.BufferSlice) error {
	m := DataPacket(w.id, bufs, bufs.Len())
	err := w.s.SendMsg(m)
	m.Free()
	return err
}

// TestNextSize: reads grow to ChunkSize in bulk and shrink with the traffic,
// so an idle connection blocks on a small buffer.
func TestNextSize(t *testing.T) {
	for _, tc := range []struct{ size, n, want int }{
		{smallSize, smallSize, ChunkSize}, // filled: bulk
		{smallSize, 100, smallSize},       // interactive
		{ChunkSize, ChunkSize, ChunkSize}, // stays
		{ChunkSize, 70 << 10, ChunkSize},  // more than half: stays
		{ChunkSize, 16 << 10, 32 << 10},   // a 16 KiB writer: twice that
		{ChunkSize, 10, smallSize},        // quiet again
		{ChunkSize, 0, smallSize},         // nothing
		{32 << 10, 16 << 10, 32 << 10},    // exactly half: stays
	} {
		if got := nextSize(tc.size, tc.n); got != tc.want {
			t.Errorf("nextSize(%d, %d) = %d, want %d", tc.size, tc.n, got, tc.want)
		}
	}
}

// TestHostedStreamConn: work handed to a hosted connection runs on the
// goroutine in Serve; once Serve has returned, Go refuses, so the caller
// runs the work itself and nothing is lost.
func TestHostedStreamConn(t *testing.T) {
	c := NewHostedStreamConn(&wireStream{}, func() {})
	ran := make(chan bool, 1)
	served := make(chan struct{})
	if !c.Go(func() { ran <- true; c.Close() }) {
		t.Fatal("Go refused work before Serve started; want it queued")
	}
	go func() { c.Serve(context.Background()); close(served) }()
	<-ran
	<-served
	if c.Go(func() {}) {
		t.Fatal("Go accepted work after Serve returned")
	}
	if NewStreamConn(&wireStream{}, func() {}).Go(func() {}) {
		t.Fatal("Go accepted work on a connection that is not hosted")
	}

	// A cancelled context ends Serve and closes the connection.
	closed := make(chan struct{})
	c = NewHostedStreamConn(&wireStream{}, func() { close(closed) })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c.Serve(ctx)
	<-closed
}
