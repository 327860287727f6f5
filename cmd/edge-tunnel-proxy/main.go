// Command edge-tunnel-proxy is the HTTP proxy of edge-tunnel as a sidecar:
// it listens on the loopback of another component's pod (metrics-server,
// Prometheus) and forwards every request through edge-tunnel-server's gRPC
// frontend, so that the component needs only
// HTTPS_PROXY=http://127.0.0.1:8099 and no proxy port is exposed on the
// network.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-proxy/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
