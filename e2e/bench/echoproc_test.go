package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// echoChildEnv makes the test binary serve as the echo target instead of
// running benchmarks (see TestMain). The target of the idle connections
// runs in a process of its own so that the benchmark process holds only
// the client ends: with both ends, 10,000 connections need more than the
// 20,000 open files a container without CAP_SYS_RESOURCE may have.
const echoChildEnv = "EDGE_TUNNEL_BENCH_ECHO_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(echoChildEnv) == "1" {
		os.Exit(serveEcho())
	}
	harness.Main(m)
}

// serveEcho is the echo process: it listens on a free loopback port,
// prints the address as its first line, echoes every connection, and
// exits when its standard input ends (the benchmark closed it, or died).
func serveEcho() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(os.Stderr, "echo process: %v\n", err)
		return 1
	}
	fmt.Println(ln.Addr().String())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go echoConn(c)
		}
	}()
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// echoConn echoes with a plain read/write loop: io.Copy between two TCP
// connections splices through a pipe, two more open files per
// connection, which at 10,000 connections the file limit has no room for.
func echoConn(c net.Conn) {
	defer c.Close()
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// echoProcess is a running echo process.
type echoProcess struct {
	Addr string
	pid  int
}

// startEchoProcess starts the test binary as an echo process and stops it
// when the benchmark ends.
func startEchoProcess(b *testing.B) *echoProcess {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), echoChildEnv+"=1")
	cmd.Stderr = os.Stderr
	harness.DieWithTestProcess(cmd)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatalf("echo process: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatalf("echo process: %v", err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start the echo process: %v", err)
	}
	done := make(chan struct{})
	b.Cleanup(func() {
		stdin.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		_, _ = io.Copy(io.Discard, stdout)
		cmd.Wait()
		close(done)
	}()
	select {
	case addr := <-line:
		if _, _, err := net.SplitHostPort(addr); err != nil {
			b.Fatalf("echo process printed %q, want its address: %v", addr, err)
		}
		return &echoProcess{Addr: addr, pid: cmd.Process.Pid}
	case <-time.After(10 * time.Second):
		b.Fatal("the echo process did not print its address within 10 s")
		return nil
	}
}

// FDs is how many files the echo process holds open.
func (e *echoProcess) FDs(b *testing.B) int {
	b.Helper()
	n, err := harness.FDCount(e.pid)
	if err != nil {
		b.Fatalf("echo process: %v", err)
	}
	return n
}
