package tunnel

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Splice copies a to b and b to a until either direction ends, then closes
// both and waits for the other direction to stop. It returns the bytes moved
// each way and the first error that was not a normal end of stream.
//
// The first end closes everything because tunneled connections have no
// half-close; closing both sides is also what guarantees that neither copy
// goroutine can outlive the connection.
func Splice(a, b io.ReadWriteCloser) (aToB, bToA int64, err error) {
	var (
		wg       sync.WaitGroup
		once     sync.Once
		firstErr error
		errMu    sync.Mutex
	)
	closeBoth := func() {
		once.Do(func() {
			a.Close()
			b.Close()
		})
	}
	record := func(e error) {
		if e == nil || isClosedErr(e) {
			return
		}
		errMu.Lock()
		if firstErr == nil {
			firstErr = e
		}
		errMu.Unlock()
	}
	copyToB := func() {
		n, e := Copy(b, a)
		aToB = n
		record(e)
		closeBoth()
	}
	if p, ok := b.(Pusher); ok {
		// b hands its bytes to a from goroutines of its own, started only
		// while there are bytes: this goroutine copies a to b, and an idle
		// connection has no second goroutine.
		wg.Add(1)
		pushed := p.PushTo(a, func(n int64, e error) {
			bToA = n
			record(e)
			closeBoth()
			wg.Done()
		})
		if pushed {
			copyToB()
			wg.Wait()
			return aToB, bToA, firstErr
		}
		wg.Done()
	}
	wg.Add(1)
	toB := func() {
		defer wg.Done()
		copyToB()
	}
	if !hostGo(b, toB) && !hostGo(a, toB) {
		go toB()
	}
	n, e := Copy(a, b)
	bToA = n
	record(e)
	closeBoth()
	wg.Wait()
	return aToB, bToA, firstErr
}

// Host is a connection whose stream has a goroutine of its own that can do
// work for it (StreamConn from NewHostedStreamConn, and wrappers of one).
// Splice hands it one direction of the copy instead of starting a goroutine.
type Host interface {
	Go(f func()) bool
}

func hostGo(c io.ReadWriteCloser, f func()) bool {
	h, ok := c.(Host)
	return ok && h.Go(f)
}

// ErrClosed is returned by the adapters after Close.
var ErrClosed = errors.New("tunnel: connection closed")

func isClosedErr(err error) bool {
	return errors.Is(err, ErrClosed) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
}
