package tunnel

import (
	"io"

	"google.golang.org/grpc/mem"
)

// ChunkSize is the largest payload moved in one DATA packet or Chunk message.
// Upstream konnectivity moves 4 KiB packets; large chunks cut the per-message
// cost (framing, marshalling, scheduling) that dominates its throughput.
// It is 32 bytes short of 128 KiB so that a full chunk with its framing
// (gRPC's 5-byte message header and at most 27 bytes of protobuf, a Chunk's
// or a konnectivity DATA packet's) fills eight 16 KiB HTTP/2 frames instead
// of spilling a few bytes into a ninth.
const ChunkSize = 128<<10 - 32

// smallSize is the buffer an idle connection blocks its reads with. Reads
// block holding their buffer, so this, not ChunkSize, is what every idle
// tunneled connection costs.
const smallSize = 2 << 10

// nextSize picks the buffer for the next read after one that returned n
// bytes into size: straight to ChunkSize when the read filled the buffer
// (a bulk transfer), down to about twice the last read when it used less
// than half (so a connection that goes quiet after a burst does not block
// holding ChunkSize), never below smallSize.
func nextSize(size, n int) int {
	switch {
	case n == size:
		return ChunkSize
	case n < size/2:
		s := smallSize
		for s < 2*n {
			s *= 2
		}
		return min(s, ChunkSize)
	}
	return size
}

// Copy copies src to dst until src ends (io.EOF is not an error) or a write
// fails. When either side is a gRPC stream (a ChunkSource or ChunkSink) the
// bytes move in gRPC's own buffers without a copy; otherwise Copy reads with
// a small pooled buffer and switches to a ChunkSize one while reads keep
// filling the buffer, so bulk transfers move large chunks and idle
// connections hold little memory. It deliberately skips
// ReaderFrom/WriterTo, which would pick buffers of their own.
func Copy(dst io.Writer, src io.Reader) (int64, error) {
	if s, ok := src.(ChunkSource); ok {
		return s.WriteChunksTo(dst)
	}
	if d, ok := dst.(ChunkSink); ok {
		return d.ReadChunksFrom(src)
	}
	return copyBuffered(dst, src)
}

// copyBuffered is Copy through a buffer of GRPCBufferPool sized by nextSize.
func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	size := smallSize
	bp := GRPCBufferPool.Get(size)
	defer func() { GRPCBufferPool.Put(bp) }()
	var total int64
	for {
		n, rerr := src.Read(*bp)
		if n > 0 {
			w, werr := dst.Write((*bp)[:n])
			total += int64(w)
			if werr != nil {
				return total, werr
			}
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
		if next := nextSize(size, n); next != size {
			GRPCBufferPool.Put(bp)
			size, bp = next, GRPCBufferPool.Get(next)
		}
	}
}

// credit is a sender's flow-control window: reserve waits for room and
// takes up to max bytes of it, refund gives back what was not sent.
type credit interface {
	reserve(max int) (int, error)
	refund(n int)
}

// sendReads reads r until it ends (io.EOF is not an error) and hands each
// read to send in the buffer of GRPCBufferPool it landed in, which send
// owns from then on: no copy between the read and the transport. Reads
// start small and follow the traffic (nextSize); a quiet socket is waited
// on without any buffer (WaitReadable), so an idle connection holds none.
// With a window (w not nil) no read is larger than the room it grants.
func sendReads(r io.Reader, w credit, send func(payload mem.BufferSlice, n int) error) (int64, error) {
	var total int64
	size := smallSize
	for {
		if size == smallSize {
			// Quiet: wait for bytes before taking a buffer for them.
			WaitReadable(r)
		}
		rsize := size
		if w != nil {
			var err error
			if rsize, err = w.reserve(size); err != nil {
				return total, err
			}
		}
		bp := GRPCBufferPool.Get(rsize)
		n, rerr := r.Read(*bp)
		if w != nil {
			w.refund(rsize - n)
		}
		if n > 0 {
			*bp = (*bp)[:n]
			if err := send(mem.BufferSlice{mem.NewBuffer(bp, GRPCBufferPool)}, n); err != nil {
				return total, err
			}
			total += int64(n)
		} else {
			GRPCBufferPool.Put(bp)
		}
		if rerr != nil {
			if rerr == io.EOF {
				return total, nil
			}
			return total, rerr
		}
		size = nextSize(rsize, n)
	}
}
