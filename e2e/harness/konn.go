package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// KonnResult is the JSON line e2e/konnclient prints.
type KonnResult struct {
	OK             bool      `json:"ok"`
	Error          string    `json:"error"`
	Bytes          int64     `json:"bytes"`
	Status         int       `json:"status"`
	Body           string    `json:"body"`
	DialMillis     []float64 `json:"dialMillis"`
	MaxCloseMillis float64   `json:"maxCloseMillis"`
	CloseErrors    int       `json:"closeErrors"`
	Cancelled      int       `json:"cancelled"`
	Connected      int       `json:"connected"`
	Client         string    `json:"client"`
	Millis         float64   `json:"millis"`

	// Stderr is konnclient's log output (konnectivity-client's klog lines).
	Stderr string `json:"-"`
}

// MaxDialMillis is the slowest dial.
func (r KonnResult) MaxDialMillis() float64 {
	var m float64
	for _, d := range r.DialMillis {
		m = max(m, d)
	}
	return m
}

// RunKonn runs konnclient bin against s's unix socket with the operation op
// on addr and extra flags (e.g. "-size", "8388608"); timeout is konnclient's
// own hard limit, and the process is killed 10 s after it. It fails the test
// only when konnclient did not produce its JSON line; whether the operation
// succeeded is for the caller to judge.
func RunKonn(t testing.TB, bin string, s *Server, op, addr string, timeout time.Duration, extra ...string) KonnResult {
	t.Helper()
	r, err := runKonn(bin, s.UDS, op, addr, timeout, extra...)
	if err != nil {
		t.Fatalf("konnclient: %v", err)
	}
	return r
}

// StartKonn runs konnclient in the background; the channel delivers its
// result (or an error result) when it ends.
func StartKonn(bin string, s *Server, op, addr string, timeout time.Duration, extra ...string) <-chan KonnResult {
	ch := make(chan KonnResult, 1)
	go func() {
		r, err := runKonn(bin, s.UDS, op, addr, timeout, extra...)
		if err != nil {
			r = KonnResult{Error: "konnclient: " + err.Error()}
		}
		ch <- r
	}()
	return ch
}

func runKonn(bin, uds, op, addr string, timeout time.Duration, extra ...string) (KonnResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout+10*time.Second)
	defer cancel()
	args := append([]string{"-uds", uds, "-op", op, "-addr", addr, "-timeout", timeout.String()}, extra...)
	cmd := exec.CommandContext(ctx, bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var r KonnResult
	line := strings.TrimSpace(stdout.String())
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return r, fmt.Errorf("%s %s: no JSON result (run error %v, stdout %q)\nstderr:\n%s",
			bin, strings.Join(args, " "), runErr, line, tail(stderr.String(), 30))
	}
	r.Stderr = stderr.String()
	return r, nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
