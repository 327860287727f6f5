// Package egress dials through edge-tunnel-server's gRPC frontend with the
// real konnectivity-client, the way kube-apiserver's egress selector does
// (proxyProtocol: GRPC): a new single-use tunnel, and so a new gRPC
// connection, for every dial, over the server's UNIX socket or over TCP with
// mutual TLS. The edge-tunnel-proxy sidecar uses it as its dialer.
package egress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	konn "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
	konnmetrics "sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client/metrics"

	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// Config says how to reach the server: UDSName, or Address with TLS.
type Config struct {
	// UDSName is the server's UNIX socket (--uds-name of the server).
	UDSName string
	// Address is host:port of the server's TCP frontend; TLS must then
	// carry a client certificate the frontend accepts.
	Address string
	TLS     *tls.Config
}

// Dialer opens tunneled connections through the server.
type Dialer struct {
	target string
	opts   []grpc.DialOption
}

// New checks cfg and returns a Dialer. Nothing is dialed yet.
func New(cfg Config) (*Dialer, error) {
	switch {
	case cfg.UDSName != "" && cfg.Address != "":
		return nil, errors.New("egress: give the server's UNIX socket or its TCP address, not both")
	case cfg.UDSName != "":
		uds := cfg.UDSName
		return &Dialer{target: uds, opts: []grpc.DialOption{
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", uds)
			}),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
		}}, nil
	case cfg.Address != "":
		if cfg.TLS == nil {
			return nil, fmt.Errorf("egress: the TCP frontend %s needs TLS with a client certificate", cfg.Address)
		}
		return &Dialer{target: cfg.Address, opts: []grpc.DialOption{
			grpc.WithTransportCredentials(credentials.NewTLS(cfg.TLS)),
		}}, nil
	}
	return nil, errors.New("egress: no server: give its UNIX socket or its TCP address")
}

// Dial opens a connection to address through a new single-use tunnel. ctx
// bounds the dial only; the connection lives until it is closed. Errors are
// *tunnel.DialErrors whose kind follows the server's answer, so that the
// HTTP proxy maps them to the same statuses as the server's own frontends.
func (d *Dialer) Dial(ctx context.Context, _, address string) (io.ReadWriteCloser, error) {
	// The tunnel outlives ctx, but while it is being set up ctx must be
	// able to end it: konnectivity-client opens the stream with the
	// tunnel's context, and a server that does not answer would otherwise
	// hold the dial until gRPC gives up connecting.
	tunnelCtx, cancelTunnel := context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, cancelTunnel)
	t, err := konn.CreateSingleUseGrpcTunnelWithContext(ctx, tunnelCtx, d.target, d.opts...)
	if err != nil {
		cancelTunnel()
		if ctx.Err() != nil {
			return nil, tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-proxy: reaching edge-tunnel-server at %s to dial %s timed out", d.target, address)
		}
		return nil, tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-proxy: cannot reach edge-tunnel-server at %s to dial %s: %v", d.target, address, err)
	}
	c, err := t.DialContext(ctx, "tcp", address)
	if err != nil {
		cancelTunnel()
		return nil, classify(address, err)
	}
	if !stop() {
		// ctx ended just as the dial succeeded and has cancelled the tunnel.
		c.Close()
		return nil, tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-proxy: dial of %s through edge-tunnel-server timed out", address)
	}
	return &conn{Conn: c, cancel: cancelTunnel}, nil
}

// conn releases the tunnel's context once the connection is closed
// (konnectivity-client's Close waits for the server's CLOSE_RSP first).
type conn struct {
	net.Conn
	cancel context.CancelFunc
	once   sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.cancel)
	return err
}

// classify turns a konnectivity-client dial error into a DialError. The
// server's reason (DIAL_RSP) is passed on word for word; its kind is read
// from the text, the only thing the protocol carries.
func classify(address string, err error) error {
	_, reason := konn.GetDialFailureReason(err)
	switch reason {
	case konnmetrics.DialFailureEndpoint:
		return tunnel.Errorf(KindOfReason(err.Error()), "%s", err.Error())
	case konnmetrics.DialFailureContext, konnmetrics.DialFailureTimeout:
		return tunnel.Errorf(tunnel.KindTimeout, "edge-tunnel-proxy: dial of %s through edge-tunnel-server timed out", address)
	}
	return tunnel.Errorf(tunnel.KindFailed, "edge-tunnel-proxy: dial of %s through edge-tunnel-server failed: %v", address, err)
}

// KindOfReason classifies the text of a server's dial refusal. The phrases
// are edge-tunnel-server's (pkg/router, pkg/server); anything else,
// upstream konnectivity-server's texts included, is a plain failure.
func KindOfReason(msg string) tunnel.Kind {
	switch {
	case strings.Contains(msg, "is not forwarded"):
		return tunnel.KindForbidden
	case strings.Contains(msg, "no edge-tunnel-agent"):
		return tunnel.KindNoRoute
	case strings.Contains(msg, "bad address"), strings.Contains(msg, "bad port"), strings.Contains(msg, "empty host"):
		return tunnel.KindBadRequest
	case strings.Contains(msg, "did not complete the dial"), strings.Contains(msg, "timed out"):
		return tunnel.KindTimeout
	case strings.Contains(msg, "disconnected"), strings.Contains(msg, "broke while dialing"):
		return tunnel.KindUnavailable
	}
	return tunnel.KindFailed
}
