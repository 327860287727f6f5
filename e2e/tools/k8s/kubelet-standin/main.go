// Command kubelet-standin plays the kubelet of one simulated edge node in
// the control-plane end-to-end tests. It runs inside the node's network
// namespace and serves what kube-apiserver and metrics-server ask a kubelet
// for, on the node address:
//
//   - HTTPS on --port (10250), on every address of the node (edge-tunnel
//     dials kubelet ports on the node's loopback by default): container logs (with follow), exec, attach and
//     port-forward through the kubelet's own streaming code
//     (k8s.io/kubelet/pkg/cri/streaming: SPDY and WebSocket), and
//     /metrics/resource. Clients must present a certificate from
//     --client-ca-file, as kube-apiserver does with --kubelet-client-certificate.
//   - plain HTTP on --read-only-port (10255), on every address: /healthz,
//     /pods, /metrics/resource.
//   - extra services for the port-policy tests, each answering with its
//     name, the node and the path: plain HTTP on --extra-http-port and HTTPS
//     on --extra-https-port (same certificate), both on --address only, and
//     plain HTTP on 127.0.0.1:--localhost-port, reachable only from inside
//     the node.
//
// Containers are not real: logs are generated lines that name the node,
// exec runs the command as a process in the node's namespace (so `hostname`
// or `cat` behave as they would), attach greets and echoes stdin, and
// port-forward dials 127.0.0.1:PORT inside the node.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/kubelet/pkg/cri/streaming/portforward"
	remotecommandserver "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// Stream timeouts as the kubelet's streaming server defaults them.
const (
	streamIdleTimeout     = 4 * time.Hour
	streamCreationTimeout = remotecommandconsts.DefaultStreamCreationTimeout
)

type config struct {
	nodeName      string
	address       string
	port          int
	readOnlyPort  int
	certFile      string
	keyFile       string
	clientCAFile  string
	extraHTTP     int
	extraHTTPS    int
	localhostPort int
	logLines      int
	cpuMillicores int
	memoryBytes   int64
}

func main() {
	var c config
	flag.StringVar(&c.nodeName, "node-name", "", "name of the node this stand-in plays (required)")
	flag.StringVar(&c.address, "address", "", "node address, where the extra HTTP and HTTPS services listen (required)")
	flag.IntVar(&c.port, "port", 10250, "HTTPS kubelet port")
	flag.IntVar(&c.readOnlyPort, "read-only-port", 10255, "plain HTTP read-only port; 0 disables it")
	flag.StringVar(&c.certFile, "tls-cert-file", "", "serving certificate for the node address (required)")
	flag.StringVar(&c.keyFile, "tls-private-key-file", "", "key of --tls-cert-file (required)")
	flag.StringVar(&c.clientCAFile, "client-ca-file", "", "CA that signs the certificates of allowed clients (required)")
	flag.IntVar(&c.extraHTTP, "extra-http-port", 0, "extra plain HTTP service on the node address; 0 disables it")
	flag.IntVar(&c.extraHTTPS, "extra-https-port", 0, "extra HTTPS service on the node address; 0 disables it")
	flag.IntVar(&c.localhostPort, "localhost-port", 0, "extra plain HTTP service on 127.0.0.1 only; 0 disables it")
	flag.IntVar(&c.logLines, "log-lines", 3, "lines every container log holds before follow adds more")
	flag.IntVar(&c.cpuMillicores, "cpu-millicores", 250, "CPU use /metrics/resource reports, in millicores")
	flag.Int64Var(&c.memoryBytes, "memory-bytes", 300<<20, "memory working set /metrics/resource reports")
	flag.Parse()
	if err := run(c); err != nil {
		log.Fatalf("kubelet-standin: %v", err)
	}
}

func run(c config) error {
	if c.nodeName == "" || c.address == "" || c.certFile == "" || c.keyFile == "" || c.clientCAFile == "" {
		return errors.New("--node-name, --address, --tls-cert-file, --tls-private-key-file and --client-ca-file are required")
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("load --tls-cert-file/--tls-private-key-file: %w", err)
	}
	caPEM, err := os.ReadFile(c.clientCAFile)
	if err != nil {
		return fmt.Errorf("read --client-ca-file: %w", err)
	}
	clientCAs := x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("--client-ca-file %s holds no PEM certificate", c.clientCAFile)
	}
	tlsConfig := &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    clientCAs,
		// Verified when given; the handlers that need a client refuse
		// requests without one, as the kubelet's authenticator does.
		ClientAuth: tls.VerifyClientCertIfGiven,
		MinVersion: tls.VersionTLS12,
	}
	k := &kubelet{config: c, start: time.Now()}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var servers []*server
	add := func(name, addr string, tlsConf *tls.Config, h http.Handler) error {
		s, err := listen(name, addr, tlsConf, h)
		if err != nil {
			return err
		}
		servers = append(servers, s)
		return nil
	}
	hostPort := func(port int) string { return net.JoinHostPort(c.address, strconv.Itoa(port)) }
	anyAddr := func(port int) string { return net.JoinHostPort("", strconv.Itoa(port)) }
	if err := add("kubelet", anyAddr(c.port), tlsConfig, k.secureMux()); err != nil {
		return err
	}
	if c.readOnlyPort != 0 {
		if err := add("read-only", anyAddr(c.readOnlyPort), nil, k.readOnlyMux()); err != nil {
			return err
		}
	}
	if c.extraHTTP != 0 {
		if err := add("extra-http", hostPort(c.extraHTTP), nil, k.greeter("extra-http")); err != nil {
			return err
		}
	}
	if c.extraHTTPS != 0 {
		if err := add("extra-https", hostPort(c.extraHTTPS), tlsConfig, k.greeter("extra-https")); err != nil {
			return err
		}
	}
	if c.localhostPort != 0 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.localhostPort))
		if err := add("localhost", addr, nil, k.greeter("localhost")); err != nil {
			return err
		}
	}
	log.Printf("kubelet-standin for node %s serving", c.nodeName)
	<-ctx.Done()
	log.Printf("kubelet-standin: shutting down")
	for _, s := range servers {
		s.srv.Close()
	}
	return nil
}

// server is one listener with its HTTP server.
type server struct{ srv *http.Server }

func listen(name, addr string, tlsConf *tls.Config, h http.Handler) (*server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s on %s: %w", name, addr, err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	srv := &http.Server{Handler: logRequests(name, h), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("%s: serve: %v", name, err)
		}
	}()
	log.Printf("%s listening on %s (tls=%v)", name, addr, tlsConf != nil)
	return &server{srv: srv}, nil
}

func logRequests(name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := "-"
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			client = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		log.Printf("%s: %s %s from %s (client certificate %s)", name, r.Method, r.URL.RequestURI(), r.RemoteAddr, client)
		h.ServeHTTP(w, r)
	})
}

type kubelet struct {
	config
	start time.Time
}

func (k *kubelet) secureMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", k.healthz)
	mux.HandleFunc("GET /pods", k.pods)
	mux.HandleFunc("GET /metrics/resource", k.requireClient(k.metricsResource))
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.requireClient(k.containerLogs))
	for _, p := range []string{"/exec/{namespace}/{pod}/{container}", "/exec/{namespace}/{pod}/{uid}/{container}"} {
		mux.HandleFunc(p, k.requireClient(k.exec))
	}
	for _, p := range []string{"/attach/{namespace}/{pod}/{container}", "/attach/{namespace}/{pod}/{uid}/{container}"} {
		mux.HandleFunc(p, k.requireClient(k.attach))
	}
	for _, p := range []string{"/portForward/{namespace}/{pod}", "/portForward/{namespace}/{pod}/{uid}"} {
		mux.HandleFunc(p, k.requireClient(k.portForward))
	}
	return mux
}

func (k *kubelet) readOnlyMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", k.healthz)
	mux.HandleFunc("GET /pods", k.pods)
	mux.HandleFunc("GET /metrics/resource", k.metricsResource)
	return mux
}

// requireClient refuses requests without a verified client certificate.
func (k *kubelet) requireClient(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "Unauthorized: no client certificate signed by --client-ca-file", http.StatusUnauthorized)
			return
		}
		h(w, r)
	}
}

func (k *kubelet) healthz(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprint(w, "ok")
}

func (k *kubelet) pods(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprint(w, `{"kind":"PodList","apiVersion":"v1","metadata":{},"items":[]}`)
}

// greeter answers every request with the service name, the node and the path,
// so a test sees which service of which node answered.
func (k *kubelet) greeter(service string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintf(w, "%s on node %s: %s\n", service, k.nodeName, r.URL.Path)
	})
}

// metricsResource reports a constant CPU rate (so metrics-server, which
// needs two samples, computes exactly --cpu-millicores) and a constant
// working set, in the format of the kubelet's /metrics/resource.
func (k *kubelet) metricsResource(w http.ResponseWriter, _ *http.Request) {
	now := time.Now()
	cpuSeconds := now.Sub(k.start).Seconds() * float64(k.cpuMillicores) / 1000
	ts := now.UnixMilli()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n")
	fmt.Fprintf(w, "# TYPE node_cpu_usage_seconds_total counter\n")
	fmt.Fprintf(w, "node_cpu_usage_seconds_total %g %d\n", cpuSeconds, ts)
	fmt.Fprintf(w, "# HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n")
	fmt.Fprintf(w, "# TYPE node_memory_working_set_bytes gauge\n")
	fmt.Fprintf(w, "node_memory_working_set_bytes %d %d\n", k.memoryBytes, ts)
	fmt.Fprintf(w, "# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n")
	fmt.Fprintf(w, "# TYPE resource_scrape_error gauge\n")
	fmt.Fprintf(w, "resource_scrape_error 0\n")
}

// LogLine is line i of a container's log; tests compare against it.
func logLine(node, namespace, pod, container string, i int) string {
	return fmt.Sprintf("log line %d of %s/%s/%s on node %s", i, namespace, pod, container, node)
}

// containerLogs writes --log-lines lines; with follow=true it keeps adding
// a line every 200 ms until the client goes away.
func (k *kubelet) containerLogs(w http.ResponseWriter, r *http.Request) {
	ns, pod, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	follow, _ := strconv.ParseBool(r.URL.Query().Get("follow"))
	w.Header().Set("Content-Type", "text/plain")
	flusher, _ := w.(http.Flusher)
	i := 1
	for ; i <= k.logLines; i++ {
		fmt.Fprintln(w, logLine(k.nodeName, ns, pod, ctr, i))
	}
	if flusher != nil {
		flusher.Flush()
	}
	if !follow {
		return
	}
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for ; ; i++ {
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
		if _, err := fmt.Fprintln(w, logLine(k.nodeName, ns, pod, ctr, i)); err != nil {
			return
		}
		if flusher != nil {
			flusher.Flush()
		}
	}
}

func (k *kubelet) exec(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	remotecommandserver.ServeExec(w, r, k, podID(r), types.UID(r.PathValue("uid")), r.PathValue("container"), cmd,
		opts, streamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

func (k *kubelet) attach(w http.ResponseWriter, r *http.Request) {
	opts, err := remotecommandserver.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	remotecommandserver.ServeAttach(w, r, k, podID(r), types.UID(r.PathValue("uid")), r.PathValue("container"),
		opts, streamIdleTimeout, streamCreationTimeout, remotecommandconsts.SupportedStreamingProtocols)
}

func (k *kubelet) portForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, k, podID(r), types.UID(r.PathValue("uid")), opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

func podID(r *http.Request) string { return r.PathValue("namespace") + "/" + r.PathValue("pod") }

// ExecInContainer runs cmd as a process in the node's namespace with the
// pod and node in its environment, and reports a non-zero exit status the
// way the kubelet does, so kubectl exec exits with the same code.
func (k *kubelet) ExecInContainer(ctx context.Context, pod string, _ types.UID, container string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	if len(cmd) == 0 {
		return errors.New("no command given")
	}
	c := exec.CommandContext(ctx, cmd[0], cmd[1:]...)
	c.Dir = "/"
	c.Env = append(os.Environ(), "NODE_NAME="+k.nodeName, "POD="+pod, "CONTAINER="+container)
	c.Stdout, c.Stderr = out, errOut
	// The stdin copy must not hold up the end of the command: a client may
	// keep stdin open after the process is done.
	c.WaitDelay = time.Second
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return fmt.Errorf("stdin pipe: %w", err)
		}
	}
	if err := c.Start(); err != nil {
		return fmt.Errorf("start %q: %w", cmd[0], err)
	}
	if stdin != nil {
		go func() {
			_, _ = io.Copy(stdin, in)
			stdin.Close()
		}()
	}
	err := c.Wait()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.Exited() {
		return utilexec.CodeExitError{Err: err, Code: exitErr.ExitCode()}
	}
	return err
}

// AttachContainer plays a container whose main process greets the client
// and echoes every line it gets on stdin.
func (k *kubelet) AttachContainer(ctx context.Context, pod string, _ types.UID, container string,
	in io.Reader, out, _ io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize) error {
	if out != nil {
		fmt.Fprintf(out, "attached to %s container %s on node %s\n", pod, container, k.nodeName)
	}
	if in == nil {
		<-ctx.Done()
		return nil
	}
	if out == nil {
		out = nopCloser{io.Discard}
	}
	_, err := io.Copy(out, in)
	return err
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// PortForward connects the stream to 127.0.0.1:port inside the node, where
// a pod sharing the host network would listen.
func (k *kubelet) PortForward(ctx context.Context, pod string, _ types.UID, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))))
	if err != nil {
		return fmt.Errorf("port-forward to port %d of %s on node %s: %w", port, pod, k.nodeName, err)
	}
	defer conn.Close()
	// The client's half ends when the client closes the stream; the
	// target's half ends the forward.
	go func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	_, err = io.Copy(stream, conn)
	return err
}
