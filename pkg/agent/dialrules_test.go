package agent

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/apiserver-network-proxy/konnectivity-client/proto/client"

	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// TestAgentDialsOnlyTCPOnItsNode drives a real agent from a server that asks
// for what the agent must refuse: other protocols (UDP, a UNIX socket), a
// UNIX socket path as the address, and a host that is not the node. Each
// gets a DIAL_RSP error, and nothing is connected: the loopback TCP target
// and the UNIX socket count their connections.
func TestAgentDialsOnlyTCPOnItsNode(t *testing.T) {
	tcp := newEchoTarget(t)
	sock := filepath.Join(t.TempDir(), "target.sock")
	uln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	var unixConns atomic.Int64
	go func() {
		for {
			c, err := uln.Accept()
			if err != nil {
				return
			}
			unixConns.Add(1)
			c.Close()
		}
	}()

	streams := make(chan agentpb.AgentService_ConnectServer, 1)
	srvAddr, clientTLS := startFakeServer(t, streams)
	ids, err := identity.Parse("host=edge-1&ipv4=10.0.0.5")
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{ServerAddr: srvAddr, TLS: clientTLS, AgentID: "edge-1", Identifiers: ids,
		SyncInterval: 10 * time.Millisecond, DialTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { defer close(ran); a.Run(ctx) }()
	defer func() { cancel(); <-ran }()
	var srv *fakeStream
	select {
	case s := <-streams:
		srv = newFakeStream(s)
	case <-time.After(promptly):
		t.Fatalf("the agent did not connect within %v", promptly)
	}

	for i, c := range []struct{ protocol, address, refusal string }{
		{"udp", tcp.addr, `protocol "udp" is not supported; only "tcp" is`},
		{"unix", sock, `protocol "unix" is not supported`},
		{"unix", tcp.addr, `protocol "unix" is not supported`},
		{"", tcp.addr, `protocol "" is not supported`},
		{"tcp", sock, "want host:port"},
		{"tcp", "10.0.0.6:22", "not an address of this node"},
		{"tcp", "localhost:ssh", "want a number 1-65535"},
	} {
		random := int64(100 + i)
		srv.send(t, &client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
			DialRequest: &client.DialRequest{Protocol: c.protocol, Address: c.address, Random: random}}})
		rsp := srv.await(t, "the DIAL_RSP", func(p *client.Packet) bool {
			return p.GetDialResponse() != nil && p.GetDialResponse().Random == random
		}).GetDialResponse()
		if rsp.ConnectID != 0 || !strings.Contains(rsp.Error, c.refusal) {
			t.Errorf("dial %s %q: %+v; want a refusal saying %q", c.protocol, c.address, rsp, c.refusal)
		}
	}
	// The same TCP target is reachable when asked for properly, so the
	// refusals above are the rules, not a broken target.
	srv.send(t, &client.Packet{Type: client.PacketType_DIAL_REQ, Payload: &client.Packet_DialRequest{
		DialRequest: &client.DialRequest{Protocol: "tcp", Address: tcp.addr, Random: 1}}})
	rsp := srv.await(t, "the DIAL_RSP", func(p *client.Packet) bool {
		return p.GetDialResponse() != nil && p.GetDialResponse().Random == 1
	}).GetDialResponse()
	if rsp.Error != "" || rsp.ConnectID == 0 {
		t.Fatalf("tcp dial of loopback: %+v", rsp)
	}
	if n := unixConns.Load(); n != 0 {
		t.Errorf("the UNIX socket got %d connections", n)
	}
	eventually(t, "the allowed connection at the TCP target", func() bool { return tcp.open.Load() >= 1 })
	if n := tcp.open.Load(); n != 1 {
		t.Errorf("the TCP target has %d connections, want only the allowed one", n)
	}
}
