// Command edge-tunnel-agent is the edge side of edge-tunnel: it runs on each
// edge node, dials out to edge-tunnel-server, and dials node-local targets
// for the cloud.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-agent/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
