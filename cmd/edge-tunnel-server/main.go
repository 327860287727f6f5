// Command edge-tunnel-server is the cloud side of edge-tunnel: kube-apiserver
// and other cloud clients reach edge nodes through it, over the agents that
// the edge nodes keep connected to it.
package main

import (
	"os"

	"k8s.io/component-base/cli"

	"github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-server/app"
)

func main() {
	os.Exit(cli.Run(app.NewCommand()))
}
