// Package workers runs short tasks on goroutines that are kept for the next
// task instead of ending.
//
// A goroutine starts with a small stack and grows it by copying, doubling
// each time, to fit the deepest call it makes; the copying walks every frame
// and is not cheap. The tasks a tunnel runs once per connection (parsing a
// CONNECT request, a TLS handshake, a dial and the stream open that follows,
// handing received bytes on) run deep: in the dial benchmarks the growth of
// fresh goroutines was a tenth of all CPU. A worker that already grew keeps
// its stack for the next task.
//
// Only tasks that end soon belong here. A connection's long-lived goroutine
// (the one parked on its socket for hours) must stay a goroutine of its
// own: on a worker it would keep the stack its busiest moment grew.
package workers

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Pool hands tasks to idle workers, starting a worker when none is idle. At
// most as many workers as the process has Ps (GOMAXPROCS) wait idle, each
// for at most the pool's idle time: a burst of dials leaves no more than
// that behind, and only for a while. The zero Pool is not usable; a nil
// *Pool runs every task on a goroutine of its own.
type Pool struct {
	idle    time.Duration
	work    chan func()
	done    chan struct{} // closed by Close
	closed  sync.Once
	maxIdle int32
	idlers  atomic.Int32 // workers waiting for a task, or about to
}

// DefaultIdle is how long a worker waits for its next task: long enough
// to carry the stacks across the gaps of a steady trickle of dials, short
// enough that what a burst grew is given back within seconds.
const DefaultIdle = 10 * time.Second

// New returns a Pool whose workers end after idle without a task.
func New(idle time.Duration) *Pool {
	return &Pool{idle: idle, work: make(chan func()), done: make(chan struct{}), maxIdle: int32(runtime.GOMAXPROCS(0))}
}

// Close ends the idle workers now and the busy ones after their task, so
// that a stopped server or agent leaves no goroutine behind. Tasks handed
// over later still run, each on a goroutine of its own.
func (p *Pool) Close() {
	if p != nil {
		p.closed.Do(func() { close(p.done) })
	}
}

// Go runs f on a worker. It never waits: with no worker idle, f gets a new
// one.
func (p *Pool) Go(f func()) {
	if p == nil {
		go f()
		return
	}
	select {
	case p.work <- f: // an idle worker took it
	default:
		go p.worker(f)
	}
}

// worker runs f, then the tasks it is handed, until it waits idle in vain,
// finds enough workers idle already, or the pool is closed.
func (p *Pool) worker(f func()) {
	var t *time.Timer
	for {
		f()
		f = nil // do not keep the finished task's closure alive while idle
		if p.idlers.Add(1) > p.maxIdle {
			p.idlers.Add(-1)
			return
		}
		if t == nil {
			t = time.NewTimer(p.idle)
		} else {
			t.Reset(p.idle)
		}
		select {
		case f = <-p.work:
			// Since Go 1.23 a stopped or reset timer delivers no stale
			// tick, so nothing is drained here.
			t.Stop()
			p.idlers.Add(-1)
		case <-t.C:
			p.idlers.Add(-1)
			return
		case <-p.done:
			t.Stop()
			p.idlers.Add(-1)
			return
		}
	}
}
