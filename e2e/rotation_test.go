package e2e_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// TestCertificateRotation rotates every certificate the server and the agent
// read from disk while tunnels are open: the agent port's and the TCP
// frontend's server certificates, the agent's client certificate, and the
// cluster CA (old and new trusted, then the old one retired). Neither
// process is restarted. The open tunnels must keep echoing throughout, new
// handshakes must present the new certificates, and the agent, once its
// connection is cut, must come back with its new certificate: by then the
// server trusts only the new CA, so the old certificate would be refused.
func TestCertificateRotation(t *testing.T) {
	bins := harness.Build(t)
	p := harness.NewPKI(t)
	srv := harness.StartServer(t, bins, p, harness.ServerOptions{})
	// The agent reaches the server through a relay the test can cut, to
	// make it connect again without restarting it.
	relay := startRelay(t, srv.AgentAddr)
	echo := harness.StartEcho(t, "127.0.0.1")
	agent := harness.StartAgent(t, bins, p, nil, harness.AgentOptions{Name: "edge-rotate", ServerAddr: relay.addr()})
	srv.WaitAgents(t, 1)

	probeOld := loadPair(t)(p.AgentCert(t, "probe-old-ca", "rotation-probe"))
	if c, err := agentPortCert(srv, p, probeOld); err != nil || c.Subject.CommonName != "edge-tunnel-server" {
		t.Fatalf("agent port before the rotation: certificate %v, error %v; want CN edge-tunnel-server", cn(c), err)
	}
	feTLS := p.FrontendClientTLS(t) // the frontend CA is not rotated
	oldFrontend, err := frontendCert(srv, feTLS)
	if err != nil {
		t.Fatalf("frontend before the rotation: %v", err)
	}

	held := []*echoLoop{
		startEchoLoop(t, "unix socket", connectVia(t, &env{pki: p, srv: srv}, "uds"), echo.Addr),
		startEchoLoop(t, "TCP frontend", connectVia(t, &env{pki: p, srv: srv}, "tcp"), echo.Addr),
	}

	// 1. A new cluster CA, trusted next to the old one.
	p.RotateClusterCA(t, "edge-tunnel-e2e-cluster-ca-2")
	probeNew := loadPair(t)(p.AgentCert(t, "probe-new-ca", "rotation-probe"))
	waitUntil(t, "the agent port trusts client certificates from the new cluster CA", func() error {
		_, err := agentPortCert(srv, p, probeNew)
		return err
	})

	// 2. New server certificates (the agent port's from the new CA) and a
	// new agent certificate from the new CA.
	p.ReissueServerCerts(t, "edge-tunnel-server-rotated")
	p.RenewAgentCert(t, agent)
	waitUntil(t, "the agent port presents its new certificate", func() error {
		c, err := agentPortCert(srv, p, probeNew)
		if err != nil {
			return err
		}
		if c.Subject.CommonName != "edge-tunnel-server-rotated" || c.Issuer.CommonName != "edge-tunnel-e2e-cluster-ca-2" {
			return fmt.Errorf("presents %s", cn(c))
		}
		return nil
	})
	waitUntil(t, "the TCP frontend presents its new certificate", func() error {
		c, err := frontendCert(srv, feTLS)
		if err != nil {
			return err
		}
		if c.Subject.CommonName != "edge-tunnel-server-rotated" || c.SerialNumber.Cmp(oldFrontend.SerialNumber) == 0 {
			return fmt.Errorf("presents %s (serial %s, the old one was %s)", cn(c), c.SerialNumber, oldFrontend.SerialNumber)
		}
		return nil
	})
	fresh := connectVia(t, &env{pki: p, srv: srv}, "tcp")
	if _, err := harness.Connect(fresh, echo.Addr); err != nil {
		t.Fatalf("new tunnel through the TCP frontend after the rotation: %v", err)
	}
	if err := harness.CheckEcho(fresh, 64<<10); err != nil {
		t.Fatalf("new tunnel through the TCP frontend after the rotation: %v", err)
	}

	// 3. The old cluster CA retired.
	p.RetireOldClusterCAs(t)
	waitUntil(t, "the agent port refuses client certificates from the retired CA", func() error {
		if _, err := agentPortCert(srv, p, probeOld); err == nil {
			return errors.New("a certificate from the retired CA is still accepted")
		}
		return nil
	})

	// The tunnels opened before the rotation kept echoing, over the agent
	// connection that was authenticated with the old certificates.
	time.Sleep(300 * time.Millisecond)
	for _, h := range held {
		if n, err := h.stop(); err != nil {
			t.Errorf("tunnel through the %s opened before the rotation: %v after %d echoes", h.name, err, n)
		} else if n < 20 {
			t.Errorf("tunnel through the %s: only %d echoes during the rotation; want a steady stream", h.name, n)
		}
	}
	if n := relay.accepted(); n != 1 {
		t.Errorf("the agent connected %d times during the rotation; want its first connection kept", n)
	}
	if t.Failed() {
		t.FailNow()
	}

	// 4. Cut the agent's connection. The server now trusts only the new
	// CA, so the agent is back only if it presents its new certificate
	// (and trusts the server's new one through its reloaded CA file).
	relay.cut()
	waitUntil(t, "the agent connects again with its new certificate and carries a tunnel", func() error {
		if relay.accepted() < 2 {
			return errors.New("the agent has not connected again yet")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c, err := srv.DialUDS(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := harness.Connect(c, echo.Addr); err != nil {
			return err
		}
		return harness.CheckEcho(c, 4096)
	})
}

// waitUntil polls check until it returns nil, for at most 10 s: the server
// and the agent look at their files at most once a second.
func waitUntil(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting until %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func cn(c *x509.Certificate) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("CN %q issued by %q", c.Subject.CommonName, c.Issuer.CommonName)
}

// loadPair returns a loader of a certificate and key, to take AgentCert's
// two results: loadPair(t)(p.AgentCert(...)).
func loadPair(t *testing.T) func(certFile, keyFile string) tls.Certificate {
	return func(certFile, keyFile string) tls.Certificate {
		t.Helper()
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatalf("load %s: %v", certFile, err)
		}
		return c
	}
}

// agentPortCert makes a new TLS connection to the agent port with client
// certificate cert, verifying the server against the current ClusterCA
// file, and returns the certificate the server presented. The server's
// verdict on the client certificate arrives after the client's handshake
// ends (TLS 1.3), so the probe waits for the server's first HTTP/2 frame:
// an alert instead means the client certificate was refused.
func agentPortCert(srv *harness.Server, p *harness.PKI, cert tls.Certificate) (*x509.Certificate, error) {
	caPEM, err := os.ReadFile(p.ClusterCA)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	d := tls.Dialer{Config: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", srv.AgentAddr)
	if err != nil {
		return nil, fmt.Errorf("TLS handshake with the agent port: %w", err)
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	_ = tc.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := tc.Read(make([]byte, 1)); err != nil {
		return nil, fmt.Errorf("agent port after the handshake: %w", err)
	}
	return tc.ConnectionState().PeerCertificates[0], nil
}

// frontendCert makes a new TLS connection to the TCP frontend as
// kube-apiserver does and returns the certificate the server presented.
func frontendCert(srv *harness.Server, cfg *tls.Config) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := srv.DialFrontendTLS(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// echoLoop echoes 1 KiB through a tunnel every 20 ms until stopped, and
// remembers the first error.
type echoLoop struct {
	name string
	done chan struct{}
	wg   sync.WaitGroup
	n    atomic.Int64
	err  error
}

func startEchoLoop(t *testing.T, name string, c net.Conn, target string) *echoLoop {
	t.Helper()
	if _, err := harness.Connect(c, target); err != nil {
		t.Fatalf("tunnel through the %s: %v", name, err)
	}
	l := &echoLoop{name: name, done: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if err := harness.CheckEcho(c, 1024); err != nil {
				l.err = err
				return
			}
			l.n.Add(1)
			select {
			case <-l.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { l.stop() })
	return l
}

// stop ends the loop and returns the echoes done and the first error.
func (l *echoLoop) stop() (int64, error) {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	l.wg.Wait()
	return l.n.Load(), l.err
}

// relay forwards TCP connections to a fixed address and can cut them all.
type relay struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	n     int
}

func startRelay(t *testing.T, to string) *relay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	r := &relay{ln: ln}
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.DialTimeout("tcp", to, 2*time.Second)
			if err != nil {
				in.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, in, out)
			r.n++
			r.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close(); in.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close(); out.Close() }()
		}
	}()
	t.Cleanup(func() { ln.Close(); r.cut() })
	return r
}

func (r *relay) addr() string { return r.ln.Addr().String() }

// accepted is how many connections the relay has forwarded.
func (r *relay) accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

// cut closes every forwarded connection.
func (r *relay) cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.conns {
		c.Close()
	}
	r.conns = nil
}
