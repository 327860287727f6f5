package server_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	konn "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"
)

// The client floor is a reference for the benchmarks, not a tunnel: the
// real konnectivity client (kube-apiserver's side of the gRPC frontend,
// which edge-tunnel cannot change) against the least any ProxyService
// could do. It answers a dial at once, in memory, with no agent, target or
// TLS behind it, and sends a download's bytes from one packet marshalled
// once. Whatever the client costs in CPU and latency shows up here alone;
// "grpc-floor" beside "grpc" in a benchmark's output bounds what a faster
// server could still gain on this machine (docs/performance.md).

// floorMode is what the floor does with a dialed connection's bytes.
type floorMode int

const (
	// floorEcho sends every DATA packet back (echoServer).
	floorEcho floorMode = iota
	// floorBytes speaks byteServer's protocol: a size and a direction,
	// then that many bytes sent ('d') or received and acknowledged ('u').
	floorBytes
)

// floorChunk is the payload of each download packet: the client's cheapest
// case, the largest message its gRPC buffer pool reuses (the frontend's
// clientPacketMax; a bulk download through the frontend sends packets of
// 256 KiB to that size).
const floorChunk = 1<<20 - 64

type floorServer struct {
	client.UnimplementedProxyServiceServer
	mode floorMode
	// chunk is a DATA packet of floorChunk bytes for connection 1, in
	// wire form, sent again and again.
	chunk rawPacket
}

// rawPacket is a message already in wire form; floorCodec sends it as is.
type rawPacket []byte

// floorCodec is edge-tunnel's codec (tunnel.Codec: pooled, never-cleared
// buffers), except that a rawPacket goes out without marshalling or
// copying. What the floor receives is unmarshalled with a copy of each
// payload, which the real frontend avoids: for uploads the floor is a
// little dearer than the least possible, so its upload row is a loose bound.
type floorCodec struct{ encoding.CodecV2 }

func (c floorCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(rawPacket); ok {
		return mem.BufferSlice{mem.SliceBuffer(r)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// startFloor serves a floor ProxyService on a UNIX socket of its own and
// returns a dialer in the form of benchDialers': the konnectivity client
// exactly as env.dialGRPC uses it.
func startFloor(b testing.TB, mode floorMode) dialFunc {
	b.Helper()
	chunk, err := proto.Marshal(&client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 1, Data: make([]byte, floorChunk)}}})
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(b.TempDir(), "floor.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	s := grpc.NewServer(grpc.ForceServerCodecV2(floorCodec{tunnel.Codec}), experimental.BufferPool(tunnel.GRPCBufferPool))
	client.RegisterProxyServiceServer(s, &floorServer{mode: mode, chunk: chunk})
	go s.Serve(ln)
	b.Cleanup(s.Stop)
	return func() (net.Conn, error) {
		ctx := context.Background()
		tun, err := konn.CreateSingleUseGrpcTunnelWithContext(ctx, ctx, sock,
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			}),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		return tun.DialContext(ctx, "tcp", "floor:1")
	}
}

func (f *floorServer) Proxy(stream client.ProxyService_ProxyServer) error {
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	dial := req.GetDialRequest()
	if dial == nil {
		return fmt.Errorf("floor: first packet is %v, not DIAL_REQ", req.Type)
	}
	if err := stream.Send(&client.Packet{Type: client.PacketType_DIAL_RSP, Payload: &client.Packet_DialResponse{DialResponse: &client.DialResponse{Random: dial.Random, ConnectID: 1}}}); err != nil {
		return err
	}
	var head []byte // floorBytes: the request read so far
	var left int64  // floorBytes 'u': bytes still to receive
	sent := make(chan error, 1)
	for {
		pkt, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch pkt.Type {
		case client.PacketType_CLOSE_REQ:
			if len(head) == 9 && head[8] == 'd' {
				if err := <-sent; err != nil {
					return err
				}
			}
			return stream.Send(&client.Packet{Type: client.PacketType_CLOSE_RSP, Payload: &client.Packet_CloseResponse{CloseResponse: &client.CloseResponse{ConnectID: 1}}})
		case client.PacketType_DATA:
			data := pkt.GetData().GetData()
			if f.mode == floorEcho {
				if err := stream.Send(pkt); err != nil {
					return err
				}
				continue
			}
			if len(head) < 9 {
				k := min(9-len(head), len(data))
				head, data = append(head, data[:k]...), data[k:]
				if len(head) < 9 {
					continue
				}
				n := int64(binary.BigEndian.Uint64(head[:8]))
				if head[8] == 'd' {
					go func() { sent <- f.send(stream, n) }()
					continue
				}
				left = n
			}
			if left -= int64(len(data)); left == 0 {
				if err := stream.Send(dataPacket([]byte{1})); err != nil {
					return err
				}
			}
		}
	}
}

// send sends n bytes as DATA packets: whole ones from f.chunk, the rest
// marshalled.
func (f *floorServer) send(stream client.ProxyService_ProxyServer, n int64) error {
	for ; n >= floorChunk; n -= floorChunk {
		if err := stream.SendMsg(f.chunk); err != nil {
			return err
		}
	}
	if n > 0 {
		return stream.Send(dataPacket(make([]byte, n)))
	}
	return nil
}

func dataPacket(b []byte) *client.Packet {
	return &client.Packet{Type: client.PacketType_DATA, Payload: &client.Packet_Data{Data: &client.Data{ConnectID: 1, Data: b}}}
}
