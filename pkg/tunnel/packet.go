package tunnel

import (
	"fmt"
	"io"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// RecvPacket receives a konnectivity Packet through Codec. A DATA packet in
// the shape every Go konnectivity client sends (type, then Data{connectID,
// data}) keeps its payload in gRPC's buffers: no allocation or copy per
// packet on the frontend's upload path. Any other packet is decoded the
// ordinary way into Packet.
type RecvPacket struct {
	// Packet is the decoded packet when IsData is false.
	Packet client.Packet
	// IsData: a DATA packet for ConnectID whose payload WriteData delivers.
	IsData    bool
	ConnectID int64
	payload   chunkBufs
}

// WriteData writes the payload of a DATA packet to w and releases the
// buffers: a BufferSender gets gRPC's buffers themselves, anything else one
// write per buffer.
func (p *RecvPacket) WriteData(w io.Writer) error {
	if s, ok := w.(BufferSender); ok {
		return s.SendBuffers(p.payload.detach())
	}
	defer p.payload.release()
	c := &p.payload
	for c.left > 0 && c.i < len(c.bufs) {
		d := c.bufs[c.i].ReadOnlyData()[c.off:]
		d = d[:min(len(d), c.left)]
		if _, err := w.Write(d); err != nil {
			return err
		}
		c.left -= len(d)
		c.i++
		c.off = 0
	}
	return nil
}

// Release drops the payload without writing it.
func (p *RecvPacket) Release() { p.payload.release() }

var (
	tagType = byte(protowire.EncodeTag(1, protowire.VarintType))
	tagData = byte(protowire.EncodeTag(4, protowire.BytesType))
	tagID   = byte(protowire.EncodeTag(1, protowire.VarintType))
	tagPay  = byte(protowire.EncodeTag(3, protowire.BytesType))
)

// take parses data; see RecvPacket.
func (p *RecvPacket) take(data mem.BufferSlice) error {
	p.payload.release()
	p.IsData, p.ConnectID = false, 0
	total := data.Len()
	var hdr [40]byte
	n := 0
	for _, b := range data {
		n += copy(hdr[n:], b.ReadOnlyData())
		if n == len(hdr) {
			break
		}
	}
	if id, skip, size, ok := parseDataHeader(hdr[:n], total); ok {
		data.Ref()
		p.payload = chunkBufs{bufs: data, left: size}
		p.payload.skip(skip)
		p.IsData, p.ConnectID = true, id
		return nil
	}
	buf := data.MaterializeToBuffer(GRPCBufferPool)
	defer buf.Free()
	p.Packet.Reset()
	if err := proto.Unmarshal(buf.ReadOnlyData(), &p.Packet); err != nil {
		return fmt.Errorf("edge-tunnel codec: bad Packet: %w", err)
	}
	return nil
}

// DataPacket returns DATA{connectID: id, data: payload} in wire form, taking
// ownership of payload (n bytes): the way the frontend sends received
// Chunks on without copying them.
func DataPacket(id int64, payload mem.BufferSlice, n int) *WireMessage {
	idLen := 1 + protowire.SizeVarint(uint64(id))
	payLen := 1 + protowire.SizeVarint(uint64(n))
	inner := idLen + payLen + n
	return newWireMessage(func(b []byte) []byte {
		b = append(b, tagType, byte(client.PacketType_DATA), tagData)
		b = protowire.AppendVarint(b, uint64(inner))
		b = protowire.AppendVarint(append(b, tagID), uint64(id))
		return protowire.AppendVarint(append(b, tagPay), uint64(n))
	}, payload)
}

// parseDataHeader recognizes type=DATA, data={connectID, data} with nothing
// else, and returns the connectID, the header length and the payload size.
func parseDataHeader(h []byte, total int) (id int64, skip, size int, ok bool) {
	if len(h) < 2 || h[0] != tagType || h[1] != byte(client.PacketType_DATA) || len(h) < 3 || h[2] != tagData {
		return 0, 0, 0, false
	}
	i := 3
	msgLen, k := protowire.ConsumeVarint(h[i:])
	if k <= 0 {
		return 0, 0, 0, false
	}
	i += k
	if int(msgLen) != total-i {
		return 0, 0, 0, false
	}
	if i < len(h) && h[i] == tagID {
		v, k := protowire.ConsumeVarint(h[i+1:])
		if k <= 0 {
			return 0, 0, 0, false
		}
		id = int64(v)
		i += 1 + k
	}
	if i == total { // an empty DATA
		return id, i, 0, true
	}
	if i >= len(h) || h[i] != tagPay {
		return 0, 0, 0, false
	}
	l, k := protowire.ConsumeVarint(h[i+1:])
	if k <= 0 {
		return 0, 0, 0, false
	}
	i += 1 + k
	if int(l) != total-i {
		return 0, 0, 0, false
	}
	return id, i, int(l), true
}
