package httpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/dialrecord"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

const promptly = 5 * time.Second

// FuzzProxyRequest sends arbitrary bytes to the HTTP proxy as a client's
// first request and checks the answer against net/http's own reading of
// the same bytes. The policy knows edge nodes named edge-*, refuses host
// "gone", and calls port 443 TLS. The invariants:
//   - the proxy only ever dials host:port with a host and a port 1-65535,
//     and never forwards a request to a refused host or a TLS port;
//   - every answer is a well-formed HTTP/1 response; a refusal from the
//     proxy has its reason on the status line;
//   - a CONNECT that gets 200 dialed exactly its target, answered the 200
//     head and nothing else, and the target received every byte the client
//     sent after the head;
//   - a request the target answered was forwarded with the client's method
//     to the port of its URL (or, origin-form, of its Host).
func FuzzProxyRequest(f *testing.F) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Fuzz-Target", "1")
		io.WriteString(w, r.Method)
	}))
	f.Cleanup(backend.Close)
	d := newFuzzDialer(backend.Listener.Addr().String())
	policy := func(host string, port int) Verdict {
		if host == "gone" {
			return Verdict{Refused: tunnel.Errorf(tunnel.KindNoRoute, "test-proxy: no agent for %q", host)}
		}
		return Verdict{PlainHTTP: port != 443, Edge: strings.HasPrefix(host, "edge-")}
	}
	p, err := New(Options{Dialer: d, Policy: policy, DialTimeout: time.Second, Name: "test-proxy"})
	if err != nil {
		f.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(ln) }()
	f.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.Shutdown(ctx)
		<-served
	})

	f.Fuzz(func(t *testing.T, input []byte) {
		br := bufio.NewReader(bytes.NewReader(input))
		req, perr := http.ReadRequest(br)
		if perr != nil {
			d.reset(nil)
		} else {
			d.reset(req)
		}
		answer := proxyExchange(t, ln.Addr().String(), input)
		dials := d.Dials()
		defer d.remember(dials)
		for _, a := range dials {
			host, port, err := net.SplitHostPort(a)
			n, perr := strconv.Atoi(port)
			if err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				t.Fatalf("the proxy dialed %q, which is not host:port with a port 1-65535", a)
			}
			if !d.connect.Load() && host == "gone" {
				// CONNECT leaves refusals to the dialer (the server's
				// router); a forwarded request is judged first.
				t.Fatalf("the proxy forwarded a request to %q, which the policy refuses", a)
			}
			if !d.connect.Load() && n == 443 {
				t.Fatalf("the proxy forwarded a request to TLS port %q", a)
			}
		}
		if len(answer) == 0 {
			if perr == nil && len(dials) > 0 && req.Method == http.MethodConnect {
				t.Fatalf("CONNECT %q was dialed but not answered", req.RequestURI)
			}
			return // net/http hangs up on some broken requests without a word
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(answer)), nil)
		if err != nil {
			t.Fatalf("the answer %q is not an HTTP response: %v", answer, err)
		}
		if resp.ProtoMajor != 1 {
			t.Fatalf("answer in %s, want HTTP/1 (1.0 to a 1.0 client)", resp.Proto)
		}
		fromTarget := resp.Header.Get("X-Fuzz-Target") == "1"
		if resp.StatusCode >= 400 && !fromTarget && strings.Contains(string(answer), "test-proxy") {
			// The proxy's own refusals: "CODE TEXT: REASON".
			if _, reason, _ := strings.Cut(resp.Status, ": "); reason == "" {
				t.Fatalf("refusal %q carries no reason on its status line", resp.Status)
			}
		}
		switch {
		case perr != nil:
			if fromTarget || resp.StatusCode == http.StatusOK {
				t.Fatalf("net/http cannot read this request (%v), yet it was served: %s", perr, resp.Status)
			}
		case req.Method == http.MethodConnect && resp.StatusCode == http.StatusOK:
			if len(dials) != 1 || dials[0] != req.URL.Host {
				t.Fatalf("CONNECT %q dialed %q, want exactly %q once", req.RequestURI, dials, req.URL.Host)
			}
			if head := "HTTP/1.1 200 Connection established\r\n\r\n"; string(answer) != head {
				t.Fatalf("CONNECT answered %q, want exactly %q", answer, head)
			}
			early := input[len(input)-br.Buffered():]
			if got := d.Received(t, promptly); !bytes.Equal(got, early) {
				t.Fatalf("the client sent %q after its head, the target received %q", early, got)
			}
		case fromTarget:
			body, _ := io.ReadAll(resp.Body)
			if req.Method != http.MethodHead && string(body) != req.Method {
				t.Fatalf("the target saw method %q, the client sent %q", body, req.Method)
			}
			target := req.URL.Host
			if !req.URL.IsAbs() {
				target = req.Host
			}
			host, port, err := splitTarget(target)
			if err != nil {
				t.Fatalf("request for %q was forwarded, but its target does not split: %v", target, err)
			}
			// http.Transport may canonicalize the host (IDNA) for its dial
			// and its pool of idle connections; the port it keeps.
			suffix := ":" + strconv.Itoa(port)
			if !d.dialedPort(dials, suffix) {
				t.Fatalf("request for %q was forwarded, but no connection to port %s was dialed (dials: %q)", host, suffix[1:], dials)
			}
		}
	})
}

// proxyExchange writes input to a new connection to addr, ends its writing
// half and returns everything the proxy answers until it closes.
func proxyExchange(t *testing.T, addr string, input []byte) []byte {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, promptly)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(promptly))
	go func() {
		c.Write(input)
		c.(*net.TCPConn).CloseWrite()
	}()
	answer, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading the answer: %v (got %q so far)", err, answer)
	}
	return answer
}

// fuzzDialer records every dial. For CONNECT it connects to a target that
// records what it receives; for forwarded requests, to the loopback HTTP
// backend, whatever the address (the Transport keeps those connections for
// later requests to the same address, so it remembers them).
//
// The Transport finishes a dial it started even when the request that
// asked for it has ended, so a forwarding dial of one input may arrive
// while a later input runs. During a CONNECT, a dial of another address
// whose host an earlier input asked to forward to is taken for one of
// those: it goes to the backend and is not recorded.
type fuzzDialer struct {
	*dialrecord.Recorder
	backend string
	connect atomic.Bool
	ever    map[string]bool // addresses dialed for forwarding in earlier inputs

	mu        sync.Mutex
	target    string          // the CONNECT target of the current input
	forwarded map[string]bool // hosts that inputs asked to forward to
}

func newFuzzDialer(backend string) *fuzzDialer {
	return &fuzzDialer{Recorder: dialrecord.New(1024), backend: backend, ever: map[string]bool{}, forwarded: map[string]bool{}}
}

// reset starts an input: req is what net/http reads of it (nil when it
// cannot be read). Dials recorded since the last input's Dials are late
// forwarding dials of earlier inputs: they are remembered, not counted as
// this input's. Dial decides and records under mu, so a dial is either
// such a late one or judged by this input's state.
func (d *fuzzDialer) reset(req *http.Request) {
	connect := req != nil && req.Method == http.MethodConnect
	d.mu.Lock()
	defer d.mu.Unlock()
	d.remember(d.Dials())
	d.target = ""
	switch {
	case connect:
		d.target = req.URL.Host
	case req != nil:
		for _, h := range []string{req.URL.Host, req.Host} {
			if host, _, err := net.SplitHostPort(h); err == nil {
				h = host
			}
			d.forwarded[strings.ToLower(h)] = true
		}
	}
	d.connect.Store(connect)
	d.Drain()
}

// lateForward reports whether address, dialed during a CONNECT to
// another address, is a late forwarding dial of an earlier input. The
// caller holds mu.
func (d *fuzzDialer) lateForward(address string) bool {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	return address != d.target && d.forwarded[strings.ToLower(host)]
}

// remember records the forwarding dials of an input.
func (d *fuzzDialer) remember(dials []string) {
	if !d.connect.Load() {
		for _, a := range dials {
			d.ever[a] = true
		}
	}
}

// dialedPort reports whether an address ending in suffix (":PORT") was
// dialed for forwarding, by this input or an earlier one whose idle
// connection the Transport may reuse.
func (d *fuzzDialer) dialedPort(dials []string, suffix string) bool {
	for _, a := range dials {
		if strings.HasSuffix(a, suffix) {
			return true
		}
	}
	for a := range d.ever {
		if strings.HasSuffix(a, suffix) {
			return true
		}
	}
	return false
}

func (d *fuzzDialer) Dial(ctx context.Context, _, address string) (io.ReadWriteCloser, error) {
	d.mu.Lock()
	connect := d.connect.Load()
	late := connect && d.lateForward(address)
	if !late {
		d.Dialed(address)
	}
	d.mu.Unlock()
	if late || !connect {
		var nd net.Dialer
		c, err := nd.DialContext(ctx, "tcp", d.backend)
		if err != nil {
			return nil, fmt.Errorf("test dialer: %w", err)
		}
		return c, nil
	}
	return d.Target(), nil
}
