package harness

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
)

// Targets live on loopback behind an agent. The byte-moving ones speak the
// tiny protocol e2e/konnclient speaks: the client first sends an 8-byte
// big-endian length L; the streamer then sends L bytes of Pattern and closes,
// the sink reads L bytes, checks them against Pattern and answers with an
// 8-byte big-endian count of matching bytes.

// PatternModulus makes the test pattern: byte i is i mod 251 (a prime, so a
// lost, repeated or reordered chunk does not line up by accident).
const PatternModulus = 251

// FillPattern fills b with the pattern bytes starting at offset.
func FillPattern(b []byte, offset int64) {
	for i := range b {
		b[i] = byte((offset + int64(i)) % PatternModulus)
	}
}

// CheckEcho writes size pattern bytes through c to an echo target and checks
// that the same bytes come back. The write runs beside the read, so an echo
// larger than the socket buffers cannot deadlock.
func CheckEcho(c net.Conn, size int) error {
	want := make([]byte, size)
	FillPattern(want, 0)
	werr := make(chan error, 1)
	go func() { _, err := c.Write(want); werr <- err }()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read the %d-byte echo: %w", size, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write %d bytes: %w", size, err)
	}
	if !bytes.Equal(got, want) {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

// target is a loopback listener whose accepted connections are tracked so
// cleanup can close them all.
type target struct {
	ln    net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func listenTarget(t testing.TB, host string, handle func(net.Conn)) *target {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", host, err)
	}
	tg := &target{ln: ln, conns: map[net.Conn]struct{}{}}
	tg.wg.Add(1)
	go func() {
		defer tg.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tg.mu.Lock()
			tg.conns[c] = struct{}{}
			tg.mu.Unlock()
			tg.wg.Add(1)
			go func() {
				defer tg.wg.Done()
				defer func() {
					c.Close()
					tg.mu.Lock()
					delete(tg.conns, c)
					tg.mu.Unlock()
				}()
				handle(c)
			}()
		}
	}()
	t.Cleanup(tg.close)
	return tg
}

func (tg *target) close() {
	tg.ln.Close()
	tg.mu.Lock()
	for c := range tg.conns {
		c.Close()
	}
	tg.mu.Unlock()
	tg.wg.Wait()
}

func (tg *target) addr() string { return tg.ln.Addr().String() }

// Open is the number of connections the target holds right now.
func (tg *target) open() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return len(tg.conns)
}

// Echo is a TCP echo server.
type Echo struct {
	*target
	Addr string
}

// StartEcho starts a TCP echo server on host (e.g. "127.0.0.1").
func StartEcho(t testing.TB, host string) *Echo {
	t.Helper()
	tg := listenTarget(t, host, func(c net.Conn) { _, _ = io.Copy(c, c) })
	return &Echo{target: tg, Addr: tg.addr()}
}

// Open is the number of connections the echo server holds right now.
func (e *Echo) Open() int { return e.open() }

// Streamer sends as many pattern bytes as each client asks for.
type Streamer struct {
	*target
	Addr string
	// Sent counts bytes written to all clients so far.
	Sent atomic.Int64
}

// StartStreamer starts a byte streamer on host.
func StartStreamer(t testing.TB, host string) *Streamer {
	t.Helper()
	s := &Streamer{}
	s.target = listenTarget(t, host, func(c net.Conn) {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		left := int64(binary.BigEndian.Uint64(hdr[:]))
		buf := make([]byte, 64<<10)
		for off := int64(0); off < left; {
			n := min(int64(len(buf)), left-off)
			FillPattern(buf[:n], off)
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
			off += n
			s.Sent.Add(n)
		}
	})
	s.Addr = s.target.addr()
	return s
}

// Sink reads what each client announces and reports how much matched.
type Sink struct {
	*target
	Addr string
	// Received counts pattern-matching bytes from all clients so far.
	Received atomic.Int64
}

// StartSink starts a byte sink on host.
func StartSink(t testing.TB, host string) *Sink {
	t.Helper()
	s := &Sink{}
	s.target = listenTarget(t, host, func(c net.Conn) {
		var hdr [8]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		want := int64(binary.BigEndian.Uint64(hdr[:]))
		buf := make([]byte, 64<<10)
		pat := make([]byte, len(buf))
		var good int64
		for off := int64(0); off < want; {
			n, err := c.Read(buf[:min(int64(len(buf)), want-off)])
			if n > 0 {
				FillPattern(pat[:n], off)
				if bytes.Equal(buf[:n], pat[:n]) {
					good += int64(n)
					s.Received.Add(int64(n))
				}
				off += int64(n)
			}
			if err != nil {
				break
			}
		}
		binary.BigEndian.PutUint64(hdr[:], uint64(good))
		_, _ = c.Write(hdr[:])
	})
	s.Addr = s.target.addr()
	return s
}

// HTTPBody is what the HTTP target answers, followed by the request path.
const HTTPBody = "hello from the edge target, path="

// StartHTTP starts an HTTP server on host that answers every GET with
// HTTPBody + path, and returns its address.
func StartHTTP(t testing.TB, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", host, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, HTTPBody+r.URL.Path)
	})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Logf("HTTP target: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}

// ClosedPort returns host:port on which nothing listens, so a dial is
// refused: it listens on a free port and closes it again.
func ClosedPort(t testing.TB, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", host, err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
