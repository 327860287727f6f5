package tunnel

import (
	"io"
	"sync"
)

// ChunkSize is the largest payload moved in one DATA packet or Chunk message.
// Upstream konnectivity moves 4 KiB packets; large chunks cut the per-message
// cost (framing, marshalling, scheduling) that dominates its throughput.
const ChunkSize = 128 << 10

// smallSize is the buffer an idle connection blocks its reads with. Reads
// block holding their buffer, so this, not ChunkSize, is what every idle
// tunneled connection costs.
const smallSize = 8 << 10

var (
	bigPool   = sync.Pool{New: func() any { b := make([]byte, ChunkSize); return &b }}
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallSize); return &b }}
)

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

// copyBuffered is Copy through a pooled buffer.
func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	small, big := smallPool.Get().(*[]byte), (*[]byte)(nil)
	defer func() {
		smallPool.Put(small)
		if big != nil {
			bigPool.Put(big)
		}
	}()
	buf := *small
	var total int64
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
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
		switch {
		case n == len(buf) && big == nil:
			big = bigPool.Get().(*[]byte)
			buf = *big
		case n < len(buf)/2 && big != nil:
			bigPool.Put(big)
			big, buf = nil, *small
		}
	}
}
