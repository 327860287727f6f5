package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
)

// The byte-moving targets (e2e/harness) speak a tiny protocol: the client
// first sends an 8-byte big-endian length L. The streamer then sends L bytes
// of pattern and closes; the sink reads L bytes, checks them against the
// pattern and answers with an 8-byte big-endian count of the bytes that
// matched. Byte i of the pattern is i mod 251, a prime, so a lost, repeated
// or reordered chunk shows up as a mismatch.
const patternModulus = 251

func fillPattern(b []byte, offset int64) {
	for i := range b {
		b[i] = byte((offset + int64(i)) % patternModulus)
	}
}

type params struct {
	dialer       egressDialer
	addr         string
	size         int64
	n            int
	path         string
	cancelSpread time.Duration
}

type operation func(context.Context, params) result

var operations = map[string]operation{
	"echo":       opEcho,
	"http":       opHTTP,
	"download":   opDownload,
	"upload":     opUpload,
	"dial-error": opDialError,
	"cycles":     opCycles,
	"cancel":     opCancel,
}

// timedDial dials once and records the dial time in r.
func timedDial(ctx context.Context, p params, r *result) (net.Conn, error) {
	start := time.Now()
	c, _, err := p.dialer.dial(ctx, p.addr)
	r.DialMillis = append(r.DialMillis, millis(time.Since(start)))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.addr, err)
	}
	return c, nil
}

// timedClose closes c and records how long the CLOSE_REQ/CLOSE_RSP exchange
// took. "tunnel closed" is a normal outcome (the server may end the stream
// right after CLOSE_RSP); anything else, such as the client's 10 s close
// timeout, is counted.
func timedClose(c net.Conn, r *result) {
	start := time.Now()
	err := c.Close()
	if d := millis(time.Since(start)); d > r.MaxCloseMillis {
		r.MaxCloseMillis = d
	}
	if err != nil && err.Error() != "tunnel closed" {
		r.CloseErrors++
	}
}

func fail(r result, err error) result {
	r.OK = false
	if r.Error == "" {
		r.Error = err.Error()
	}
	return r
}

// echoOnce writes size bytes of pattern and reads them back. The writer runs
// beside the reader so that a large echo cannot deadlock on full buffers.
func echoOnce(c net.Conn, size int64) (int64, error) {
	want := make([]byte, size)
	fillPattern(want, 0)
	werr := make(chan error, 1)
	go func() {
		const chunk = 32 << 10
		for off := int64(0); off < size; off += chunk {
			end := min(off+chunk, size)
			if _, err := c.Write(want[off:end]); err != nil {
				werr <- fmt.Errorf("write at byte %d: %w", off, err)
				return
			}
		}
		werr <- nil
	}()
	got := make([]byte, size)
	n, err := io.ReadFull(c, got)
	if err != nil {
		return int64(n), fmt.Errorf("read echo after %d of %d bytes: %w", n, size, err)
	}
	if err := <-werr; err != nil {
		return int64(n), err
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && got[i] == want[i] {
			i++
		}
		return int64(n), fmt.Errorf("echo differs from what was sent at byte %d", i)
	}
	return int64(n), nil
}

func opEcho(ctx context.Context, p params) result {
	var r result
	c, err := timedDial(ctx, p, &r)
	if err != nil {
		return fail(r, err)
	}
	r.Bytes, err = echoOnce(c, p.size)
	timedClose(c, &r)
	if err != nil {
		return fail(r, err)
	}
	r.OK = true
	return r
}

// opHTTP sends one GET through the tunnel with net/http, as kube-apiserver's
// transports do on top of the egress dialer.
func opHTTP(ctx context.Context, p params) result {
	var r result
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return timedDial(ctx, params{dialer: p.dialer, addr: addr}, &r)
		},
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+p.path, nil)
	if err != nil {
		return fail(r, fmt.Errorf("build request: %w", err))
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fail(r, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r.Status = resp.StatusCode
	r.Body = string(body)
	r.Bytes = int64(len(body))
	if err != nil {
		return fail(r, fmt.Errorf("read response body: %w", err))
	}
	r.OK = true
	return r
}

func writeLength(c net.Conn, n int64) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return fmt.Errorf("send length header: %w", err)
	}
	return nil
}

func opDownload(ctx context.Context, p params) result {
	var r result
	c, err := timedDial(ctx, p, &r)
	if err != nil {
		return fail(r, err)
	}
	defer timedClose(c, &r)
	if err := writeLength(c, p.size); err != nil {
		return fail(r, err)
	}
	buf := make([]byte, 64<<10)
	want := make([]byte, len(buf))
	for r.Bytes < p.size {
		n, err := c.Read(buf)
		if n > 0 {
			fillPattern(want[:n], r.Bytes)
			if !bytes.Equal(buf[:n], want[:n]) {
				return fail(r, fmt.Errorf("downloaded data differs from the pattern within bytes %d..%d", r.Bytes, r.Bytes+int64(n)))
			}
			r.Bytes += int64(n)
		}
		if err != nil {
			return fail(r, fmt.Errorf("download stopped after %d of %d bytes: %w", r.Bytes, p.size, err))
		}
	}
	r.OK = true
	return r
}

func opUpload(ctx context.Context, p params) result {
	var r result
	c, err := timedDial(ctx, p, &r)
	if err != nil {
		return fail(r, err)
	}
	defer timedClose(c, &r)
	if err := writeLength(c, p.size); err != nil {
		return fail(r, err)
	}
	buf := make([]byte, 64<<10)
	for off := int64(0); off < p.size; {
		n := min(int64(len(buf)), p.size-off)
		fillPattern(buf[:n], off)
		if _, err := c.Write(buf[:n]); err != nil {
			return fail(r, fmt.Errorf("upload stopped after %d of %d bytes: %w", off, p.size, err))
		}
		off += n
		r.Bytes = off
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return fail(r, fmt.Errorf("read the sink's byte count: %w", err))
	}
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != p.size {
		return fail(r, fmt.Errorf("sink received %d matching bytes, sent %d", got, p.size))
	}
	r.OK = true
	return r
}

func opDialError(ctx context.Context, p params) result {
	var r result
	c, err := timedDial(ctx, p, &r)
	if err == nil {
		timedClose(c, &r)
		r.Error = "dial of " + p.addr + " succeeded, but an error was expected"
		return r
	}
	r.OK = true
	r.Error = err.Error()
	return r
}

// opCycles runs n sequential dial / 64-byte echo / close cycles, each with
// its own tunnel as kube-apiserver does.
func opCycles(ctx context.Context, p params) result {
	var r result
	for i := 0; i < p.n; i++ {
		c, err := timedDial(ctx, p, &r)
		if err != nil {
			return fail(r, fmt.Errorf("cycle %d: %w", i, err))
		}
		n, err := echoOnce(c, 64)
		r.Bytes += n
		timedClose(c, &r)
		if err != nil {
			return fail(r, fmt.Errorf("cycle %d: %w", i, err))
		}
	}
	r.OK = true
	return r
}

// opCancel runs n dials whose context is cancelled a moment after the dial
// starts, spread over cancelSpread so that some cancels land before and some
// after the server's DIAL_RSP. A cancelled dial makes the client send
// DIAL_CLS and drop its tunnel; a DIAL_RSP that arrives after that must not
// leave a connection open on the server or the agent. Dials that win the
// race are closed normally.
func opCancel(ctx context.Context, p params) result {
	var r result
	for i := 0; i < p.n; i++ {
		t, err := p.dialer.tunnel()
		if err != nil {
			return fail(r, fmt.Errorf("dial %d: %w", i, err))
		}
		dctx, cancel := context.WithCancel(ctx)
		delay := p.cancelSpread * time.Duration(i%10) / 10
		timer := time.AfterFunc(delay, cancel)
		start := time.Now()
		c, err := t.DialContext(dctx, "tcp", p.addr)
		r.DialMillis = append(r.DialMillis, millis(time.Since(start)))
		cancelled := dctx.Err() != nil
		timer.Stop()
		cancel()
		switch {
		case err == nil:
			r.Connected++
			timedClose(c, &r)
		case cancelled:
			r.Cancelled++
		default:
			return fail(r, fmt.Errorf("dial %d failed before its context was cancelled: %w", i, err))
		}
		if err := waitTunnel(ctx, t); err != nil {
			return fail(r, fmt.Errorf("dial %d: %w", i, err))
		}
	}
	r.OK = true
	return r
}

// waitTunnel waits for a tunnel to wind down, so that cancel's dials do not
// pile up; the client closes it by itself after a cancelled dial or a close.
func waitTunnel(ctx context.Context, t client.Tunnel) error {
	select {
	case <-t.Done():
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("tunnel still open 5 s after the dial ended")
	case <-ctx.Done():
		return ctx.Err()
	}
}
