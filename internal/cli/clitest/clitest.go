// Package clitest holds the test helpers the edge-tunnel commands share:
// throwaway certificates on disk, free loopback ports, parsing and running a
// command's flags, and real TLS handshakes over loopback. It is imported only
// by tests.
package clitest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"

	"github.com/edge-tunnel/edge-tunnel/pkg/pki"
)

// PKI is a directory holding a throwaway CA (ca.crt) and key pairs
// (NAME.crt, NAME.key) in PEM.
type PKI struct{ Dir string }

// WritePKI makes a fresh CA and, for each name, a key pair whose certificate
// has the name as common name and is valid for 127.0.0.1 as both server and
// client, and writes them into a new temporary directory.
func WritePKI(t testing.TB, names ...string) PKI {
	t.Helper()
	ca, err := pki.NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	pairs := make(map[string]pki.Pair, len(names))
	for _, name := range names {
		if pairs[name], err = ca.Issue(name, []string{"127.0.0.1"}, pki.UsageBoth); err != nil {
			t.Fatal(err)
		}
	}
	p := PKI{Dir: t.TempDir()}
	if err := pki.WriteFiles(p.Dir, ca, pairs); err != nil {
		t.Fatal(err)
	}
	return p
}

// CA is the path of the CA certificate.
func (p PKI) CA() string { return p.Path("ca.crt") }

// Cert is the path of name's certificate.
func (p PKI) Cert(name string) string { return p.Path(name + ".crt") }

// Key is the path of name's private key.
func (p PKI) Key(name string) string { return p.Path(name + ".key") }

// Path is the path of file in the directory, for other files a test puts
// there (a UNIX socket, a missing file).
func (p PKI) Path(file string) string { return filepath.Join(p.Dir, file) }

// FreePort returns a loopback port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// ParseFlags parses args into the sections of fss the way a command does,
// and returns what parsing printed (deprecation notices). A parse error
// fails the test.
func ParseFlags(t testing.TB, fss cliflag.NamedFlagSets, args ...string) string {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	var out bytes.Buffer
	fs.SetOutput(&out)
	for _, name := range fss.Order {
		fs.AddFlagSet(fss.FlagSets[name])
	}
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return out.String()
}

// Execute runs cmd with args and returns its standard output and error. As
// verflag keeps --version in a process-wide variable, --version is set back
// to false when the test ends, so that later commands in the same test
// binary do not see it.
func Execute(t testing.TB, cmd *cobra.Command, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	t.Cleanup(func() {
		if f := cmd.Flags().Lookup("version"); f != nil {
			f.Value.Set("false")
		}
	})
	err := cmd.Execute()
	return out.String(), err
}

// ServerTLS builds, by hand rather than through the code under test, a
// server config that presents certFile and requires a client certificate
// from caFile.
func ServerTLS(t testing.TB, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{c}, ClientCAs: certPool(t, caFile), ClientAuth: tls.RequireAndVerifyClientCert}
}

// ClientTLS builds, by hand rather than through the code under test, a
// client config that verifies the server as 127.0.0.1 against caFile and
// presents certFile, unless certFile is "".
func ClientTLS(t testing.TB, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	cfg := &tls.Config{RootCAs: certPool(t, caFile), ServerName: "127.0.0.1"}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

func certPool(t testing.TB, caFile string) *x509.CertPool {
	t.Helper()
	pemCA, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemCA) {
		t.Fatalf("%s holds no PEM certificate", caFile)
	}
	return pool
}

// Handshake runs one TLS handshake between server and client over loopback
// and returns the errors of both sides, joined; nil means both accepted the
// other.
func Handshake(t testing.TB, server, client *tls.Config) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		serverErr <- c.(*tls.Conn).Handshake()
	}()
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), client)
	if err == nil {
		// With TLS 1.3 the client finishes before the server has checked the
		// client certificate; a read surfaces the server's verdict.
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err = c.Read(make([]byte, 1))
		if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
			err = nil
		}
		c.Close()
	}
	return errors.Join(<-serverErr, err)
}

// WantErrors checks that errs are as many as want and that each contains
// the substring at the same place in want, as validation reports them.
func WantErrors(t testing.TB, errs []error, want []string) {
	t.Helper()
	if len(errs) != len(want) {
		t.Fatalf("got %d errors, want %d: %v", len(errs), len(want), errors.Join(errs...))
	}
	for i, w := range want {
		if !strings.Contains(errs[i].Error(), w) {
			t.Errorf("error %d = %q, want it to contain %q", i, errs[i], w)
		}
	}
}
