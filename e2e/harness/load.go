package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	konn "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"

	"github.com/edge-tunnel/edge-tunnel/pkg/egress"
)

// Load is verified traffic through a server's frontends, for tests that
// count on volume (the churn test) and for the soak (hack/soak). Each
// operation checks every byte it moved and sorts its end into an expected
// outcome or an unexpected error, so a caller only has to count.
//
// gRPC runs in-process with the konnectivity-client version of the main
// module; the per-version compatibility tests use e2e/konnclient instead.

// Frontend is one way a cloud client reaches edge-tunnel-server.
type Frontend string

const (
	// GRPCUnix is konnectivity-client over the UNIX socket, dialing as
	// kube-apiserver's egress selector does (proxyProtocol: GRPC): a new
	// single-use tunnel per dial, created with context.TODO().
	GRPCUnix Frontend = "grpc/unix"
	// GRPCTCP is konnectivity-client over the TCP frontend with mutual TLS,
	// through pkg/egress as the edge-tunnel-proxy sidecar dials.
	GRPCTCP Frontend = "grpc/tcp"
	// ConnectUnix and ConnectTCP are HTTP CONNECT as kube-apiserver writes
	// it (proxyProtocol: HTTPConnect), over the UNIX socket and over the
	// TCP frontend with mutual TLS.
	ConnectUnix Frontend = "connect/unix"
	ConnectTCP  Frontend = "connect/tcp"
)

// Frontends lists every Frontend.
var Frontends = []Frontend{GRPCUnix, GRPCTCP, ConnectUnix, ConnectTCP}

// ErrTunnelLingers marks a failed gRPC dial whose single-use tunnel did not
// end: konnectivity-client closes it after a failed or cancelled dial, so a
// tunnel still open is a leak (of a gRPC connection to the server).
var ErrTunnelLingers = errors.New("the single-use gRPC tunnel was still open 5 s after the failed dial")

// ConnectError is a CONNECT the server answered with a status other than 200.
type ConnectError struct {
	Status int
	Err    error
}

func (e *ConnectError) Error() string { return e.Err.Error() }
func (e *ConnectError) Unwrap() error { return e.Err }

// LoadClient dials through one server's four frontend paths.
type LoadClient struct {
	uds, tcpAddr string
	tls          *tls.Config
	egress       *egress.Dialer
}

// NewLoadClient returns a client for s. tlsConfig is what the TCP
// frontend accepts (PKI.FrontendClientTLS).
func NewLoadClient(s *Server, tlsConfig *tls.Config) (*LoadClient, error) {
	eg, err := egress.New(egress.Config{Address: s.FrontendAddr, TLS: tlsConfig})
	if err != nil {
		return nil, fmt.Errorf("gRPC dialer for the TCP frontend: %w", err)
	}
	return &LoadClient{uds: s.UDS, tcpAddr: s.FrontendAddr, tls: tlsConfig, egress: eg}, nil
}

// Dial opens a tunneled connection to addr through fe. ctx bounds the dial
// only; cancelling it abandons the dial as a client that gives up does.
func (c *LoadClient) Dial(ctx context.Context, fe Frontend, addr string) (net.Conn, error) {
	switch fe {
	case GRPCUnix:
		return c.dialGRPCUnix(ctx, addr)
	case GRPCTCP:
		rwc, err := c.egress.Dial(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		conn, ok := rwc.(net.Conn)
		if !ok {
			rwc.Close()
			return nil, fmt.Errorf("pkg/egress returned a %T, not a net.Conn", rwc)
		}
		return conn, nil
	case ConnectUnix, ConnectTCP:
		return c.dialConnect(ctx, fe, addr)
	}
	return nil, fmt.Errorf("unknown frontend %q; use one of %v", fe, Frontends)
}

func (c *LoadClient) dialGRPCUnix(ctx context.Context, addr string) (net.Conn, error) {
	uds := c.uds
	contextDialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", uds)
	})
	//nolint:staticcheck // deprecated, and exactly what kube-apiserver 1.35 calls.
	t, err := konn.CreateSingleUseGrpcTunnel(context.TODO(), uds, contextDialer,
		grpc.WithBlock(),
		grpc.WithReturnConnectionError(),
		grpc.WithTimeout(30*time.Second),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		return nil, fmt.Errorf("create gRPC tunnel over %s: %w", uds, err)
	}
	conn, err := t.DialContext(ctx, "tcp", addr)
	if err != nil {
		select {
		case <-t.Done():
		case <-time.After(5 * time.Second):
			return nil, fmt.Errorf("%w (dial error: %v)", ErrTunnelLingers, err)
		}
		return nil, err
	}
	return conn, nil
}

// dialConnect speaks CONNECT on a new connection. A cancelled ctx closes
// the connection, whatever the exchange had reached.
func (c *LoadClient) dialConnect(ctx context.Context, fe Frontend, addr string) (net.Conn, error) {
	var raw net.Conn
	var err error
	if fe == ConnectUnix {
		var d net.Dialer
		raw, err = d.DialContext(ctx, "unix", c.uds)
	} else {
		d := tls.Dialer{Config: c.tls}
		raw, err = d.DialContext(ctx, "tcp", c.tcpAddr)
	}
	if err != nil {
		return nil, fmt.Errorf("connect to the %s frontend: %w", fe, err)
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	res, err := Connect(raw, addr)
	if !stop() {
		raw.Close()
		return nil, fmt.Errorf("CONNECT %s abandoned: %w", addr, ctx.Err())
	}
	if err != nil {
		raw.Close()
		if res.Status != 0 {
			return nil, &ConnectError{Status: res.Status, Err: err}
		}
		return nil, err
	}
	return raw, nil
}

// UnforwardedPort is a port the harness's servers do not forward (unless a
// test's ServerOptions.Ports names it), so dials to it are refused by the
// server's port policy without reaching an agent.
const UnforwardedPort = 1

// NodeTargets are the services of one edge node that load reaches.
type NodeTargets struct {
	Echo   *Echo
	Stream *Streamer
	Sink   *Sink
	// Closed is a forwarded port nothing listens on (refused on the edge);
	// Unforwarded is host:UnforwardedPort (refused by the server).
	Closed      string
	Unforwarded string
}

// StartNodeTargets starts the echo, streamer and sink on host.
func StartNodeTargets(t testing.TB, host string) NodeTargets {
	t.Helper()
	return NodeTargets{
		Echo:        StartEcho(t, host),
		Stream:      StartStreamer(t, host),
		Sink:        StartSink(t, host),
		Closed:      ClosedPort(t, host),
		Unforwarded: net.JoinHostPort(host, fmt.Sprint(UnforwardedPort)),
	}
}

// Open is the number of connections the node's targets hold right now.
func (n NodeTargets) Open() int { return n.Echo.open() + n.Stream.open() + n.Sink.open() }

// OpKind is what an operation does.
type OpKind int

const (
	// OpEcho sends Size random bytes (from Seed) to the echo target and
	// compares the SHA-256 of what comes back.
	OpEcho OpKind = iota
	// OpDownload asks the streamer for Size pattern bytes and checks each,
	// and that the tunnel then ends with EOF.
	OpDownload
	// OpUpload sends Size pattern bytes to the sink, which answers how
	// many matched.
	OpUpload
	// OpCancel dials the echo target and abandons the dial after
	// CancelAfter; a dial that completes first is closed.
	OpCancel
	// OpUnforwarded dials a port the server must refuse ("is not
	// forwarded"; CONNECT: 403).
	OpUnforwarded
	// OpClosed dials a forwarded port nothing listens on; the agent's dial
	// is refused ("refused"; CONNECT: 502).
	OpClosed
)

var opNames = []string{"echo", "download", "upload", "cancel", "unforwarded", "closed"}

func (k OpKind) String() string {
	if k >= 0 && int(k) < len(opNames) {
		return opNames[k]
	}
	return fmt.Sprintf("OpKind(%d)", int(k))
}

// Op is one operation.
type Op struct {
	Kind        OpKind
	Frontend    Frontend
	Node        NodeTargets
	Size        int64
	CancelAfter time.Duration
	Seed        uint64
}

func (op Op) String() string {
	return fmt.Sprintf("%s of %d bytes via %s", op.Kind, op.Size, op.Frontend)
}

// Outcome is how an operation ended as expected.
type Outcome int

const (
	// Verified: the transfer completed and every byte checked out.
	Verified Outcome = iota
	// Refused: the dial failed with the error its kind calls for.
	Refused
	// Cancelled: the dial was abandoned before it completed.
	Cancelled
	// Connected: a cancelled dial completed first and was closed.
	Connected
)

// OpResult is what Run reports. Err is an unexpected error; Outcome is
// then meaningless.
type OpResult struct {
	Outcome Outcome
	// Bytes is the payload moved through the tunnel, both ways.
	Bytes int64
	Err   error
}

// Run performs op. ctx bounds the whole operation: when it ends, the
// connection is closed, which ends any read or write in progress.
func (c *LoadClient) Run(ctx context.Context, op Op) OpResult {
	r := c.run(ctx, op)
	if r.Err != nil {
		r.Err = fmt.Errorf("%s: %w", op, r.Err)
	}
	return r
}

func (c *LoadClient) run(ctx context.Context, op Op) OpResult {
	switch op.Kind {
	case OpCancel:
		return c.runCancel(ctx, op)
	case OpUnforwarded:
		return c.runRefused(ctx, op, op.Node.Unforwarded, "is not forwarded", http.StatusForbidden)
	case OpClosed:
		return c.runRefused(ctx, op, op.Node.Closed, "refused", http.StatusBadGateway)
	}
	var addr string
	switch op.Kind {
	case OpEcho:
		addr = op.Node.Echo.Addr
	case OpDownload:
		addr = op.Node.Stream.Addr
	case OpUpload:
		addr = op.Node.Sink.Addr
	default:
		return OpResult{Err: fmt.Errorf("unknown operation kind %d", op.Kind)}
	}
	conn, err := c.Dial(ctx, op.Frontend, addr)
	if err != nil {
		return OpResult{Err: fmt.Errorf("dial %s: %w", addr, err)}
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	var n int64
	switch op.Kind {
	case OpEcho:
		n, err = echoRandom(conn, op.Size, op.Seed)
	case OpDownload:
		n, err = download(conn, op.Size)
	case OpUpload:
		n, err = upload(conn, op.Size)
	}
	stop()
	if cerr := CloseConn(conn); err == nil {
		err = cerr
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		return OpResult{Bytes: n, Err: err}
	}
	return OpResult{Outcome: Verified, Bytes: n}
}

// CloseConn closes a tunneled connection. konnectivity-client's Close waits
// for the server's CLOSE_RSP; "tunnel closed" (the server ended the stream
// right after it) is normal, its 10 s close timeout is not.
func CloseConn(c net.Conn) error {
	if err := c.Close(); err != nil && err.Error() != "tunnel closed" {
		return fmt.Errorf("close: %w", err)
	}
	return nil
}

func (c *LoadClient) runRefused(ctx context.Context, op Op, addr, want string, wantStatus int) OpResult {
	conn, err := c.Dial(ctx, op.Frontend, addr)
	if err == nil {
		conn.Close()
		return OpResult{Err: fmt.Errorf("dial %s succeeded; want an error mentioning %q", addr, want)}
	}
	if errors.Is(err, ErrTunnelLingers) {
		return OpResult{Err: err}
	}
	if !strings.Contains(err.Error(), want) {
		return OpResult{Err: fmt.Errorf("dial %s: error %q does not mention %q", addr, err, want)}
	}
	if op.Frontend == ConnectUnix || op.Frontend == ConnectTCP {
		var ce *ConnectError
		if !errors.As(err, &ce) || ce.Status != wantStatus {
			return OpResult{Err: fmt.Errorf("dial %s: %v; want status %d", addr, err, wantStatus)}
		}
	}
	return OpResult{Outcome: Refused}
}

func (c *LoadClient) runCancel(ctx context.Context, op Op) OpResult {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timer := time.AfterFunc(op.CancelAfter, cancel)
	conn, err := c.Dial(dctx, op.Frontend, op.Node.Echo.Addr)
	cancelled := dctx.Err() != nil && ctx.Err() == nil
	timer.Stop()
	switch {
	case err == nil:
		if err := CloseConn(conn); err != nil {
			return OpResult{Err: err}
		}
		return OpResult{Outcome: Connected}
	case errors.Is(err, ErrTunnelLingers):
		return OpResult{Err: err}
	case cancelled:
		return OpResult{Outcome: Cancelled}
	}
	return OpResult{Err: fmt.Errorf("dial %s failed before it was cancelled: %w", op.Node.Echo.Addr, err)}
}

// echoRandom writes size bytes from a ChaCha8 stream seeded with seed
// beside reading the echo, and compares the SHA-256 of both.
func echoRandom(c net.Conn, size int64, seed uint64) (int64, error) {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	src := rand.NewChaCha8(key)
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 32<<10)
		for off := int64(0); off < size; {
			n := min(int64(len(buf)), size-off)
			_, _ = src.Read(buf[:n])
			sent.Write(buf[:n])
			if _, err := c.Write(buf[:n]); err != nil {
				werr <- fmt.Errorf("write at byte %d: %w", off, err)
				return
			}
			off += n
		}
		werr <- nil
	}()
	got := sha256.New()
	n, rerr := io.CopyN(got, c, size)
	if rerr != nil {
		// Unblock the writer, which may wait on a full tunnel.
		c.Close()
	}
	if err := <-werr; err != nil && rerr == nil {
		return 2 * n, err
	}
	if rerr != nil {
		return 2 * n, fmt.Errorf("read echo after %d of %d bytes: %w", n, size, rerr)
	}
	if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		return 2 * n, fmt.Errorf("the %d bytes echoed differ from those sent (SHA-256)", size)
	}
	return 2 * n, nil
}

func writeLength(c net.Conn, n int64) error {
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(n))
	if _, err := c.Write(hdr[:]); err != nil {
		return fmt.Errorf("send length header: %w", err)
	}
	return nil
}

// download reads until EOF: exactly size pattern bytes must arrive, and the
// tunnel must then end cleanly.
func download(c net.Conn, size int64) (int64, error) {
	if err := writeLength(c, size); err != nil {
		return 0, err
	}
	buf := make([]byte, 32<<10)
	want := make([]byte, len(buf))
	var got int64
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if got+int64(n) > size {
				return got, fmt.Errorf("received more than the %d bytes asked for", size)
			}
			FillPattern(want[:n], got)
			if !bytes.Equal(buf[:n], want[:n]) {
				return got, fmt.Errorf("downloaded bytes %d..%d differ from the pattern", got, got+int64(n))
			}
			got += int64(n)
		}
		if errors.Is(err, io.EOF) {
			if got != size {
				return got, fmt.Errorf("clean EOF after %d of %d bytes: the download was truncated", got, size)
			}
			return got, nil
		}
		if err != nil {
			return got, fmt.Errorf("download after %d of %d bytes: %w", got, size, err)
		}
	}
}

// upload sends size pattern bytes and requires the sink to count them all.
func upload(c net.Conn, size int64) (int64, error) {
	if err := writeLength(c, size); err != nil {
		return 0, err
	}
	buf := make([]byte, 32<<10)
	for off := int64(0); off < size; {
		n := min(int64(len(buf)), size-off)
		FillPattern(buf[:n], off)
		if _, err := c.Write(buf[:n]); err != nil {
			return off, fmt.Errorf("upload after %d of %d bytes: %w", off, size, err)
		}
		off += n
	}
	var ack [8]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		return size, fmt.Errorf("read the sink's byte count: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(ack[:])); got != size {
		return size, fmt.Errorf("the sink counted %d matching bytes of %d sent", got, size)
	}
	return size, nil
}

// LogUniformSize picks a size in [0, max] whose binary magnitude is
// uniform: as many transfers under 1 KiB as between 128 and 256 KiB,
// like real API traffic (mostly small, some large), at a fraction of the
// bytes a uniform pick would move.
func LogUniformSize(rng *rand.Rand, max int64) int64 {
	bits := 0
	for int64(1)<<bits <= max {
		bits++
	}
	// 0 .. 2^k - 1 for k uniform in 0..bits, clamped to max.
	k := rng.IntN(bits + 1)
	return min(rng.Int64N(int64(1)<<k), max)
}
