package controlplane_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/edge-tunnel/edge-tunnel/e2e/controlplane"
	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
	"github.com/edge-tunnel/edge-tunnel/pkg/tlsutil"
	agentpb "github.com/edge-tunnel/edge-tunnel/proto/agent"
)

// Names of the token test's objects: the agents' ServiceAccount (as in
// manifests/base) and its audience, and another ServiceAccount whose
// tokens the server must not take.
const (
	tokenAudience = "edge-tunnel"
	agentSA       = "edge-tunnel-agent"
	otherSA       = "other-agent"
	refusals      = "edge_tunnel_server_agent_identity_refusals_total"
)

// TestAgentToken runs edge-tunnel-server with --agent-identity=
// certificate,token against the real kube-apiserver (TokenReview, Pods,
// Nodes). An agent whose only credential is a ServiceAccount token bound
// to a pod on edge-1 (TokenRequest, as a projected volume gets it)
// connects and serves kubectl logs for edge-1. The same token claiming
// edge-2's name or address is refused with PermissionDenied naming both
// sides, while kubectl logs for edge-2 keeps reaching edge-2's real agent;
// tokens for another audience or another ServiceAccount, and no credential
// at all, are refused with Unauthenticated.
func TestAgentToken(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{
		PortsFromAPI: true, // --kubeconfig: the server's API access
		ServerArgs: []string{
			"--agent-identity=certificate,token",
			"--authentication-audience=" + tokenAudience,
			"--agent-namespace=kube-system",
			"--agent-service-account=" + agentSA,
		},
	})
	_, k := c.StartAPIServer(t, controlplane.EgressModes[0])
	edge1, edge2 := c.Node(t, "edge-1"), c.Node(t, "edge-2")

	// The agents' pods never run: a Pod object bound to the node is what
	// a token is bound to, and what the server checks.
	for _, sa := range []string{agentSA, otherSA} {
		k.Apply(t, fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: %s, namespace: kube-system}\n", sa))
		k.Apply(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s-%s, namespace: kube-system}
spec:
  nodeName: %s
  serviceAccountName: %s
  containers:
  - name: agent
    image: registry.invalid/edge-tunnel-e2e/agent:1
`, sa, edge1.Name, edge1.Name, sa))
	}
	token := func(sa, audience string) string {
		t.Helper()
		r := k.MustRun(t, "create", "token", sa, "-n", "kube-system", "--audience", audience,
			"--bound-object-kind", "Pod", "--bound-object-name", sa+"-"+edge1.Name, "--duration", "1h")
		return strings.TrimSpace(r.Stdout)
	}
	edge1Token := token(agentSA, tokenAudience)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(edge1Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	logsFrom := func(n *controlplane.Node) {
		t.Helper()
		r := k.Run(controlplane.RunOptions{Timeout: 20 * time.Second}, "logs", n.Pod)
		if r.ExitCode != 0 || !strings.HasPrefix(r.Stdout, logLine(n, 1)) {
			t.Fatalf("kubectl logs %s (node %s): want its log lines from its own kubelet; got %s", n.Pod, n.Name, r)
		}
	}

	t.Log("step: replace the certificate agent of edge-1 by a token agent")
	edge1.Agent.Stop(t)
	waitUntil(t, 10*time.Second, "one connected agent after edge-1's certificate agent stopped", func() bool {
		v, err := c.Server.Metric(harness.ConnectedAgentsMetric)
		return err == nil && v == 1
	})
	start := time.Now()
	c.StartTokenAgent(t, edge1, controlplane.TokenAgentOptions{TokenFile: tokenFile})
	c.Server.WaitAgents(t, 2)
	t.Logf("token agent of edge-1 connected in %s", time.Since(start).Round(time.Millisecond))
	logsFrom(edge1)
	logsFrom(edge2)

	t.Log("step: a rogue agent on edge-1 claims edge-2 with edge-1's token")
	before := refusalCount(t, c, "host")
	rogue := c.StartTokenAgent(t, edge1, controlplane.TokenAgentOptions{
		TokenFile: tokenFile, Name: edge2.Name, IPv4: edge2.Addr.String(), NoWait: true})
	waitUntil(t, 20*time.Second, "two refusals of the rogue agent", func() bool {
		return refusalCount(t, c, "host") >= before+2
	})
	want := fmt.Sprintf("token of pod kube-system/%s-%s proves node(s) [%s], agent claims host %s", agentSA, edge1.Name, edge1.Name, edge2.Name)
	if log := rogue.Log(); !strings.Contains(log, "PermissionDenied") || !strings.Contains(log, want) {
		t.Errorf("the rogue agent's log lacks PermissionDenied and %q:\n%s", want, rogue.LogTail(20))
	}
	// Dials for edge-2 keep going to edge-2's real agent (its kubelet's
	// log lines name edge-2), and edge-1 still works.
	logsFrom(edge2)
	logsFrom(edge1)
	rogue.Stop(t)

	t.Log("step: refusals on the raw agent protocol")
	for _, tc := range []struct {
		name, token, agentID, idents string
		code                         codes.Code
		reason                       string
		inMsg                        []string
	}{
		{"edge-1's token claiming edge-2's name", edge1Token, edge2.Name, "host=" + edge2.Name,
			codes.PermissionDenied, "host", []string{want}},
		{"edge-1's token claiming edge-2's address", edge1Token, edge1.Name, "host=" + edge1.Name + "&ipv4=" + edge2.Addr.String(),
			codes.PermissionDenied, "address", []string{
				fmt.Sprintf("proves node(s) [%s], agent claims address %s", edge1.Name, edge2.Addr),
				fmt.Sprintf("Node %s has addresses [%s]", edge1.Name, edge1.Addr)}},
		{"a token for another audience", token(agentSA, "api"), edge1.Name, "host=" + edge1.Name,
			codes.Unauthenticated, "bad_token", []string{"ServiceAccount token was not accepted", `audience "` + tokenAudience + `"`}},
		{"a token of another ServiceAccount", token(otherSA, tokenAudience), edge1.Name, "host=" + edge1.Name,
			codes.Unauthenticated, "service_account", []string{"system:serviceaccount:kube-system:" + otherSA, "only ServiceAccount kube-system/" + agentSA}},
		{"garbage", "not-a-token", edge1.Name, "host=" + edge1.Name,
			codes.Unauthenticated, "bad_token", []string{"ServiceAccount token was not accepted"}},
		{"no credential", "", edge1.Name, "host=" + edge1.Name,
			codes.Unauthenticated, "no_certificate", []string{"no client certificate and sent no ServiceAccount token"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := refusalCount(t, c, tc.reason)
			err := connectWithToken(t, c, tc.token, tc.agentID, tc.idents)
			if status.Code(err) != tc.code {
				t.Fatalf("got %v; want %s", err, tc.code)
			}
			for _, s := range tc.inMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q lacks %q", err, s)
				}
			}
			if after := refusalCount(t, c, tc.reason); after != before+1 {
				t.Errorf("refusals{reason=%s} went from %v to %v, want one more", tc.reason, before, after)
			}
		})
	}
	logsFrom(edge1)
	logsFrom(edge2)
	if log := c.Server.Log(); !strings.Contains(log, "Agent refused: its credential does not prove the node it claims") {
		t.Errorf("the server did not log the refusals")
	}
}

// connectWithToken opens AgentService.Connect on the server's agent port as
// an agent without a client certificate, sending token (if any) as
// "authorization: Bearer", and returns the stream's status: nil when the
// server answered the handshake.
func connectWithToken(t *testing.T, c *controlplane.Cluster, token, agentID, idents string) error {
	t.Helper()
	tlsCfg, err := tlsutil.ClientConfig(c.AgentPortCA(), "", "", c.Net.HostAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(c.Server.AgentAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	md := metadata.Pairs(agentpb.AgentIDKey, agentID, agentpb.AgentIdentifiersKey, idents)
	if token != "" {
		md.Append("authorization", "Bearer "+token)
	}
	s, err := agentpb.NewAgentServiceClient(cc).Connect(metadata.NewOutgoingContext(ctx, md))
	if err != nil {
		return err
	}
	hdr, err := s.Header()
	if err != nil {
		return err
	}
	if hdr == nil {
		_, err := s.Recv()
		return err
	}
	return nil
}

// refusalCount reads the server's agent identity refusals for reason.
func refusalCount(t *testing.T, c *controlplane.Cluster, reason string) float64 {
	t.Helper()
	v, err := c.Server.Metric(refusals, `reason="`+reason+`"`)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitUntil polls cond until it holds, failing the test after timeout.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
