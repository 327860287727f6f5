package harness

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// ProxyOptions tune StartProxy.
type ProxyOptions struct {
	// Via is how the sidecar reaches the server's gRPC frontend: "uds"
	// (the unix socket, the default) or "mtls" (the TCP frontend with the
	// kube-apiserver client certificate of the frontend CA).
	Via string
	// ExtraArgs are appended to the command line.
	ExtraArgs []string
}

// Proxy is a running edge-tunnel-proxy sidecar.
type Proxy struct {
	*Process
	// Addr is the proxy's host:port on loopback.
	Addr string
}

// StartProxy starts edge-tunnel-proxy against s and waits until it accepts
// connections.
func StartProxy(t testing.TB, bins Binaries, p *PKI, s *Server, opts ProxyOptions) *Proxy {
	t.Helper()
	if opts.Via == "" {
		opts.Via = "uds"
	}
	port := FreePorts(t, 1)[0]
	px := &Proxy{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	args := []string{"--bind-address", "127.0.0.1", "--port", strconv.Itoa(port), "-v", "2"}
	switch opts.Via {
	case "uds":
		args = append(args, "--uds-name", s.UDS)
	case "mtls":
		host, fport, err := net.SplitHostPort(s.FrontendAddr)
		if err != nil {
			t.Fatalf("server frontend address %q: %v", s.FrontendAddr, err)
		}
		args = append(args, "--server-host", host, "--server-port", fport,
			"--ca-cert", p.FrontendCA, "--client-cert", p.FrontendClientCert, "--client-key", p.FrontendClientKey)
	default:
		t.Fatalf("StartProxy: Via %q: want uds or mtls", opts.Via)
	}
	args = append(args, opts.ExtraArgs...)
	px.Process = startProcess(t, "proxy-"+opts.Via, t.TempDir(), bins.Proxy, args...)
	if err := px.waitListening(px.Addr, ReadyTimeout); err != nil {
		t.Fatalf("edge-tunnel-proxy not ready: %v\n%s", err, px.LogTail(40))
	}
	return px
}

// waitListening polls addr until it accepts a TCP connection.
func (p *Process) waitListening(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited (%v) before listening on %s", p.Name, p.waitErr, addr)
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: nothing accepted on %s within %s (last: %v)", p.Name, addr, timeout, last)
}

// HTTPTarget is a plain-HTTP service on an edge node that counts the
// connections it accepts (to see keep-alive reuse through a proxy) and
// streams on /stream: it sends StreamFirst, flushes, and sends StreamSecond
// only after Release, or StreamGaveUp if nobody releases it within 5 s.
type HTTPTarget struct {
	Addr string
	// Conns counts accepted connections.
	Conns   atomic.Int64
	release chan struct{}
}

// Lines of HTTPTarget's /stream.
const (
	StreamFirst  = "first line, flushed\n"
	StreamSecond = "second line, after the client read the first\n"
	StreamGaveUp = "the client never read the first line\n"
)

// StartHTTPTarget starts an HTTPTarget on host.
func StartHTTPTarget(t testing.TB, host string) *HTTPTarget {
	t.Helper()
	h := &HTTPTarget{release: make(chan struct{}, 16)}
	mux := http.NewServeMux()
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, StreamFirst)
		w.(http.Flusher).Flush()
		select {
		case <-h.release:
			fmt.Fprint(w, StreamSecond)
		case <-time.After(5 * time.Second):
			fmt.Fprint(w, StreamGaveUp)
		case <-r.Context().Done():
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, HTTPBody+r.URL.Path)
	})
	h.Addr = serveHTTP(t, host, mux, nil, func(c net.Conn, st http.ConnState) {
		if st == http.StateNew {
			h.Conns.Add(1)
		}
	})
	return h
}

// Release lets one /stream response send its second line.
func (h *HTTPTarget) Release() { h.release <- struct{}{} }

// TLSBody is what a TLSTarget answers, followed by the request path.
const TLSBody = "hello over TLS from the edge service, path="

// TLSTarget is an HTTPS service on an edge node with a certificate from a
// CA of its own, unknown to edge-tunnel: a client that verifies against
// CAFile proves that its TLS session is with the service itself.
type TLSTarget struct {
	Addr   string
	CAFile string
}

// StartTLSTarget starts a TLSTarget on host, its certificate valid for host.
func StartTLSTarget(t testing.TB, host string) *TLSTarget {
	t.Helper()
	ca, err := pki.NewCA("edge-service-ca")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := ca.Issue("edge-service", []string{host}, pki.UsageServer)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, ca, map[string]pki.Pair{"service": pair}); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "service.crt"), filepath.Join(dir, "service.key"))
	if err != nil {
		t.Fatal(err)
	}
	tt := &TLSTarget{CAFile: filepath.Join(dir, "ca.crt")}
	tt.Addr = serveHTTP(t, host, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, TLSBody+r.URL.Path)
	}), &tls.Config{Certificates: []tls.Certificate{cert}}, nil)
	return tt
}

// serveHTTP serves h on host (TLS when tlsConfig is set) until cleanup.
func serveHTTP(t testing.TB, host string, h http.Handler, tlsConfig *tls.Config, connState func(net.Conn, http.ConnState)) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatalf("listen on %s: %v", host, err)
	}
	srv := &http.Server{Handler: h, TLSConfig: tlsConfig, ConnState: connState, ReadHeaderTimeout: 10 * time.Second}
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Logf("HTTP target on %s: %v", host, err)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln.Addr().String()
}
