package frontend

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/internal/dialrecord"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

const promptly = 5 * time.Second

// FuzzConnectRequest sends arbitrary bytes to the frontend's UNIX socket,
// as kube-apiserver's HTTP CONNECT client would its request, and compares
// what the Mux and the CONNECT handler make of them with net/http's own
// reading of the same bytes:
//   - no bytes: the connection is closed without an answer;
//   - the HTTP/2 preface: the connection goes to the gRPC server;
//   - a head net/http cannot read: 400 (or 431 for a head over the limit)
//     with the reason on the status line, and no dial;
//   - another method than CONNECT: 405, and no dial;
//   - CONNECT: exactly one dial, of the request target as sent; a refused
//     dial answers with the dial error's status and text; a connected one
//     answers the 200 head and nothing else, and the target receives every
//     byte the client sent after its head, in order.
//
// Every answer is a well-formed HTTP/1.1 response, read within promptly.
func FuzzConnectRequest(f *testing.F) {
	d := &recordingDialer{}
	connect := NewConnect(d, time.Second, klog.Logger{})
	mux := NewMux(connect, klog.Logger{})
	sock := filepath.Join(f.TempDir(), "frontend.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	go mux.Serve(ln, nil)
	var grpcConns atomic.Int64
	go func() {
		for {
			c, err := mux.GRPCListener().Accept()
			if err != nil {
				return
			}
			grpcConns.Add(1)
			c.Close()
		}
	}()
	f.Cleanup(func() { ln.Close(); mux.Close(); connect.Wait() })

	f.Fuzz(func(t *testing.T, input []byte) {
		d.reset()
		grpcBefore := grpcConns.Load()
		answer := exchange(t, sock, input)

		switch {
		case len(input) == 0:
			if len(answer) != 0 {
				t.Fatalf("an empty request got an answer: %q", answer)
			}
			return
		case bytes.HasPrefix(input, http2Preface):
			if len(answer) != 0 {
				t.Fatalf("an HTTP/2 connection got an HTTP/1 answer: %q", answer)
			}
			deadline := time.Now().Add(promptly)
			for grpcConns.Load() == grpcBefore {
				if time.Now().After(deadline) {
					t.Fatalf("an HTTP/2 connection did not reach the gRPC server within %v", promptly)
				}
				time.Sleep(time.Millisecond)
			}
			return
		}

		br := bufio.NewReader(bytes.NewReader(input))
		req, perr := http.ReadRequest(br)
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(answer)), nil)
		if err != nil {
			t.Fatalf("the answer %q is not an HTTP response: %v", answer, err)
		}
		if resp.Proto != "HTTP/1.1" {
			t.Fatalf("answer in %s, want HTTP/1.1", resp.Proto)
		}
		dials := d.Dials()
		if resp.StatusCode != http.StatusOK {
			// WriteStatus: "CODE TEXT: REASON", and the reason as the body.
			_, reason, _ := strings.Cut(resp.Status, ": ")
			body, _ := io.ReadAll(resp.Body)
			if reason == "" || string(body) != reason+"\n" {
				t.Fatalf("refusal %q with body %q: want the reason on the status line and as the body", resp.Status, body)
			}
		}
		switch {
		case perr != nil || len(input) > maxHeadBytes:
			// The server reads through a limit of maxHeadBytes; whether a
			// long head is over it depends on where its end falls.
			if perr != nil && resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("net/http cannot read this request (%v), but it got %s", perr, resp.Status)
			}
			if perr != nil && len(dials) != 0 {
				t.Fatalf("an unreadable request was dialed: %q", dials)
			}
		case req.Method != http.MethodConnect:
			if resp.StatusCode != http.StatusMethodNotAllowed || !strings.Contains(resp.Status, req.Method) {
				t.Fatalf("method %q: got %s, want 405 naming the method", req.Method, resp.Status)
			}
			if len(dials) != 0 {
				t.Fatalf("method %q was dialed: %q", req.Method, dials)
			}
		default:
			if len(dials) != 1 || dials[0] != req.RequestURI {
				t.Fatalf("CONNECT %q dialed %q, want exactly that target once", req.RequestURI, dials)
			}
			if refused(req.RequestURI) {
				// WriteStatus answers in UTF-8 whatever bytes the target had.
				want := "403 Forbidden: " + strings.ToValidUTF8(refusal(req.RequestURI), "\uFFFD")
				if resp.Status != want {
					t.Fatalf("a refused dial was answered %q, want %q", resp.Status, want)
				}
				return
			}
			if head := "HTTP/1.1 200 Connection established\r\n\r\n"; string(answer) != head {
				t.Fatalf("CONNECT answered %q, want exactly %q", answer, head)
			}
			early := input[len(input)-br.Buffered():]
			if got := d.Received(t, promptly); !bytes.Equal(got, early) {
				t.Fatalf("the client sent %q after its head, the target received %q", early, got)
			}
		}
	})
}

// exchange writes input to a new connection to sock, ends its writing half
// and returns everything the server answers until it closes.
func exchange(t *testing.T, sock string, input []byte) []byte {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(promptly))
	go func() {
		c.Write(input) // the server may answer and close before reading it all
		c.(*net.UnixConn).CloseWrite()
	}()
	answer, err := io.ReadAll(c)
	// A UNIX socket closed with unread input resets the peer after the
	// data it had sent: the answer is complete.
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading the answer: %v (got %q so far)", err, answer)
	}
	return answer
}

func refused(address string) bool { return strings.Contains(address, "refuse") }

func refusal(address string) string {
	return "test dialer: " + address + " is refused by policy"
}

// recordingDialer stands in for the router: it records every dial, refuses
// targets that contain "refuse" as the port policy would, and connects the
// others to a target that records what it receives.
type recordingDialer struct {
	*dialrecord.Recorder
}

func (d *recordingDialer) reset() { d.Recorder = dialrecord.New(16) }

func (d *recordingDialer) Dial(ctx context.Context, _, address string) (io.ReadWriteCloser, error) {
	d.Dialed(address)
	if refused(address) {
		return nil, tunnel.Errorf(tunnel.KindForbidden, "%s", refusal(address))
	}
	return d.Target(), nil
}
