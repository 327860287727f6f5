package tunnel

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestWaitReadable: a quiet socket is waited on without reading from it;
// bytes, the peer's close and our own close all end the wait, and the bytes
// are still there to read.
func TestWaitReadable(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("waiting without a buffer needs MSG_PEEK (Linux)")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dial := func() (client, server net.Conn) {
		t.Helper()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	wait := func(c net.Conn) <-chan bool {
		done := make(chan bool, 1)
		go func() { done <- WaitReadable(c) }()
		return done
	}
	quiet := func(done <-chan bool, what string) {
		t.Helper()
		select {
		case <-done:
			t.Fatalf("WaitReadable returned %s", what)
		case <-time.After(100 * time.Millisecond):
		}
	}
	ready := func(done <-chan bool, what string) {
		t.Helper()
		select {
		case ok := <-done:
			if !ok {
				t.Fatalf("WaitReadable = false %s, want true", what)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("WaitReadable still waiting %s", what)
		}
	}

	c, s := dial()
	done := wait(s)
	quiet(done, "on a quiet socket")
	c.Write([]byte("hello"))
	ready(done, "after the peer wrote")
	ready(wait(s), "again while the bytes are unread") // peeking consumed nothing
	got := make([]byte, 5)
	if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, []byte("hello")) {
		t.Fatalf("read %q, %v after waiting; want the bytes the peer wrote", got, err)
	}
	done = wait(s)
	quiet(done, "once the bytes were read")
	c.Close()
	ready(done, "after the peer closed")
	s.Close()

	c, s = dial()
	defer c.Close()
	done = wait(s)
	s.Close()
	select {
	case <-done: // ours closed: the wait ends, and the read that follows fails
	case <-time.After(5 * time.Second):
		t.Fatal("WaitReadable still waiting after the socket was closed")
	}

	if WaitReadable(bytes.NewReader(nil)) {
		t.Fatal("WaitReadable = true for a reader that is not a socket; want false at once")
	}
}
