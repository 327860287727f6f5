package tlsutil

import (
	"crypto/tls"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// files is a directory of PEM files for one test.
type files struct {
	t   *testing.T
	dir string
	// bump makes every write get a distinct modification time, so a
	// rewrite in place is seen even on coarse-mtime filesystems.
	bump time.Time
}

func newFiles(t *testing.T) *files {
	return &files{t: t, dir: t.TempDir(), bump: time.Now().Add(-time.Hour)}
}

func (f *files) path(name string) string { return filepath.Join(f.dir, name) }

// write replaces a file in place (same inode), as `cp` would.
func (f *files) write(name string, data []byte) string {
	f.t.Helper()
	p := f.path(name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		f.t.Fatal(err)
	}
	f.bump = f.bump.Add(time.Second)
	if err := os.Chtimes(p, f.bump, f.bump); err != nil {
		f.t.Fatal(err)
	}
	return p
}

// pair writes NAME.crt and NAME.key.
func (f *files) pair(name string, p pki.Pair) (certFile, keyFile string) {
	return f.write(name+".crt", p.CertPEM), f.write(name+".key", p.KeyPEM)
}

func newCA(t *testing.T, cn string) *pki.CA {
	t.Helper()
	ca, err := pki.NewCA(cn)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *pki.CA, cn string, hosts []string, usage string) pki.Pair {
	t.Helper()
	p, err := ca.Issue(cn, hosts, usage)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// result is what each side of a handshake saw.
type result struct {
	serverErr, clientErr error
	serverSaw, clientSaw string // peer leaf common names
}

// handshake connects a client to a server over loopback TCP, has the server
// write one byte after its handshake and the client read it. With TLS 1.3 a
// client learns that the server rejected its certificate only on that read.
func handshake(t *testing.T, scfg, ccfg *tls.Config) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type side struct {
		err error
		cn  string
	}
	srvDone := make(chan side, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvDone <- side{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, scfg)
		if err := tc.Handshake(); err != nil {
			srvDone <- side{err: err}
			return
		}
		var s side
		if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
			s.cn = pc[0].Subject.CommonName
		}
		_, s.err = tc.Write([]byte{1})
		srvDone <- s
	}()

	var r result
	c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, ccfg)
	if r.clientErr = tc.Handshake(); r.clientErr == nil {
		r.clientSaw = tc.ConnectionState().PeerCertificates[0].Subject.CommonName
		_, r.clientErr = io.ReadFull(tc, make([]byte, 1))
	}
	tc.Close()
	s := <-srvDone
	r.serverErr, r.serverSaw = s.err, s.cn
	return r
}

func (r result) ok(t *testing.T) {
	t.Helper()
	if r.serverErr != nil || r.clientErr != nil {
		t.Fatalf("handshake failed: server: %v; client: %v", r.serverErr, r.clientErr)
	}
}

func (r result) failed(t *testing.T, wantInErr string) {
	t.Helper()
	if r.serverErr == nil && r.clientErr == nil {
		t.Fatalf("handshake succeeded (server saw %q, client saw %q), want failure", r.serverSaw, r.clientSaw)
	}
	if msg := errString(r.serverErr) + " | " + errString(r.clientErr); !strings.Contains(msg, wantInErr) {
		t.Fatalf("handshake errors %q do not mention %q", msg, wantInErr)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

func TestMutualTLS(t *testing.T) {
	ca, other := newCA(t, "ca"), newCA(t, "other-ca")
	f := newFiles(t)
	caFile := f.write("ca.crt", ca.CertPEM)
	otherCAFile := f.write("other-ca.crt", other.CertPEM)
	srvCrt, srvKey := f.pair("server", issue(t, ca, "server", []string{"edge-tunnel-server", "127.0.0.1"}, "server"))
	cliCrt, cliKey := f.pair("agent", issue(t, ca, "agent", nil, "client"))
	strangerCrt, strangerKey := f.pair("stranger", issue(t, other, "stranger", nil, "client"))
	wrongUseCrt, wrongUseKey := f.pair("wrong-use", issue(t, ca, "server-as-client", nil, "server"))

	scfg, err := ServerConfig(srvCrt, srvKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if scfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("server MinVersion = %x", scfg.MinVersion)
	}
	client := func(ca, crt, key, name string) *tls.Config {
		t.Helper()
		c, err := ClientConfig(ca, crt, key, name)
		if err != nil {
			t.Fatal(err)
		}
		if c.MinVersion != tls.VersionTLS12 {
			t.Errorf("client MinVersion = %x", c.MinVersion)
		}
		return c
	}

	t.Run("ok by IP", func(t *testing.T) {
		r := handshake(t, scfg, client(caFile, cliCrt, cliKey, "127.0.0.1"))
		r.ok(t)
		if r.serverSaw != "agent" || r.clientSaw != "server" {
			t.Fatalf("server saw %q, client saw %q", r.serverSaw, r.clientSaw)
		}
	})
	t.Run("ok by name", func(t *testing.T) {
		handshake(t, scfg, client(caFile, cliCrt, cliKey, "edge-tunnel-server")).ok(t)
	})
	t.Run("ok with SNI from the dialer", func(t *testing.T) {
		c := client(caFile, cliCrt, cliKey, "")
		c.ServerName = "edge-tunnel-server" // what tls.Dial or grpc set on their clone
		handshake(t, scfg, c).ok(t)
	})
	t.Run("wrong server name", func(t *testing.T) {
		handshake(t, scfg, client(caFile, cliCrt, cliKey, "other.example")).failed(t, "for name \"other.example\"")
	})
	t.Run("no server name", func(t *testing.T) {
		handshake(t, scfg, client(caFile, cliCrt, cliKey, "")).failed(t, "no server name")
	})
	t.Run("server from another CA", func(t *testing.T) {
		handshake(t, scfg, client(otherCAFile, cliCrt, cliKey, "127.0.0.1")).failed(t, "not trusted by CA file")
	})
	t.Run("no client certificate", func(t *testing.T) {
		r := handshake(t, scfg, client(caFile, "", "", "127.0.0.1"))
		r.failed(t, "certificate")
		if r.serverErr == nil {
			t.Fatal("server accepted a client without a certificate")
		}
	})
	t.Run("client from another CA", func(t *testing.T) {
		r := handshake(t, scfg, client(caFile, strangerCrt, strangerKey, "127.0.0.1"))
		r.failed(t, `client certificate "stranger" not trusted`)
	})
	t.Run("client certificate without client usage", func(t *testing.T) {
		handshake(t, scfg, client(caFile, wrongUseCrt, wrongUseKey, "127.0.0.1")).failed(t, "not trusted")
	})
	t.Run("server without client CA accepts anyone", func(t *testing.T) {
		open, err := ServerConfig(srvCrt, srvKey, "")
		if err != nil {
			t.Fatal(err)
		}
		if open.ClientAuth != tls.NoClientCert || open.VerifyConnection != nil {
			t.Fatal("server without client CA asks for client certificates")
		}
		handshake(t, open, client(caFile, "", "", "127.0.0.1")).ok(t)
	})
	t.Run("TLS 1.1 refused", func(t *testing.T) {
		c := client(caFile, cliCrt, cliKey, "127.0.0.1")
		c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		handshake(t, scfg, c).failed(t, "version")
	})
}

func TestSystemRoots(t *testing.T) {
	c, err := ClientConfig("", "", "", "example.com")
	if err != nil {
		t.Fatal(err)
	}
	if c.InsecureSkipVerify || c.VerifyConnection != nil || c.ServerName != "example.com" {
		t.Fatalf("system-roots config: InsecureSkipVerify=%v VerifyConnection set=%v ServerName=%q",
			c.InsecureSkipVerify, c.VerifyConnection != nil, c.ServerName)
	}
	// A server from a private CA must fail against the system roots.
	ca := newCA(t, "ca")
	f := newFiles(t)
	crt, key := f.pair("server", issue(t, ca, "server", []string{"example.com"}, "server"))
	scfg, err := ServerConfig(crt, key, "")
	if err != nil {
		t.Fatal(err)
	}
	handshake(t, scfg, c).failed(t, "certificate")
}

func TestConfigErrors(t *testing.T) {
	ca := newCA(t, "ca")
	f := newFiles(t)
	good := issue(t, ca, "server", []string{"localhost"}, "both")
	other := issue(t, ca, "other", []string{"localhost"}, "both")
	crt, key := f.pair("good", good)
	otherKey := f.write("other.key", other.KeyPEM)
	caFile := f.write("ca.crt", ca.CertPEM)
	missing := f.path("missing.pem")
	text := f.write("text.txt", []byte("hello, not a certificate\n"))
	brokenCA := f.write("broken-ca.crt", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))

	tests := []struct {
		name    string
		build   func() (*tls.Config, error)
		wantErr []string
	}{
		{"server missing cert", func() (*tls.Config, error) { return ServerConfig(missing, key, "") },
			[]string{`certificate file "` + missing + `"`, "no such file"}},
		{"server missing key", func() (*tls.Config, error) { return ServerConfig(crt, missing, "") },
			[]string{`key file "` + missing + `"`, "no such file"}},
		{"server no cert given", func() (*tls.Config, error) { return ServerConfig("", key, "") },
			[]string{"certificate file and a key file are required"}},
		{"cert not PEM", func() (*tls.Config, error) { return ServerConfig(text, key, "") },
			[]string{`certificate file "` + text + `"`, "not PEM"}},
		{"key not PEM", func() (*tls.Config, error) { return ServerConfig(crt, text, "") },
			[]string{`key file "` + text + `"`, "not PEM"}},
		{"swapped", func() (*tls.Config, error) { return ServerConfig(key, crt, "") },
			[]string{`certificate file "` + key + `"`, "swapped"}},
		{"key does not match", func() (*tls.Config, error) { return ServerConfig(crt, otherKey, "") },
			[]string{`key file "` + otherKey + `" does not match certificate file "` + crt + `"`}},
		{"client CA missing", func() (*tls.Config, error) { return ServerConfig(crt, key, missing) },
			[]string{`CA file "` + missing + `"`, "no such file"}},
		{"client CA is a key", func() (*tls.Config, error) { return ServerConfig(crt, key, key) },
			[]string{`CA file "` + key + `": no CERTIFICATE block`, "PRIVATE KEY"}},
		{"client CA broken", func() (*tls.Config, error) { return ServerConfig(crt, key, brokenCA) },
			[]string{`CA file "` + brokenCA + `": certificate 1`}},
		{"client: CA missing", func() (*tls.Config, error) { return ClientConfig(missing, "", "", "") },
			[]string{`CA file "` + missing + `"`}},
		{"client: CA not PEM", func() (*tls.Config, error) { return ClientConfig(text, "", "", "") },
			[]string{`CA file "` + text + `"`, "not PEM"}},
		{"client: cert without key", func() (*tls.Config, error) { return ClientConfig(caFile, crt, "", "") },
			[]string{"both a certificate file and a key file, or neither"}},
		{"client: key without cert", func() (*tls.Config, error) { return ClientConfig(caFile, "", key, "") },
			[]string{"both a certificate file and a key file, or neither"}},
		{"client: key does not match", func() (*tls.Config, error) { return ClientConfig(caFile, crt, otherKey, "") },
			[]string{"does not match"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := tt.build()
			if err == nil {
				t.Fatalf("got a config (%p), want an error", cfg)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
	// A missing file stays recognisable to callers.
	_, err := ServerConfig(missing, key, "")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file error %v is not fs.ErrNotExist", err)
	}
}
