package options

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

func TestLimitDefaults(t *testing.T) {
	o, _ := parse(t)
	l := o.Limits
	if strings.Join(l.DirectDialAllow, ",") != "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7" {
		t.Errorf("--direct-dial-allow default %q", l.DirectDialAllow)
	}
	if l.MaxPendingDialsPerAgent != 256 || l.MaxPendingDialsPerStream != 64 || l.MaxConnectionsPerClient != 10000 ||
		l.ProxyMaxHeaderBytes != 32<<10 || l.ProxyReadHeaderTimeout != 10*time.Second || l.ProxyIdleTimeout != 2*time.Minute ||
		l.ProxyTokenFile != "" || l.ProxyAllowUnauthenticated {
		t.Errorf("limit defaults: %+v", l)
	}
}

func TestValidateLimits(t *testing.T) {
	base := []string{"--uds-name=/run/s.sock", "--server-port=0", "--cluster-cert=c", "--cluster-key=k"}
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"proxy on loopback", []string{"--proxy-port=8099"}, nil},
		{"proxy on localhost", []string{"--proxy-port=8099", "--proxy-bind-address=localhost"}, nil},
		{"proxy on ::1", []string{"--proxy-port=8099", "--proxy-bind-address=::1"}, nil},
		{"proxy everywhere, open", []string{"--proxy-port=8099", "--proxy-bind-address="}, []string{`listens beyond loopback (--proxy-bind-address="") without authenticating its clients`}},
		{"proxy on pod IP, open", []string{"--proxy-port=8099", "--proxy-bind-address=10.1.2.3"}, []string{"set --proxy-token-file"}},
		{"proxy everywhere, token", []string{"--proxy-port=8099", "--proxy-bind-address=0.0.0.0", "--proxy-token-file=/t"}, nil},
		{"proxy everywhere, mTLS", []string{"--proxy-port=8099", "--proxy-bind-address=0.0.0.0", "--proxy-cert=c", "--proxy-key=k", "--proxy-ca-cert=ca"}, nil},
		{"proxy everywhere, explicitly open", []string{"--proxy-port=8099", "--proxy-bind-address=0.0.0.0", "--proxy-allow-unauthenticated"}, nil},
		{"proxy off", []string{"--proxy-port=0", "--proxy-bind-address=0.0.0.0"}, nil},
		{"bad allow list", []string{"--direct-dial-allow=10.0.0.0/8,10.0.0.0/40"}, []string{`--direct-dial-allow: "10.0.0.0/40" is not a CIDR`}},
		{"names allowed", []string{"--direct-dial-allow=10.96.0.0/12,.svc,*.cluster.local,webhook.example.com"}, nil},
		{"negative limits", []string{"--max-pending-dials-per-agent=-1", "--max-pending-dials-per-stream=-1", "--max-connections-per-client=-1"},
			[]string{"--max-pending-dials-per-agent=-1: must not be negative", "--max-pending-dials-per-stream=-1", "--max-connections-per-client=-1"}},
		{"unlimited", []string{"--max-pending-dials-per-agent=0", "--max-pending-dials-per-stream=0", "--max-connections-per-client=0"}, nil},
		{"tiny header limit", []string{"--proxy-max-header-bytes=100"}, []string{"--proxy-max-header-bytes=100: too small"}},
		{"tiny CONNECT head limit", []string{"--frontend-max-header-bytes=10"}, []string{"--frontend-max-header-bytes=10: too small"}},
		{"no frontend header time", []string{"--frontend-read-header-timeout=0s"}, []string{"--frontend-read-header-timeout=0s: must be positive"}},
		{"proxy timeouts", []string{"--proxy-read-header-timeout=0s", "--proxy-idle-timeout=-1s"}, []string{"--proxy-read-header-timeout=0s: must be positive", "--proxy-idle-timeout=-1s: must be positive"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, _ := parse(t, append(append([]string{}, base...), tc.args...)...)
			clitest.WantErrors(t, o.Validate(), tc.want)
		})
	}
}

func TestLimitWarnings(t *testing.T) {
	base := []string{"--uds-name=/s", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--cluster-ca-cert=ca"}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--proxy-port=8099", "--proxy-bind-address=0.0.0.0", "--proxy-token-file=/t"}, "--proxy-token-file without --proxy-cert"},
		{[]string{"--proxy-token-file=/t"}, "unused because --proxy-port=0"},
		{[]string{"--direct-dial-allow=0.0.0.0/0,::/0"}, "--direct-dial-allow allows every address"},
	} {
		o, _ := parse(t, append(append([]string{}, base...), c.args...)...)
		if got := strings.Join(o.Warnings(), "\n"); !strings.Contains(got, c.want) {
			t.Errorf("%q: warnings lack %q:\n%s", c.args, c.want, got)
		}
	}
}

func TestLimitConfig(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("  abc123\n"), 0o600)
	o, _ := parse(t, "--uds-name=/run/s.sock", "--server-port=0", "--cluster-cert="+p.Cert("leaf"), "--cluster-key="+p.Key("leaf"),
		"--proxy-port=8099", "--proxy-bind-address=0.0.0.0", "--proxy-token-file="+tokenFile,
		"--proxy-max-header-bytes=4096", "--proxy-read-header-timeout=3s", "--proxy-idle-timeout=30s",
		"--max-pending-dials-per-agent=7", "--max-pending-dials-per-stream=8", "--max-connections-per-client=9",
		"--direct-dial-allow=10.96.0.0/12,.svc", "--frontend-max-header-bytes=2048", "--frontend-read-header-timeout=4s")
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatal(errors.Join(errs...))
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ProxyToken != "abc123" || cfg.ProxyLimits.MaxHeaderBytes != 4096 || cfg.ProxyLimits.ReadHeaderTimeout != 3*time.Second ||
		cfg.ProxyLimits.IdleTimeout != 30*time.Second || cfg.MaxPendingDialsPerAgent != 7 || cfg.MaxPendingDialsPerStream != 8 ||
		cfg.MaxConnectionsPerClient != 9 || cfg.FrontendMaxHeadBytes != 2048 || cfg.FrontendReadHeaderTimeout != 4*time.Second || cfg.DirectDialAllow == nil || cfg.DirectDialAllow.String() != "10.96.0.0/12,.svc" {
		t.Errorf("config from the limit flags: token %q, proxy %+v, pending %d/%d, conns %d, allow %v",
			cfg.ProxyToken, cfg.ProxyLimits, cfg.MaxPendingDialsPerAgent, cfg.MaxPendingDialsPerStream, cfg.MaxConnectionsPerClient, cfg.DirectDialAllow)
	}

	// A token file that is missing, empty or not one word is an error naming the flag.
	for content, want := range map[string]string{"": "is empty", "a b\n": "more than one word", "-": "no such file"} {
		f := filepath.Join(dir, "t2")
		os.Remove(f)
		if content != "-" {
			os.WriteFile(f, []byte(content), 0o600)
		}
		o.Limits.ProxyTokenFile = f
		if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), "--proxy-token-file") || !strings.Contains(err.Error(), want) {
			t.Errorf("token file %q: %v; want an error naming --proxy-token-file saying %q", content, err, want)
		}
	}
}
