package options

import (
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/internal/cli/clitest"
)

func TestUDSFlags(t *testing.T) {
	p := clitest.WritePKI(t, "leaf")
	base := []string{"--uds-name=/run/edge-tunnel.sock", "--server-port=0", "--cluster-cert=" + p.Cert("leaf"), "--cluster-key=" + p.Key("leaf")}

	o, _ := parse(t, append(base, "--uds-mode=0666")...)
	clitest.WantErrors(t, o.Validate(), []string{`--uds-mode "0666": the last digit gives every local user access to the socket, and so a way into every edge node`})

	o, _ = parse(t, append(base, "--uds-mode=0640", "--uds-group=0")...)
	clitest.WantErrors(t, o.Validate(), nil)
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.UDSGroup != "0" || cfg.UDSMode != 0o640 {
		t.Errorf("UDSGroup %q, UDSMode %o; want \"0\" and 0640", cfg.UDSGroup, cfg.UDSMode)
	}

	o, _ = parse(t, append(base, "--uds-group=no-such-group-edge-tunnel")...)
	if _, err := o.Config(); err == nil || !strings.Contains(err.Error(), `--uds-group="no-such-group-edge-tunnel": no group named`) {
		t.Errorf("unknown group: err = %v, want one naming --uds-group", err)
	}

	o, _ = parse(t, "--uds-name=", "--server-port=8090", "--uds-group=0")
	if ws := strings.Join(o.Warnings(), "\n"); !strings.Contains(ws, "--uds-group is set but unused because --uds-name is empty") {
		t.Errorf("warnings %q do not say --uds-group is unused without --uds-name", ws)
	}
}
