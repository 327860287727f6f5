package tunnel

import (
	"math/bits"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
)

// GRPCBufferPool is the buffer pool edge-tunnel hands to gRPC on both ends
// of the agent connection and on the frontend. gRPC's default pool clears
// every buffer it hands out; its buffers are always written before they are
// read (a received frame, a marshalled message), so the clearing is pure
// cost, and on the tunnel's data path it was a sixth of all CPU time.
var GRPCBufferPool mem.BufferPool = newDirtyPool()

// dirtyPool keeps buffers in power-of-two size classes from 256 B to 4 MiB.
// Larger requests are allocated and dropped.
type dirtyPool struct {
	classes [numClasses]sync.Pool
}

const (
	minShift   = 8
	maxShift   = 22
	numClasses = maxShift - minShift + 1
)

func newDirtyPool() *dirtyPool { return &dirtyPool{} }

// class returns the size class that fits n bytes, or -1 if n is too large.
func class(n int) int {
	if n <= 1<<minShift {
		return 0
	}
	c := bits.Len(uint(n-1)) - minShift
	if c >= numClasses {
		return -1
	}
	return c
}

func (p *dirtyPool) Get(length int) *[]byte {
	c := class(length)
	if c < 0 {
		b := make([]byte, length)
		return &b
	}
	if bp, ok := p.classes[c].Get().(*[]byte); ok {
		*bp = (*bp)[:length]
		return bp
	}
	b := make([]byte, length, 1<<(c+minShift))
	return &b
}

func (p *dirtyPool) Put(bp *[]byte) {
	n := cap(*bp)
	c := class(n)
	// Only buffers of exactly a class size go back, so Get can always
	// reslice what it takes out to any length of that class.
	if c < 0 || n != 1<<(c+minShift) {
		return
	}
	p.classes[c].Put(bp)
}

// CallOptions are the call options of the agent's gRPC client: Codec, and
// no replay buffer. gRPC-Go keeps the messages a client stream sends before
// its first reply (up to 256 KiB by default) to replay them on a transparent
// retry, and a send that is in flight while that first reply commits the
// stream keeps its reference to the message's buffers for good (gRPC-Go
// 1.80, clientStream.bufferForRetryLocked returns early on a committed
// stream without the cleanup): those buffers never return to
// GRPCBufferPool (a test counting buffers caught it). With a zero-size
// replay buffer the first send commits the stream, so only a reply racing
// that very first send is left to hit it. The agent reconnects after a
// failed stream anyway; a replay would gain nothing.
func CallOptions() []grpc.CallOption {
	return []grpc.CallOption{grpc.ForceCodecV2(Codec), grpc.MaxRetryRPCBufferSize(0)}
}
