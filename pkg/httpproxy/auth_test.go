package httpproxy

import (
	"bufio"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestTokenRequired(t *testing.T) {
	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "hello") })
	d := &testDialer{}
	var refused atomic.Int64
	p, err := New(Options{Dialer: d, Name: "test-proxy", Token: "s3cret", Refused: func(reason string) {
		if reason == "proxy_unauthenticated" {
			refused.Add(1)
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	_, proxy := serveProxy(t, p)
	tgt := target.Listener.Addr().String()

	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	for _, c := range []struct{ header, want string }{
		{"", "no Proxy-Authorization header"},
		{"Bearer wrong", "does not carry the token"},
		{"Bearer s3cret2", "does not carry the token"},
		{"Bearer", "does not carry the token"},
		{basic("edge", "wrong"), "does not carry the token"},
		{"Digest s3cret", "does not carry the token"},
	} {
		req := "CONNECT " + tgt + " HTTP/1.1\r\nHost: " + tgt + "\r\n"
		if c.header != "" {
			req += "Proxy-Authorization: " + c.header + "\r\n"
		}
		conn, err := net.Dial("tcp", proxy)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(conn, req+"\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		conn.Close()
		if err != nil {
			t.Fatalf("%q: %v", c.header, err)
		}
		if resp.StatusCode != http.StatusProxyAuthRequired || !strings.Contains(resp.Status, c.want) ||
			!strings.Contains(strings.Join(resp.Header.Values("Proxy-Authenticate"), ","), "Bearer") {
			t.Errorf("Proxy-Authorization %q: %s %v; want 407 saying %q with a Bearer challenge", c.header, resp.Status, resp.Header, c.want)
		}
	}
	if n := d.dials.Load(); n != 0 {
		t.Errorf("%d dials made for unauthenticated requests", n)
	}
	if n := refused.Load(); n != 6 {
		t.Errorf("%d refusals counted, want 6", n)
	}

	// The right token, as a bearer token on CONNECT and as the password of
	// the proxy URL (Go sends it as Basic, both for CONNECT and for plain
	// requests).
	conn, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "CONNECT "+tgt+" HTTP/1.1\r\nHost: "+tgt+"\r\nProxy-Authorization: bearer s3cret\r\n\r\n")
	br := bufio.NewReader(conn)
	if resp, err := http.ReadResponse(br, nil); err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT with the token: %v %v", resp, err)
	}
	u := &url.URL{Scheme: "http", Host: proxy, User: url.UserPassword("edge", "s3cret")}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(u)}}
	resp, err := hc.Get(target.URL)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "hello" {
		t.Errorf("GET through the proxy with the token in its URL: %s %q", resp.Status, b)
	}
	if n := refused.Load(); n != 6 {
		t.Errorf("authenticated requests counted as refused (%d)", n)
	}
}

func TestConfiguredLimits(t *testing.T) {
	p, err := New(Options{Dialer: &testDialer{}, Name: "test-proxy",
		Limits: Limits{MaxHeaderBytes: 1024, IdleTimeout: 300 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	_, proxy := serveProxy(t, p)

	// net/http allows 4 KiB of slack over MaxHeaderBytes; 8 KiB is over
	// the configured 1 KiB but far below the 32 KiB default.
	status, _ := rawRequest(t, proxy, "GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("a", 8<<10)+"\r\n\r\n")
	if !strings.Contains(status, "431") {
		t.Errorf("head over --proxy-max-header-bytes: %q, want 431", status)
	}

	// A kept-alive connection that sends nothing more is closed after the
	// idle timeout.
	target := startTarget(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	c, err := net.Dial("tcp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET "+target.URL+"/ HTTP/1.1\r\nHost: "+target.Listener.Addr().String()+"\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	io.ReadAll(resp.Body)
	start := time.Now()
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("the proxy sent bytes on an idle connection")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("an idle kept-alive connection stayed open for %s; want it closed after 300ms", d)
	}
}
