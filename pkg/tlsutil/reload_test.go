package tlsutil

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Rotation tests build configs with a zero reload interval so that every
// handshake looks at the files; TestReloadInterval covers the throttle.

func TestServerCertRotation(t *testing.T) {
	ca := newCA(t, "ca")
	f := newFiles(t)
	caFile := f.write("ca.crt", ca.CertPEM)
	crt, key := f.pair("server", issue(t, ca, "one", []string{"127.0.0.1"}, "server"))
	scfg, err := serverConfig(crt, key, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := ClientConfig(caFile, "", "", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	expect := func(cn string) {
		t.Helper()
		r := handshake(t, scfg, ccfg)
		r.ok(t)
		if r.clientSaw != cn {
			t.Fatalf("server presented %q, want %q", r.clientSaw, cn)
		}
	}
	expect("one")

	two := issue(t, ca, "two", []string{"127.0.0.1"}, "server")
	f.write("server.crt", two.CertPEM)
	expect("one") // new certificate, old key: keep the old pair
	os.Remove(key)
	expect("one") // key file gone for a moment: keep the old pair
	f.write("server.key", two.KeyPEM)
	expect("two")

	f.write("server.crt", []byte("garbage"))
	expect("two")
}

func TestClientCertRotation(t *testing.T) {
	ca := newCA(t, "ca")
	f := newFiles(t)
	caFile := f.write("ca.crt", ca.CertPEM)
	srvCrt, srvKey := f.pair("server", issue(t, ca, "server", []string{"127.0.0.1"}, "server"))
	crt, key := f.pair("agent", issue(t, ca, "agent-1", nil, "client"))
	scfg, err := ServerConfig(srvCrt, srvKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := clientConfig(caFile, crt, key, "127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	r := handshake(t, scfg, ccfg)
	r.ok(t)
	if r.serverSaw != "agent-1" {
		t.Fatalf("server saw %q", r.serverSaw)
	}
	f.pair("agent", issue(t, ca, "agent-2", nil, "client"))
	r = handshake(t, scfg, ccfg)
	r.ok(t)
	if r.serverSaw != "agent-2" {
		t.Fatalf("after rotation server saw %q, want agent-2", r.serverSaw)
	}
}

func TestClientCARotation(t *testing.T) {
	oldCA, newCA_ := newCA(t, "old-ca"), newCA(t, "new-ca")
	f := newFiles(t)
	serverCA := f.write("server-ca.crt", oldCA.CertPEM)
	srvCrt, srvKey := f.pair("server", issue(t, oldCA, "server", []string{"127.0.0.1"}, "server"))
	clientCA := f.write("client-ca.crt", oldCA.CertPEM)
	cliCrt, cliKey := f.pair("agent", issue(t, newCA_, "agent", nil, "client"))

	scfg, err := serverConfig(srvCrt, srvKey, clientCA, 0)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := ClientConfig(serverCA, cliCrt, cliKey, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	handshake(t, scfg, ccfg).failed(t, "not trusted")
	// Rotation adds the new CA to the bundle first.
	f.write("client-ca.crt", append(append([]byte{}, oldCA.CertPEM...), newCA_.CertPEM...))
	handshake(t, scfg, ccfg).ok(t)
	// A broken bundle does not replace a good one.
	f.write("client-ca.crt", []byte("not a bundle"))
	handshake(t, scfg, ccfg).ok(t)
	// Dropping the new CA takes effect too.
	f.write("client-ca.crt", oldCA.CertPEM)
	handshake(t, scfg, ccfg).failed(t, "not trusted")
}

func TestServerCARotation(t *testing.T) {
	oldCA, newCA_ := newCA(t, "old-ca"), newCA(t, "new-ca")
	f := newFiles(t)
	caFile := f.write("ca.crt", oldCA.CertPEM)
	srvCrt, srvKey := f.pair("server", issue(t, newCA_, "server", []string{"127.0.0.1"}, "server"))
	scfg, err := ServerConfig(srvCrt, srvKey, "")
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := clientConfig(caFile, "", "", "127.0.0.1", 0)
	if err != nil {
		t.Fatal(err)
	}
	handshake(t, scfg, ccfg).failed(t, "not trusted by CA file")
	f.write("ca.crt", newCA_.CertPEM)
	handshake(t, scfg, ccfg).ok(t)
}

// TestSymlinkSwap rotates the way a Kubernetes Secret volume does: the files
// are symlinks through ..data, which is swapped to a new directory. The new
// files may have the same size and modification time as the old ones.
func TestSymlinkSwap(t *testing.T) {
	ca := newCA(t, "ca")
	dir := t.TempDir()
	mtime := time.Now().Add(-time.Hour).Truncate(time.Second)
	writeVersion := func(version, cn string) {
		t.Helper()
		p := issue(t, ca, cn, []string{"127.0.0.1"}, "server")
		vdir := filepath.Join(dir, version)
		if err := os.Mkdir(vdir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{"tls.crt": p.CertPEM, "tls.key": p.KeyPEM} {
			fp := filepath.Join(vdir, name)
			if err := os.WriteFile(fp, data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(fp, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}
		tmp := filepath.Join(dir, "..data_tmp")
		if err := os.Symlink(version, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	writeVersion("v1", "one")
	for _, name := range []string{"tls.crt", "tls.key"} {
		if err := os.Symlink(filepath.Join("..data", name), filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	f := newFiles(t)
	caFile := f.write("ca.crt", ca.CertPEM)
	scfg, err := serverConfig(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), "", 0)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := ClientConfig(caFile, "", "", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	r := handshake(t, scfg, ccfg)
	r.ok(t)
	if r.clientSaw != "one" {
		t.Fatalf("server presented %q, want one", r.clientSaw)
	}
	writeVersion("v2", "two")
	r = handshake(t, scfg, ccfg)
	r.ok(t)
	if r.clientSaw != "two" {
		t.Fatalf("after the swap server presented %q, want two", r.clientSaw)
	}
}

// TestReloadInterval checks that files are looked at no more than once per
// interval and that a failed reload is retried.
func TestReloadInterval(t *testing.T) {
	f := newFiles(t)
	p := f.write("value", []byte("1"))
	loads := 0
	r, err := newReloader([]string{p}, time.Second, func() (string, error) {
		loads++
		b, err := os.ReadFile(p)
		if string(b) == "bad" {
			return "", errors.New("bad content")
		}
		return string(b), err
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r.now = func() time.Time { return now }
	r.checked = now

	f.write("value", []byte("2"))
	now = now.Add(999 * time.Millisecond)
	if got := r.get(); got != "1" || loads != 1 {
		t.Fatalf("within the interval: got %q after %d loads, want 1 after 1", got, loads)
	}
	now = now.Add(time.Millisecond)
	if got := r.get(); got != "2" || loads != 2 {
		t.Fatalf("after the interval: got %q after %d loads, want 2 after 2", got, loads)
	}
	now = now.Add(time.Hour)
	if got := r.get(); got != "2" || loads != 2 {
		t.Fatalf("unchanged file: got %q after %d loads, want no reload", got, loads)
	}

	f.write("value", []byte("bad"))
	now = now.Add(time.Second)
	if got := r.get(); got != "2" || loads != 3 || r.err() == nil {
		t.Fatalf("bad file: got %q after %d loads (err %v), want old value after 3 and an error", got, loads, r.err())
	}
	now = now.Add(time.Second)
	if r.get(); loads != 4 {
		t.Fatalf("a failed reload was not retried (%d loads)", loads)
	}
	f.write("value", []byte("3"))
	now = now.Add(time.Second)
	if got := r.get(); got != "3" || r.err() != nil {
		t.Fatalf("after the fix: got %q, err %v", got, r.err())
	}
}
