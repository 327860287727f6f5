package harness

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// StopGrace is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopGrace = 5 * time.Second

// Process is one started binary. Its stdout and stderr go to LogPath.
type Process struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// StartProcess starts bin with args, logging to a file in logDir, and
// registers a cleanup that stops it and, if the test failed, logs the tail
// of its output. The process is killed if the test process dies first
// (a timeout panic, a kill), so no stray server outlives a run.
func StartProcess(t testing.TB, name, logDir, bin string, args ...string) *Process {
	t.Helper()
	return startProcess(t, name, logDir, bin, args...)
}

func startProcess(t testing.TB, name, logDir, bin string, args ...string) *Process {
	t.Helper()
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatalf("create log file for %s: %v", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	DieWithTestProcess(cmd)
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s (%s %s): %v", name, bin, strings.Join(args, " "), err)
	}
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("--- last lines of %s (%s):\n%s", name, logPath, p.LogTail(60))
		}
	})
	return p
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Done is closed when the process has ended.
func (p *Process) Done() <-chan struct{} { return p.done }

// Stop sends SIGTERM, waits up to StopGrace, then SIGKILL. It is a no-op
// for a process that has already ended.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(StopGrace):
	}
	t.Logf("%s did not exit within %s of SIGTERM; sending SIGKILL", p.Name, StopGrace)
	p.Kill()
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Process) Kill() {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// LogTail returns the last n lines of the process's output.
func (p *Process) LogTail(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.LogPath, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Log returns the whole output so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

// waitHTTP200 polls url until it answers 200, the process ends, or timeout.
func (p *Process) waitHTTP200(url string, timeout time.Duration) error {
	return p.waitHTTP200Client(&http.Client{Timeout: time.Second}, url, timeout)
}

func (p *Process) waitHTTP200Client(c *http.Client, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if p.Exited() {
			return fmt.Errorf("%s exited (%v) before %s answered 200", p.Name, p.waitErr, url)
		}
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s: %s did not answer 200 within %s (last: %s)", p.Name, url, timeout, last)
}

// FreePorts returns n distinct free TCP ports on 127.0.0.1. It holds all
// listeners until it has n, so the ports differ from each other; another
// process could still take one before it is used, which on a test machine
// does not happen in practice.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find a free port: %v", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// shortTempDir makes a temp dir with a short path (a unix socket path must
// stay under 108 bytes; t.TempDir() embeds the test name) and removes it on
// cleanup.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "et-")
	if err != nil {
		t.Fatalf("make temp dir: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

var errNotFound = errors.New("not found")
