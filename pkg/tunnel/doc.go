// Package tunnel holds the pieces of a tunneled connection that every side
// shares: the byte-stream adapters over gRPC streams (one stream per
// connection, or many connections multiplexed on one packet stream), the
// bidirectional copy with pooled buffers, and the typed dial errors that
// frontends turn into DIAL_RSP texts and HTTP statuses.
//
// Invariants every adapter keeps:
//   - Read and Write may run concurrently with each other, but each is used by
//     one goroutine at a time (the two halves of a Splice).
//   - Close is idempotent, never blocks for long, and unblocks a pending Read.
//   - There is no half-close: the end of either direction ends the connection,
//     as in the konnectivity protocol.
package tunnel
