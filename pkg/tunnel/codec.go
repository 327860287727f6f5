package tunnel

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// Codec is the gRPC codec of the agent connection. On the wire it is plain
// protobuf, so upstream peers cannot tell the difference; it differs in where
// bytes live:
//   - every message is marshalled into GRPCBufferPool, which does not clear
//     buffers (gRPC's proto codec always uses its own clearing pool);
//   - a Chunk received into a *chunkBufs, and the data of a Frame a Mux
//     receives, are not copied out of gRPC's receive buffers: the reader
//     consumes them in place and frees them.
//
// Install it with grpc.ForceServerCodecV2 and grpc.ForceCodecV2.
var Codec encoding.CodecV2 = codec{}

type codec struct{}

func (codec) Name() string { return "proto" }

func (codec) Marshal(v any) (mem.BufferSlice, error) {
	switch t := v.(type) {
	case *agentpb.Chunk:
		return marshalChunk(t.Data), nil
	case *WireMessage:
		b := t.bufs
		t.bufs = nil
		return b, nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("edge-tunnel codec: cannot marshal %T, not a proto.Message", v)
	}
	size := proto.Size(m)
	bp := GRPCBufferPool.Get(size)
	b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend((*bp)[:0], m)
	if err != nil {
		GRPCBufferPool.Put(bp)
		return nil, fmt.Errorf("edge-tunnel codec: marshal %T: %w", v, err)
	}
	*bp = b
	return mem.BufferSlice{mem.NewBuffer(bp, GRPCBufferPool)}, nil
}

// marshalChunk encodes Chunk{data} by hand: field 1, wire type 2.
func marshalChunk(data []byte) mem.BufferSlice {
	if len(data) == 0 {
		return nil // proto3 omits an empty bytes field: the empty message
	}
	size := 1 + protowire.SizeVarint(uint64(len(data))) + len(data)
	bp := GRPCBufferPool.Get(size)
	b := append((*bp)[:0], chunkTag)
	b = protowire.AppendVarint(b, uint64(len(data)))
	*bp = append(b, data...)
	return mem.BufferSlice{mem.NewBuffer(bp, GRPCBufferPool)}
}

var chunkTag = byte(protowire.EncodeTag(1, protowire.BytesType))

func (codec) Unmarshal(data mem.BufferSlice, v any) error {
	switch t := v.(type) {
	case *chunkBufs:
		return t.take(data)
	case *RecvPacket:
		return t.take(data)
	case *muxFrame:
		return t.take(data)
	}
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("edge-tunnel codec: cannot unmarshal into %T, not a proto.Message", v)
	}
	buf := data.MaterializeToBuffer(GRPCBufferPool)
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// WireMessage is a message already in wire form, in buffers that Codec
// hands to gRPC as they are: the way payload moves without a copy. A
// WireMessage is sent once; gRPC frees its buffers.
type WireMessage struct {
	bufs mem.BufferSlice
	// Room for the common case, one header and one payload buffer, so a
	// message costs one allocation. gRPC keeps bufs (and so these arrays)
	// until the message is written; a WireMessage is never reused.
	hdr [24]byte
	two [2]mem.Buffer
}

// newWireMessage returns a message of the header that put writes into a
// scratch array, followed by payload, whose ownership it takes.
func newWireMessage(put func(b []byte) []byte, payload mem.BufferSlice) *WireMessage {
	m := &WireMessage{}
	h := mem.SliceBuffer(put(m.hdr[:0]))
	if len(payload) == 1 {
		m.two = [2]mem.Buffer{h, payload[0]}
		m.bufs = m.two[:]
	} else {
		m.bufs = append(mem.BufferSlice{h}, payload...)
	}
	return m
}

// Free releases the buffers if gRPC did not take them (a send that failed
// before marshalling). Call it after every send.
func (m *WireMessage) Free() {
	if m.bufs != nil {
		m.bufs.Free()
		m.bufs = nil
	}
}

// chunkBufs holds the payload of one received Chunk in gRPC's own buffers.
// The codec takes a reference; next and release hand the bytes out and
// give the buffers back.
type chunkBufs struct {
	bufs mem.BufferSlice // referenced buffers, freed by release
	i    int             // current buffer
	off  int             // offset of unread payload in bufs[i]
	left int             // payload bytes not yet handed out
}

// take parses the Chunk framing of data and keeps data's buffers. A message
// in any other shape (unknown fields, several data fields) is decoded the
// ordinary way and kept as one buffer.
func (c *chunkBufs) take(data mem.BufferSlice) error {
	c.release()
	total := data.Len()
	if total == 0 {
		return nil
	}
	var hdr [1 + binaryMaxVarintLen]byte
	n := 0
	for _, b := range data {
		n += copy(hdr[n:], b.ReadOnlyData())
		if n == len(hdr) {
			break
		}
	}
	if hdr[0] == chunkTag {
		if l, vn := protowire.ConsumeVarint(hdr[1:n]); vn > 0 && 1+vn+int(l) == total {
			data.Ref()
			c.bufs, c.left = data, int(l)
			c.skip(1 + vn)
			return nil
		}
	}
	var ch agentpb.Chunk
	buf := data.MaterializeToBuffer(GRPCBufferPool)
	defer buf.Free()
	if err := proto.Unmarshal(buf.ReadOnlyData(), &ch); err != nil {
		return fmt.Errorf("edge-tunnel codec: bad Chunk: %w", err)
	}
	c.bufs, c.left = mem.BufferSlice{mem.SliceBuffer(ch.Data)}, len(ch.Data)
	return nil
}

const binaryMaxVarintLen = 10

// skip advances past n bytes of framing.
func (c *chunkBufs) skip(n int) {
	for n > 0 && c.i < len(c.bufs) {
		rest := c.bufs[c.i].Len() - c.off
		if n < rest {
			c.off += n
			return
		}
		n -= rest
		c.i++
		c.off = 0
	}
}

// read copies unread payload into p.
func (c *chunkBufs) read(p []byte) int {
	n := 0
	for n < len(p) && c.left > 0 && c.i < len(c.bufs) {
		d := c.bufs[c.i].ReadOnlyData()[c.off:]
		k := copy(p[n:], d[:min(len(d), c.left)])
		n += k
		c.left -= k
		c.off += k
		if c.off == c.bufs[c.i].Len() {
			c.i++
			c.off = 0
		}
	}
	if c.left == 0 {
		c.release()
	}
	return n
}

// detach hands the unread payload to the caller, who owns (and frees) the
// returned buffers; c is left empty. The slice is new: the one gRPC passed
// to take is gRPC's, and it frees through it.
func (c *chunkBufs) detach() mem.BufferSlice {
	if c.left == 0 {
		c.release()
		return nil
	}
	return c.detachTo(make(mem.BufferSlice, 0, len(c.bufs)-c.i))
}

// detachTo is detach appending to dst, a slice the caller reuses.
func (c *chunkBufs) detachTo(dst mem.BufferSlice) mem.BufferSlice {
	if c.left == 0 {
		c.release()
		return dst
	}
	for i, b := range c.bufs {
		switch {
		case i < c.i:
			b.Free() // framing only
		case i == c.i && c.off > 0:
			head, rest := mem.SplitUnsafe(b, c.off)
			head.Free()
			dst = append(dst, rest)
		default:
			dst = append(dst, b)
		}
	}
	*c = chunkBufs{}
	return dst
}

// appendViews appends the unread payload's bytes, buffer by buffer, to v.
// They stay valid until release.
func (c *chunkBufs) appendViews(v [][]byte) [][]byte {
	left := c.left
	for i := c.i; i < len(c.bufs) && left > 0; i++ {
		d := c.bufs[i].ReadOnlyData()
		if i == c.i {
			d = d[c.off:]
		}
		d = d[:min(len(d), left)]
		left -= len(d)
		v = append(v, d)
	}
	return v
}

// release gives the buffers back to gRPC's pool.
func (c *chunkBufs) release() {
	if c.bufs != nil {
		c.bufs.Free()
	}
	*c = chunkBufs{}
}
