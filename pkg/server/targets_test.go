package server_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
)

// serveTCP listens on addr until the test ends and runs handle on every
// connection in a goroutine of its own; it returns the address.
func serveTCP(t testing.TB, addr string, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

// byteServer is a loopback target for transfer tests. A client sends an
// 8-byte big-endian size and a direction byte: 'd' and the server sends that
// many bytes; 'u' and the server reads that many bytes and answers one byte.
func byteServer(t testing.TB) string {
	t.Helper()
	chunk := make([]byte, 256<<10)
	return serveTCP(t, "127.0.0.1:0", func(c net.Conn) {
		defer c.Close()
		var hdr [9]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint64(hdr[:8]))
		switch hdr[8] {
		case 'd':
			for n > 0 {
				w, err := c.Write(chunk[:min(n, int64(len(chunk)))])
				if err != nil {
					return
				}
				n -= int64(w)
			}
			// Wait for the client to close, so the last bytes are not
			// raced by our close.
			io.Copy(io.Discard, c)
		case 'u':
			if _, err := io.CopyN(io.Discard, c, n); err != nil {
				return
			}
			c.Write([]byte{1})
		}
	})
}

func request(c net.Conn, n int64, dir byte) error {
	var hdr [9]byte
	binary.BigEndian.PutUint64(hdr[:8], uint64(n))
	hdr[8] = dir
	_, err := c.Write(hdr[:])
	return err
}

// download reads n bytes from c after asking for them.
func download(c net.Conn, n int64, buf []byte) error {
	if err := request(c, n, 'd'); err != nil {
		return err
	}
	got, err := io.CopyBuffer(io.Discard, io.LimitReader(c, n), buf)
	if err == nil && got != n {
		err = fmt.Errorf("download ended after %d of %d bytes", got, n)
	}
	return err
}

// upload sends n bytes and waits for the acknowledgement.
func upload(c net.Conn, n int64, buf []byte) error {
	if err := request(c, n, 'u'); err != nil {
		return err
	}
	for n > 0 {
		w, err := c.Write(buf[:min(n, int64(len(buf)))])
		if err != nil {
			return err
		}
		n -= int64(w)
	}
	var ack [1]byte
	_, err := io.ReadFull(c, ack[:])
	return err
}
