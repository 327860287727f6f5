package frontend

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/edge-tunnel/edge-tunnel/pkg/metrics"
	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// maxHeadBytes is the default of Mux.MaxHeadBytes.
const maxHeadBytes = 16 << 10

// Connect serves HTTP CONNECT the way kube-apiserver's egress selector
// (proxyProtocol: HTTPConnect) uses it: one connection per dial, status 200
// only once the target is connected, and not a byte after the response head
// until tunnel data. Failures get 4xx/5xx with the reason on the status line,
// which kube-apiserver puts in the error its caller sees.
type Connect struct {
	dialer      Dialer
	dialTimeout time.Duration
	log         klog.Logger

	wg sync.WaitGroup
}

// NewConnect returns the CONNECT handler.
func NewConnect(d Dialer, dialTimeout time.Duration, log klog.Logger) *Connect {
	return &Connect{dialer: d, dialTimeout: dialTimeout, log: log}
}

// Wait blocks until every CONNECT tunnel has ended.
func (h *Connect) Wait() { h.wg.Wait() }

// serveConn handles one CONNECT connection. c.r reads through lim, which
// still bounds the request head, under a read deadline of headTimeout;
// refused counts a head over either limit. established runs once the tunnel
// is open: from then on the connection belongs to Wait, not to Mux.Close, so
// a shutdown lets it finish within the grace period.
func (h *Connect) serveConn(c *bufferedConn, lim *headLimit, headTimeout time.Duration, refused func(reason string), established func()) {
	h.wg.Add(1)
	defer h.wg.Done()
	tunneling := false
	defer func() {
		if !tunneling {
			c.Close()
		}
	}()

	// ReadRequest consumes exactly the head from c.r; any tunnel data the
	// client sent early stays buffered there.
	req, err := http.ReadRequest(c.r)
	lim.off()
	if err != nil {
		if lim.exceeded {
			refused(metrics.RefusedHeaderTooLarge)
			WriteStatus(c, http.StatusRequestHeaderFieldsTooLarge, fmt.Sprintf("edge-tunnel-server: request head larger than %d bytes", lim.max))
			return
		}
		if isTimeout(err) {
			refused(metrics.RefusedHeaderTimeout)
			WriteStatus(c, http.StatusRequestTimeout, fmt.Sprintf("edge-tunnel-server: request head not complete within %v", headTimeout))
			return
		}
		WriteStatus(c, http.StatusBadRequest, "edge-tunnel-server: malformed HTTP request: "+err.Error())
		return
	}
	if req.Method != http.MethodConnect {
		WriteStatus(c, http.StatusMethodNotAllowed, fmt.Sprintf("edge-tunnel-server: method %s is not served here; send CONNECT host:port", req.Method))
		return
	}
	c.Conn.SetReadDeadline(time.Time{})

	address := req.RequestURI
	ctx, cancel := context.WithTimeout(context.Background(), h.dialTimeout)
	backend, err := h.dialer.Dial(ctx, "connect", address)
	cancel()
	if err != nil {
		WriteStatus(c, StatusFor(err), err.Error())
		return
	}
	if _, err := io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		backend.Close()
		return
	}
	established()
	// The tunnel gets a goroutine of its own and this one, whose stack grew
	// while parsing and dialing, ends: a tunnel idles for hours, and a stack
	// that grew only as far as copying needs is what it then costs.
	tunneling = true
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		tunnel.Splice(c, backend)
	}()
}

// StatusFor maps a dial failure to the status upstream konnectivity uses for
// it where it has one. Every HTTP frontend (CONNECT here, pkg/httpproxy)
// answers the same failure with the same status.
func StatusFor(err error) int {
	switch tunnel.KindOf(err) {
	case tunnel.KindNoRoute, tunnel.KindUnavailable:
		return http.StatusServiceUnavailable
	case tunnel.KindForbidden:
		return http.StatusForbidden
	case tunnel.KindTimeout:
		return http.StatusGatewayTimeout
	case tunnel.KindBadRequest:
		return http.StatusBadRequest
	default:
		return http.StatusBadGateway
	}
}

// WriteStatus answers with one line of reason: on the status line, where
// kube-apiserver reports it, and as the body for humans with curl. It writes
// a whole response that closes the connection, so w must be the raw
// connection (or a hijacked one).
//
// The reason is made valid UTF-8 (the body says charset=utf-8; a target a
// client named in bytes that are not UTF-8 is echoed with U+FFFD in their
// place) and kept on one line.
func WriteStatus(w io.Writer, code int, reason string) {
	reason = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, strings.ToValidUTF8(reason, "\uFFFD"))
	body := reason + "\n"
	fmt.Fprintf(w, "HTTP/1.1 %d %s: %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		code, http.StatusText(code), reason, len(body), body)
}

// headLimit passes reads through, failing once more than n bytes were read
// while it is on. It is turned off once the request head has been parsed.
type headLimit struct {
	r        io.Reader
	max      int
	n        int
	on       bool
	exceeded bool
}

func newHeadLimit(r io.Reader, max int) *headLimit {
	return &headLimit{r: r, max: max, n: max, on: true}
}

func (l *headLimit) off() { l.on = false }

func (l *headLimit) Read(p []byte) (int, error) {
	if !l.on {
		return l.r.Read(p)
	}
	if l.n <= 0 {
		l.exceeded = true
		return 0, fmt.Errorf("request head larger than %d bytes", l.max)
	}
	if len(p) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= n
	return n, err
}
