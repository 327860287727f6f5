package httpproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// TestTLSListener serves the proxy over TLS with client certificates, as
// --proxy-cert/--proxy-key/--proxy-ca-cert do: a client with a certificate
// gets through on HTTP/1.1 even when it offers h2, one without is refused.
func TestTLSListener(t *testing.T) {
	ca, err := pki.NewCA("proxy-test-ca")
	if err != nil {
		t.Fatal(err)
	}
	keyPair := func(cn, usage string) tls.Certificate {
		p, err := ca.Issue(cn, []string{"127.0.0.1"}, usage)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{keyPair("proxy", pki.UsageServer)},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{"h2", "http/1.1"}}

	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "through TLS") })
	p, err := New(Options{Dialer: &testDialer{}, Name: "test-proxy", TLS: serverTLS})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		p.Shutdown(ctx)
	}()

	proxyURL := &url.URL{Scheme: "https", Host: ln.Addr().String()}
	client := func(certs ...tls.Certificate) *http.Client {
		tr := &http.Transport{Proxy: http.ProxyURL(proxyURL), ForceAttemptHTTP2: true,
			TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 5 * time.Second}
	}

	resp, err := client(keyPair("client", pki.UsageClient)).Get(target.URL)
	if err != nil {
		t.Fatalf("with a client certificate: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "through TLS" {
		t.Fatalf("got %s %q", resp.Status, b)
	}

	// The proxy never negotiates h2, whatever the client offers.
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, NextProtos: []string{"h2", "http/1.1"},
		Certificates: []tls.Certificate{keyPair("client2", pki.UsageClient)}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.ConnectionState().NegotiatedProtocol; got == "h2" {
		t.Errorf("ALPN negotiated %q on the proxy", got)
	}
	c.Close()

	if _, err := client().Get(target.URL); err == nil {
		t.Fatal("a client without a certificate got through")
	}
}
