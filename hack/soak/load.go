package main

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// opTimeout bounds one operation. The largest transfer (8 MiB) takes well
// under a second on loopback, so an operation at the limit is stuck.
const opTimeout = 60 * time.Second

// share is one kind of operation in the mix.
type share struct {
	kind    harness.OpKind
	percent int
	maxSize int64 // transfers draw log-uniformly from 0..maxSize
}

// mix is the soak's traffic: mostly short API-like exchanges, large
// downloads (logs) and uploads (exec input), dials a client abandons, and
// dials the tunnel must refuse. It adds up to 100.
var mix = []share{
	{harness.OpEcho, 40, 256 << 10},
	{harness.OpDownload, 20, 8 << 20},
	{harness.OpUpload, 20, 8 << 20},
	{harness.OpCancel, 10, 0},
	{harness.OpUnforwarded, 5, 0},
	{harness.OpClosed, 5, 0},
}

func drawOp(rng *rand.Rand, nodes []harness.NodeTargets) harness.Op {
	roll := rng.IntN(100)
	s := mix[len(mix)-1]
	for _, m := range mix {
		if roll < m.percent {
			s = m
			break
		}
		roll -= m.percent
	}
	op := harness.Op{
		Kind:     s.kind,
		Frontend: harness.Frontends[rng.IntN(len(harness.Frontends))],
		Node:     nodes[rng.IntN(len(nodes))],
		Seed:     rng.Uint64(),
	}
	if s.maxSize > 0 {
		op.Size = harness.LogUniformSize(rng, s.maxSize)
	}
	if s.kind == harness.OpCancel {
		op.CancelAfter = time.Duration(rng.Int64N(int64(8 * time.Millisecond)))
	}
	return op
}

// counters are totals since the load started.
type counters struct {
	ops, bytes, unexpected atomic.Int64
}

// drive runs concurrency workers, each drawing operations from its own
// generator, until ctx ends; an operation in progress then finishes (within
// opTimeout) before the returned wait returns. Unexpected errors go to
// report.
func drive(ctx context.Context, client *harness.LoadClient, nodes []harness.NodeTargets, concurrency int, seed uint64, c *counters, report func(error)) (wait func()) {
	var wg sync.WaitGroup
	for w := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for ctx.Err() == nil {
				op := drawOp(rng, nodes)
				opCtx, cancel := context.WithTimeout(context.Background(), opTimeout)
				r := client.Run(opCtx, op)
				cancel()
				c.ops.Add(1)
				c.bytes.Add(r.Bytes)
				if r.Err != nil {
					c.unexpected.Add(1)
					report(r.Err)
				}
			}
		}()
	}
	return wg.Wait
}
