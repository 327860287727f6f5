package tunnel

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// split cuts b into buffers of at most n bytes, as gRPC hands a message
// that arrived in several frames to the codec.
func split(b []byte, n int) mem.BufferSlice {
	var s mem.BufferSlice
	for len(b) > 0 {
		k := min(n, len(b))
		s = append(s, mem.SliceBuffer(append([]byte(nil), b[:k]...)))
		b = b[k:]
	}
	return s
}

func TestChunkWireFormatIsProtobuf(t *testing.T) {
	for _, size := range []int{0, 1, 127, 128, 16383, 16384, ChunkSize} {
		data := bytes.Repeat([]byte{0xab}, size)
		ours := Codec.Marshal
		bs, err := ours(&agentpb.Chunk{Data: data})
		if err != nil {
			t.Fatal(err)
		}
		want, _ := proto.Marshal(&agentpb.Chunk{Data: data})
		if got := bs.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("size %d: codec wrote %d bytes, protobuf %d: not the same encoding", size, len(got), len(want))
		}
		bs.Free()
	}
}

func TestChunkBufsReadsAcrossBuffers(t *testing.T) {
	payload := make([]byte, 70000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	wire, _ := proto.Marshal(&agentpb.Chunk{Data: payload})
	for _, piece := range []int{1, 2, 3, 5, 4096, 16384, len(wire)} {
		var c chunkBufs
		if err := Codec.Unmarshal(split(wire, piece), &c); err != nil {
			t.Fatalf("pieces of %d: %v", piece, err)
		}
		var got []byte
		buf := make([]byte, 1000)
		for c.left > 0 {
			n := c.read(buf)
			got = append(got, buf[:n]...)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("pieces of %d: payload differs", piece)
		}
		if c.bufs != nil {
			t.Fatalf("pieces of %d: buffers not released after the last read", piece)
		}
	}
}

func TestChunkBufsOtherShapes(t *testing.T) {
	// Two data fields (the last wins in protobuf) and an unknown field: not
	// the fast shape, decoded the ordinary way.
	wire := []byte{chunkTag, 2, 'a', 'b', chunkTag, 1, 'c', 0x10, 0x01}
	var c chunkBufs
	if err := Codec.Unmarshal(split(wire, 3), &c); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if n := c.read(buf); string(buf[:n]) != "c" {
		t.Fatalf("got %q, want the last data field %q", buf[:n], "c")
	}
	// Garbage is an error, not a panic.
	if err := Codec.Unmarshal(split([]byte{chunkTag, 0xff, 0xff}, 2), &c); err == nil {
		t.Fatal("truncated Chunk decoded without error")
	}
	// The empty message is an empty chunk.
	if err := Codec.Unmarshal(nil, &c); err != nil || c.left != 0 {
		t.Fatalf("empty message: left %d, err %v", c.left, err)
	}
}

func FuzzChunkBufs(f *testing.F) {
	f.Add([]byte{chunkTag, 3, 1, 2, 3}, 2)
	f.Add([]byte{0x10, 0x01}, 1)
	f.Fuzz(func(t *testing.T, wire []byte, piece int) {
		if piece < 1 {
			piece = 1
		}
		var c chunkBufs
		var want agentpb.Chunk
		perr := proto.Unmarshal(wire, &want)
		err := Codec.Unmarshal(split(wire, piece), &c)
		if (err == nil) != (perr == nil) {
			t.Fatalf("codec error %v, protobuf error %v", err, perr)
		}
		if err != nil {
			return
		}
		got := make([]byte, c.left)
		c.read(got)
		if !bytes.Equal(got, want.Data) {
			t.Fatalf("codec read %x, protobuf %x", got, want.Data)
		}
	})
}

func TestRecvPacketFastPathMatchesProtobuf(t *testing.T) {
	for _, pkt := range []*client.Packet{
		{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 7, Data: bytes.Repeat([]byte("x"), 70000)}}},
		{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 1 << 40, Data: []byte("a")}}},
		{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 3}}},
		// Not the fast shape: an error text, another type.
		{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 3, Error: "e", Data: []byte("z")}}},
		{Type: client.PacketType_CLOSE_REQ, Payload: &client.Packet_CloseRequest{CloseRequest: &client.CloseRequest{ConnectID: 9}}},
	} {
		wire, _ := proto.Marshal(pkt)
		for _, piece := range []int{1, 7, 16384, len(wire) + 1} {
			var rp RecvPacket
			if err := Codec.Unmarshal(split(wire, piece), &rp); err != nil {
				t.Fatal(err)
			}
			if rp.IsData {
				var got bytes.Buffer
				if err := rp.WriteData(&got); err != nil {
					t.Fatal(err)
				}
				if rp.ConnectID != pkt.GetData().ConnectID || !bytes.Equal(got.Bytes(), pkt.GetData().Data) {
					t.Fatalf("fast path read connectID %d and %d bytes, want %d and %d", rp.ConnectID, got.Len(), pkt.GetData().ConnectID, len(pkt.GetData().Data))
				}
				if pkt.GetData().Error != "" {
					t.Fatal("a DATA with an error text took the fast path and lost it")
				}
				continue
			}
			if !proto.Equal(&rp.Packet, pkt) {
				t.Fatalf("decoded %v, want %v", &rp.Packet, pkt)
			}
		}
	}
}
