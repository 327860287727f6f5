package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// The HTTP proxy, in the server (--proxy-port) and as the edge-tunnel-proxy
// sidecar (over the unix socket and over mTLS), driven by the clients that
// use it in real life: Go's net/http with a proxy URL (client-go and
// metrics-server) and curl -x.
//
// Go's http.ProxyFromEnvironment (HTTPS_PROXY/HTTP_PROXY) never proxies
// requests to localhost or loopback addresses, and every target here lives
// on loopback; so the Go client is built the way ProxyFromEnvironment builds
// it, with the proxy URL given directly (http.ProxyURL), which proxies
// loopback too. In a cluster the node addresses are not loopback and
// HTTPS_PROXY works as is.

// proxyEnv is one server with an agent for node 127.0.0.2 and the services
// on that node.
type proxyEnv struct {
	*env
	agent *harness.Agent
	http  *harness.HTTPTarget // plain HTTP, in http-proxy-ports
	tls   *harness.TLSTarget  // HTTPS with its own CA, in https-proxy-ports
	local *harness.HTTPTarget // plain HTTP on the node's 127.0.0.1 only, in localhost-proxy-ports
	// refused listens on the node but its port is in no list.
	refused *harness.HTTPTarget
	// localAddr is how clients name the localhost-only service: the
	// node's address with the service's port.
	localAddr string
}

const proxyNode = "127.0.0.2"

func newProxyEnv(t *testing.T) *proxyEnv {
	t.Helper()
	e := &proxyEnv{
		http:    harness.StartHTTPTarget(t, proxyNode),
		tls:     harness.StartTLSTarget(t, proxyNode),
		local:   harness.StartHTTPTarget(t, "127.0.0.1"),
		refused: harness.StartHTTPTarget(t, proxyNode),
	}
	_, localPort, _ := net.SplitHostPort(e.local.Addr)
	e.localAddr = net.JoinHostPort(proxyNode, localPort)
	// Nothing may listen on the node address with that port, or the test
	// would pass without the localhost rewriting.
	if c, err := net.DialTimeout("tcp", e.localAddr, time.Second); err == nil {
		c.Close()
		t.Skipf("something listens on %s; the localhost-only check needs that port free there", e.localAddr)
	}
	bins := harness.Build(t)
	p := harness.NewPKI(t)
	srv := harness.StartServer(t, bins, p, harness.ServerOptions{
		HTTPProxy: true,
		Ports: map[string]string{
			"http-proxy-ports":      port(t, e.http.Addr) + ", " + localPort,
			"https-proxy-ports":     port(t, e.tls.Addr),
			"localhost-proxy-ports": localPort,
		},
	})
	e.env = &env{bins: bins, pki: p, srv: srv}
	e.agent = e.addAgent(t, harness.AgentOptions{Name: "edge-proxy", IPv4: proxyNode})
	return e
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// proxyUnderTest is one way to run the proxy.
type proxyUnderTest struct {
	name string
	addr string
	// inServer: the server's own proxy, which knows the port policy; the
	// sidecar forwards plain requests to any port and leaves refusals to
	// the server.
	inServer bool
}

func proxiesUnderTest(t *testing.T, e *proxyEnv) []proxyUnderTest {
	t.Helper()
	uds := harness.StartProxy(t, e.bins, e.pki, e.srv, harness.ProxyOptions{Via: "uds"})
	mtls := harness.StartProxy(t, e.bins, e.pki, e.srv, harness.ProxyOptions{Via: "mtls"})
	return []proxyUnderTest{
		{"server", e.srv.ProxyAddr, true},
		{"sidecar-uds", uds.Addr, false},
		{"sidecar-mtls", mtls.Addr, false},
	}
}

// goClient uses the proxy for http:// and https:// URLs, and trusts only
// the CA in caFile (if any) for TLS.
func goClient(t *testing.T, proxyAddr, caFile string) *http.Client {
	t.Helper()
	tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: proxyAddr})}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}
}

func get(t *testing.T, c *http.Client, rawURL string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(rawURL)
	if err != nil {
		t.Fatalf("GET %s through the proxy: %v", rawURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", rawURL, err)
	}
	return resp, string(b)
}

func TestHTTPProxyGoClient(t *testing.T) {
	e := newProxyEnv(t)
	agentDials := metric(t, e.agent.Metric, "edge_tunnel_agent_dials_total", `result="ok"`)
	for _, px := range proxiesUnderTest(t, e) {
		t.Run(px.name+"/connect-tls", func(t *testing.T) {
			resp, body := get(t, goClient(t, px.addr, e.tls.CAFile), "https://"+e.tls.Addr+"/healthz")
			if resp.StatusCode != 200 || body != harness.TLSBody+"/healthz" {
				t.Fatalf("got %s %q", resp.Status, body)
			}
			if resp.TLS == nil || resp.TLS.PeerCertificates[0].Issuer.CommonName != "edge-service-ca" {
				t.Fatalf("TLS session not with the edge service: %+v", resp.TLS)
			}
		})
		t.Run(px.name+"/http-keepalive", func(t *testing.T) {
			c := goClient(t, px.addr, "")
			before := e.http.Conns.Load()
			for i := range 3 {
				resp, body := get(t, c, "http://"+e.http.Addr+"/metrics")
				if resp.StatusCode != 200 || body != harness.HTTPBody+"/metrics" {
					t.Fatalf("request %d: %s %q", i, resp.Status, body)
				}
			}
			if n := e.http.Conns.Load() - before; n != 1 {
				t.Errorf("the target accepted %d connections for 3 requests, want 1 (keep-alive through the proxy and the tunnel)", n)
			}
		})
		t.Run(px.name+"/stream", func(t *testing.T) {
			resp, err := goClient(t, px.addr, "").Get("http://" + e.http.Addr + "/stream")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			checkStream(t, e.http, bufio.NewReader(resp.Body))
		})
		t.Run(px.name+"/localhost-only", func(t *testing.T) {
			before := e.local.Conns.Load()
			resp, body := get(t, goClient(t, px.addr, ""), "http://"+e.localAddr+"/stats")
			if resp.StatusCode != 200 || body != harness.HTTPBody+"/stats" || e.local.Conns.Load() == before {
				t.Fatalf("got %s %q from the service on the node's 127.0.0.1", resp.Status, body)
			}
		})
		t.Run(px.name+"/refused", func(t *testing.T) {
			c := goClient(t, px.addr, e.tls.CAFile)
			resp, body := get(t, c, "http://"+e.refused.Addr+"/")
			want := fmt.Sprintf("port %s of edge node %q is not forwarded", port(t, e.refused.Addr), proxyNode)
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, want) {
				t.Errorf("plain request to a refused port: %s %q, want 403 with %q", resp.Status, body, want)
			}
			// For CONNECT, Go's client makes the status line its error:
			// what metrics-server would log.
			_, err := c.Get("https://" + e.refused.Addr + "/")
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("CONNECT to a refused port: err = %v, want it to contain %q", err, want)
			}
			if n := e.refused.Conns.Load(); n != 0 {
				t.Errorf("the refused service accepted %d connections", n)
			}
		})
		t.Run(px.name+"/plain-to-tls-port", func(t *testing.T) {
			resp, body := get(t, goClient(t, px.addr, ""), "http://"+e.tls.Addr+"/")
			if px.inServer {
				if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "not a plain-HTTP port") {
					t.Errorf("got %s %q, want 403 telling to use https:// (CONNECT)", resp.Status, body)
				}
				return
			}
			// The sidecar cannot know the port is TLS: the request reaches
			// the service, which refuses plain HTTP itself.
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "HTTP request to an HTTPS server") {
				t.Errorf("got %s %q, want the TLS service's own 400", resp.Status, body)
			}
		})
	}
	if got := metric(t, e.agent.Metric, "edge_tunnel_agent_dials_total", `result="ok"`) - agentDials; got < 3*3 {
		t.Errorf("the agent counted %v successful dials; the proxies did not go through it", got)
	}
	if got := metric(t, e.srv.Metric, "edge_tunnel_server_dials_total", `frontend="http-proxy"`, `result="ok"`); got < 3 {
		t.Errorf("the server counted %v http-proxy dials, want at least 3 (TLS, HTTP, localhost-only)", got)
	}
}

// checkStream reads /stream: the first line must arrive while the target
// still holds the second back.
func checkStream(t *testing.T, target *harness.HTTPTarget, r *bufio.Reader) {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil || line != harness.StreamFirst {
		t.Fatalf("first line %q, %v", line, err)
	}
	target.Release()
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != harness.StreamSecond {
		t.Fatalf("after the first line: %q, %v; want %q (a proxy that buffers delivers the first line only after the target gives up)", rest, err, harness.StreamSecond)
	}
}

// curl runs curl with args and returns stdout, stderr and the exit code.
func curl(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, curlPath(t), append([]string{"-sS", "--max-time", "20"}, args...)...)
	cmd.Env = curlEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("curl %q: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func curlPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("curl")
	if err != nil {
		t.Fatal("curl not found: install the Debian package curl (hack/test.sh does when it runs as root)")
	}
	return p
}

// curlEnv keeps proxy variables of the machine away from curl: -x decides.
func curlEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch strings.ToLower(k) {
		case "http_proxy", "https_proxy", "all_proxy", "no_proxy":
			continue
		}
		env = append(env, kv)
	}
	return env
}

func TestHTTPProxyCurl(t *testing.T) {
	e := newProxyEnv(t)
	curlPath(t)
	for _, px := range proxiesUnderTest(t, e) {
		proxyURL := "http://" + px.addr
		t.Run(px.name+"/connect-tls", func(t *testing.T) {
			// --cacert holds only the edge service's CA: curl verifies the
			// service's own certificate through the tunnel.
			out, errs, code := curl(t, "-x", proxyURL, "--cacert", e.tls.CAFile, "https://"+e.tls.Addr+"/pods")
			if code != 0 || out != harness.TLSBody+"/pods" {
				t.Fatalf("curl exit %d, out %q, err %q", code, out, errs)
			}
		})
		t.Run(px.name+"/http-keepalive", func(t *testing.T) {
			before := e.http.Conns.Load()
			out, errs, code := curl(t, "-v", "-x", proxyURL, "http://"+e.http.Addr+"/a", "http://"+e.http.Addr+"/b")
			if code != 0 || out != harness.HTTPBody+"/a"+harness.HTTPBody+"/b" {
				t.Fatalf("curl exit %d, out %q, err %q", code, out, errs)
			}
			if !strings.Contains(errs, "Re-using existing connection") {
				t.Errorf("curl did not reuse its connection to the proxy:\n%s", errs)
			}
			if n := e.http.Conns.Load() - before; n != 1 {
				t.Errorf("the target accepted %d connections for 2 requests, want 1", n)
			}
		})
		t.Run(px.name+"/stream", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, curlPath(t), "-sS", "-N", "-x", proxyURL, "http://"+e.http.Addr+"/stream")
			cmd.Env = curlEnv()
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			checkStream(t, e.http, bufio.NewReader(stdout))
			if err := cmd.Wait(); err != nil {
				t.Errorf("curl: %v: %s", err, errb.String())
			}
		})
		t.Run(px.name+"/localhost-only", func(t *testing.T) {
			out, errs, code := curl(t, "-x", proxyURL, "http://"+e.localAddr+"/stats")
			if code != 0 || out != harness.HTTPBody+"/stats" {
				t.Fatalf("curl exit %d, out %q, err %q", code, out, errs)
			}
		})
		t.Run(px.name+"/refused", func(t *testing.T) {
			want := fmt.Sprintf("port %s of edge node %q is not forwarded", port(t, e.refused.Addr), proxyNode)
			out, _, code := curl(t, "-x", proxyURL, "-w", "\n%{http_code}", "http://"+e.refused.Addr+"/")
			if code != 0 || !strings.Contains(out, want) || !strings.HasSuffix(out, "\n403") {
				t.Errorf("plain request: exit %d, out %q; want 403 with %q", code, out, want)
			}
			_, errs, code := curl(t, "-v", "-x", proxyURL, "--cacert", e.tls.CAFile, "https://"+e.refused.Addr+"/")
			if code == 0 || !strings.Contains(errs, "< HTTP/1.1 403 Forbidden: ") || !strings.Contains(errs, want) {
				t.Errorf("CONNECT: exit %d, stderr:\n%s\nwant the 403 status line with %q", code, errs, want)
			}
		})
		if px.inServer {
			t.Run(px.name+"/legacy-dnat-origin-form", func(t *testing.T) {
				// Traffic that iptables DNAT sent to the proxy port: an
				// origin-form request whose Host is the edge service.
				out, errs, code := curl(t, "-H", "Host: "+e.http.Addr, "http://"+px.addr+"/metrics")
				if code != 0 || out != harness.HTTPBody+"/metrics" {
					t.Fatalf("curl exit %d, out %q, err %q", code, out, errs)
				}
				out, _, code = curl(t, "-w", "\n%{http_code}", "http://"+px.addr+"/metrics")
				if code != 0 || !strings.Contains(out, "this is an HTTP proxy") || !strings.HasSuffix(out, "\n400") {
					t.Errorf("origin-form naming the proxy: exit %d, out %q; want 400 saying what to send", code, out)
				}
			})
		}
	}
}

func TestHTTPProxySidecarServerUnreachable(t *testing.T) {
	bins := harness.Build(t)
	p := harness.NewPKI(t)
	srv := harness.StartServer(t, bins, p, harness.ServerOptions{})
	px := harness.StartProxy(t, bins, p, srv, harness.ProxyOptions{Via: "uds"})
	srv.Stop(t)
	out, _, code := curl(t, "-x", "http://"+px.Addr, "-w", "\n%{http_code}", "http://127.0.0.2:10255/pods")
	if code != 0 || !strings.Contains(out, "cannot reach edge-tunnel-server at "+srv.UDS) || !strings.HasSuffix(out, "\n"+strconv.Itoa(http.StatusBadGateway)) {
		t.Errorf("exit %d, out %q; want 502 naming the socket", code, out)
	}
}
