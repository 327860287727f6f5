// Package dialrecord is test support for code that dials through a Dialer
// (the CONNECT frontend, the HTTP proxy): it records the addresses asked
// for and stands in for the target with an in-memory pipe that keeps all
// it receives, so a fuzz test can compare what was dialed and delivered
// with what the request said.
package dialrecord

import (
	"io"
	"net"
	"testing"
	"time"
)

// Recorder records dials and what their targets received. The zero value
// is not ready: use New.
type Recorder struct {
	addrs chan string
	got   chan []byte
}

// New returns a Recorder that keeps up to n dials and n deliveries.
func New(n int) *Recorder {
	return &Recorder{addrs: make(chan string, n), got: make(chan []byte, n)}
}

// Dialed records address as dialed.
func (r *Recorder) Dialed(address string) { r.addrs <- address }

// Target returns the client end of a pipe whose target end reads until
// the client closes and then delivers everything it read to Received.
func (r *Recorder) Target() net.Conn {
	client, target := net.Pipe()
	go func() {
		b, _ := io.ReadAll(target)
		target.Close()
		r.got <- b
	}()
	return client
}

// Dials returns the addresses dialed since the last call.
func (r *Recorder) Dials() []string {
	var out []string
	for {
		select {
		case a := <-r.addrs:
			out = append(out, a)
		default:
			return out
		}
	}
}

// Received returns what the next target to be closed received, failing
// t if none is closed within timeout.
func (r *Recorder) Received(t testing.TB, timeout time.Duration) []byte {
	t.Helper()
	select {
	case b := <-r.got:
		return b
	case <-time.After(timeout):
		t.Fatalf("the target's connection was not closed within %v", timeout)
		return nil
	}
}

// Drain forgets deliveries nobody asked for.
func (r *Recorder) Drain() {
	for len(r.got) > 0 {
		<-r.got
	}
}
