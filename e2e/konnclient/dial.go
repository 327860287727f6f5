package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/pkg/client"
)

// egressDialer dials through edge-tunnel-server's UNIX socket the way
// kube-apiserver's egress selector does for `proxyProtocol: GRPC` with
// `transport.uds` (k8s.io/apiserver v0.35, pkg/server/egressselector):
//
//   - every dial opens a NEW unix-socket connection and a NEW gRPC connection
//     (CreateSingleUseGrpcTunnel), so the server pays its per-dial setup cost;
//   - the tunnel's context is context.TODO(): kube-apiserver cannot tie the
//     tunnel's lifetime to the request, only the dial itself;
//   - gRPC dial options: a context dialer to the socket, WithBlock,
//     WithReturnConnectionError, WithTimeout(30s) (matching
//     http.DefaultTransport's dial timeout) and insecure transport credentials;
//   - then tunnel.DialContext(ctx, "tcp", address) with the caller's context.
//
// Keeping these options identical matters: WithBlock plus the timeout decide
// how a dead socket surfaces, and the single-use tunnel decides how the server
// sees closes (CLOSE_REQ, then the gRPC connection goes away).
type egressDialer struct {
	udsName string
}

// tunnel creates one single-use tunnel.
func (d egressDialer) tunnel() (client.Tunnel, error) {
	udsName := d.udsName
	contextDialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
		var nd net.Dialer
		c, err := nd.DialContext(ctx, "unix", udsName)
		if err != nil {
			return nil, fmt.Errorf("connect to unix socket %s: %w", udsName, err)
		}
		return c, nil
	})
	//nolint:staticcheck // WithBlock, WithTimeout and CreateSingleUseGrpcTunnel are deprecated, and exactly what kube-apiserver uses.
	t, err := client.CreateSingleUseGrpcTunnel(context.TODO(), udsName, contextDialer,
		grpc.WithBlock(),
		grpc.WithReturnConnectionError(),
		grpc.WithTimeout(30*time.Second),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		return nil, fmt.Errorf("create gRPC tunnel over %s: %w", udsName, err)
	}
	return t, nil
}

// dial creates a tunnel and dials address through it. It returns the tunnel
// too, so callers can wait for it to finish.
func (d egressDialer) dial(ctx context.Context, address string) (net.Conn, client.Tunnel, error) {
	t, err := d.tunnel()
	if err != nil {
		return nil, nil, err
	}
	c, err := t.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, t, err
	}
	return c, t, nil
}
