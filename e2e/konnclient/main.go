// Command konnclient drives edge-tunnel-server's gRPC frontend with the real
// konnectivity-client, dialing exactly as kube-apiserver's egress selector
// does (see dial.go). The e2e tests build it twice: with go.mod against the
// client version kube-apiserver 1.35 links (v0.31.2), and with
// -modfile=go.v037.mod against the newest client.
//
// It prints one JSON line on stdout and exits 0 whenever the operation ran,
// whether or not it succeeded: the test decides what the outcome means. It
// exits 2 only for bad flags.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// result is the one line konnclient prints.
type result struct {
	// OK reports whether the operation did what it is for; for dial-error
	// that is "the dial failed".
	OK bool `json:"ok"`
	// Error is the first error seen (for dial-error: the dial's error text).
	Error string `json:"error"`
	// Bytes is the payload moved: echoed, downloaded or uploaded.
	Bytes int64 `json:"bytes"`
	// Status and Body are the HTTP response of the http operation.
	Status int    `json:"status,omitempty"`
	Body   string `json:"body,omitempty"`
	// DialMillis is how long each dial took (tunnel creation included).
	DialMillis []float64 `json:"dialMillis,omitempty"`
	// MaxCloseMillis is the longest conn.Close (CLOSE_REQ until CLOSE_RSP).
	MaxCloseMillis float64 `json:"maxCloseMillis,omitempty"`
	// CloseErrors counts closes that returned an error other than "tunnel
	// closed" (for example the client's 10 s CLOSE_RSP timeout).
	CloseErrors int `json:"closeErrors,omitempty"`
	// Cancelled and Connected count the outcomes of the cancel operation.
	Cancelled int `json:"cancelled,omitempty"`
	Connected int `json:"connected,omitempty"`
	// Client is the konnectivity-client module version linked in.
	Client string `json:"client"`
	// Millis is the operation's wall time.
	Millis float64 `json:"millis"`
}

func main() {
	var (
		uds          = flag.String("uds", "", "path of edge-tunnel-server's UNIX socket (required)")
		op           = flag.String("op", "", "operation: echo, http, download, upload, dial-error, cycles, cancel")
		addr         = flag.String("addr", "", "host:port to dial through the tunnel (required)")
		size         = flag.Int64("size", 64, "bytes to echo, download or upload")
		n            = flag.Int("n", 1, "number of dials for cycles and cancel")
		path         = flag.String("path", "/", "URL path for the http operation")
		cancelSpread = flag.Duration("cancel-spread", time.Millisecond, "cancel: the i-th dial's context is cancelled after (i mod 10)/10 of this")
		timeout      = flag.Duration("timeout", 60*time.Second, "hard limit for the whole operation")
	)
	flag.Parse()
	if *uds == "" || *addr == "" || *op == "" {
		fmt.Fprintln(os.Stderr, "konnclient: -uds, -addr and -op are required; see -help")
		os.Exit(2)
	}
	run, ok := operations[*op]
	if !ok {
		fmt.Fprintf(os.Stderr, "konnclient: unknown -op %q; use echo, http, download, upload, dial-error, cycles or cancel\n", *op)
		os.Exit(2)
	}
	if *size < 0 || *n < 1 || *timeout <= 0 {
		fmt.Fprintln(os.Stderr, "konnclient: -size must be >= 0, -n >= 1 and -timeout > 0")
		os.Exit(2)
	}

	start := time.Now()
	var once sync.Once
	emit := func(r result) {
		once.Do(func() {
			r.Client = clientVersion()
			r.Millis = millis(time.Since(start))
			line, _ := json.Marshal(r)
			fmt.Println(string(line))
		})
	}

	// The tunnel's conn has no deadlines, so a stuck read can only be ended
	// from outside: this watchdog is the hard timeout.
	time.AfterFunc(*timeout, func() {
		emit(result{Error: fmt.Sprintf("hard timeout: operation %s did not finish within %s", *op, *timeout)})
		os.Exit(0)
	})

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	emit(run(ctx, params{
		dialer:       egressDialer{udsName: *uds},
		addr:         *addr,
		size:         *size,
		n:            *n,
		path:         *path,
		cancelSpread: *cancelSpread,
	}))
}

// clientVersion reports which konnectivity-client this binary links.
func clientVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	for _, d := range info.Deps {
		if d.Path == "sigs.k8s.io/apiserver-network-proxy/konnectivity-client" {
			return d.Version
		}
	}
	return "unknown"
}

func millis(d time.Duration) float64 {
	return float64(d.Microseconds()) / 1000
}
