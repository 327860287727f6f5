package agentauth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

const (
	testAudience = "edge-tunnel"
	agentUser    = "system:serviceaccount:kube-system:edge-tunnel-agent"
)

// fakeAPI is client-go's fake clientset with Nodes edge-a and edge-b, the
// agent pods agent-a (on edge-a) and agent-unscheduled, and a TokenReview
// reactor answering from reviews (token -> status). Unknown tokens are not
// authenticated, as kube-apiserver answers them.
type fakeAPI struct {
	client  *fake.Clientset
	reviews map[string]authnv1.TokenReviewStatus
	asked   []authnv1.TokenReviewSpec
	down    bool
}

func newFakeAPI() *fakeAPI {
	node := func(name, addr string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}}}
	}
	pod := func(name, uid, node string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system", UID: types.UID(uid)},
			Spec: corev1.PodSpec{NodeName: node}}
	}
	f := &fakeAPI{reviews: map[string]authnv1.TokenReviewStatus{}}
	f.client = fake.NewClientset(node("edge-a", "192.0.2.10"), node("edge-b", "192.0.2.20"),
		pod("agent-a", "uid-a", "edge-a"), pod("agent-unscheduled", "uid-u", ""))
	f.client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if f.down {
			return true, nil, errors.New("connection refused")
		}
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview).DeepCopy()
		f.asked = append(f.asked, tr.Spec)
		st, ok := f.reviews[tr.Spec.Token]
		if !ok {
			st = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		tr.Status = st
		return true, tr, nil
	})
	return f
}

// bound is the status kube-apiserver gives a token bound to pod
// kube-system/pod; node is empty for API servers before 1.30, which do
// not name the node.
func bound(user, pod, uid, node string) authnv1.TokenReviewStatus {
	extra := map[string]authnv1.ExtraValue{extraPodName: {pod}, extraPodUID: {uid}}
	if node != "" {
		extra[extraNodeName] = authnv1.ExtraValue{node}
	}
	return authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{testAudience},
		User: authnv1.UserInfo{Username: user, Extra: extra}}
}

func (f *fakeAPI) binder() *Binder {
	return &Binder{
		Nodes:        &KubeNodes{Client: f.client},
		RequireToken: true,
		Tokens: &TokenReviewer{Client: f.client, Audience: testAudience,
			Namespace: "kube-system", ServiceAccount: "edge-tunnel-agent"},
	}
}

func TestTokenCheck(t *testing.T) {
	f := newFakeAPI()
	f.reviews["node-info"] = bound(agentUser, "agent-a", "uid-a", "Edge-A")
	f.reviews["pod-only"] = bound(agentUser, "agent-a", "uid-a", "")
	f.reviews["old-pod"] = bound(agentUser, "agent-a", "uid-before", "")
	f.reviews["gone-pod"] = bound(agentUser, "agent-gone", "uid-g", "")
	f.reviews["unscheduled"] = bound(agentUser, "agent-unscheduled", "uid-u", "")
	f.reviews["other-sa"] = bound("system:serviceaccount:kube-system:default", "agent-a", "uid-a", "edge-a")
	f.reviews["other-ns"] = bound("system:serviceaccount:default:edge-tunnel-agent", "agent-a", "uid-a", "edge-a")
	f.reviews["unbound"] = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{testAudience},
		User: authnv1.UserInfo{Username: agentUser}}
	f.reviews["no-audience"] = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: agentUser}}
	f.reviews["wrong-audience"] = authnv1.TokenReviewStatus{Error: "token audiences [\"api\"] is invalid for the target audiences [\"edge-tunnel\"]"}

	bearer := func(tok string) []string { return []string{"Bearer " + tok} }
	cases := []struct {
		name    string
		auth    []string
		agentID string
		ids     string
		reason  string // "" means accepted
		unauth  bool
		inMsg   []string
	}{
		{name: "node from the token", auth: bearer("node-info"), agentID: "edge-a", ids: "host=edge-a&ipv4=192.0.2.10"},
		{name: "node from the pod", auth: bearer("pod-only"), agentID: "edge-a", ids: "host=edge-a&ipv4=192.0.2.10"},
		{name: "scheme in lower case", auth: []string{"bearer  node-info "}, agentID: "edge-a"},
		{name: "another node's name", auth: bearer("node-info"), agentID: "edge-b", ids: "host=edge-b",
			reason: ReasonHost, inMsg: []string{"token of pod kube-system/agent-a proves node(s) [edge-a], agent claims host edge-b"}},
		{name: "another node's name from the pod", auth: bearer("pod-only"), agentID: "edge-a", ids: "host=edge-b",
			reason: ReasonHost, inMsg: []string{"[edge-a]", "host edge-b"}},
		{name: "another node's address", auth: bearer("node-info"), agentID: "edge-a", ids: "host=edge-a&ipv4=192.0.2.20",
			reason: ReasonAddress, inMsg: []string{"proves node(s) [edge-a], agent claims address 192.0.2.20", "Node edge-a has addresses [192.0.2.10]"}},
		{name: "a network", auth: bearer("node-info"), agentID: "edge-a", ids: "cidr=10.0.0.0/8",
			reason: ReasonNetwork, inMsg: []string{"--agent-identity-allow-networks"}},
		{name: "no token", agentID: "edge-a", reason: ReasonNoToken, unauth: true,
			inMsg: []string{"sent no ServiceAccount token", "--service-account-token-path"}},
		{name: "not a bearer token", auth: []string{"Basic dXNlcg=="}, agentID: "edge-a", reason: ReasonBadToken, unauth: true,
			inMsg: []string{`not "Bearer TOKEN"`}},
		{name: "two tokens", auth: []string{"Bearer a", "Bearer b"}, agentID: "edge-a", reason: ReasonBadToken, unauth: true,
			inMsg: []string{"2 authorization metadata values"}},
		{name: "empty bearer", auth: []string{"Bearer "}, agentID: "edge-a", reason: ReasonBadToken, unauth: true},
		{name: "unknown token", auth: bearer("garbage"), agentID: "edge-a", reason: ReasonBadToken, unauth: true,
			inMsg: []string{"kube-apiserver says: invalid bearer token", `audience "edge-tunnel"`}},
		{name: "wrong audience", auth: bearer("wrong-audience"), agentID: "edge-a", reason: ReasonBadToken, unauth: true,
			inMsg: []string{"is invalid for the target audiences"}},
		{name: "authenticator ignores audiences", auth: bearer("no-audience"), agentID: "edge-a", reason: ReasonBadToken, unauth: true,
			inMsg: []string{`not for "edge-tunnel"`}},
		{name: "another ServiceAccount", auth: bearer("other-sa"), agentID: "edge-a", reason: ReasonServiceAccount, unauth: true,
			inMsg: []string{"system:serviceaccount:kube-system:default", "only ServiceAccount kube-system/edge-tunnel-agent"}},
		{name: "another namespace", auth: bearer("other-ns"), agentID: "edge-a", reason: ReasonServiceAccount, unauth: true},
		{name: "token not bound to a pod", auth: bearer("unbound"), agentID: "edge-a", reason: ReasonTokenNotBound, unauth: true,
			inMsg: []string{"not bound to a pod", "projected serviceAccountToken volume"}},
		{name: "pod replaced", auth: bearer("old-pod"), agentID: "edge-a", reason: ReasonTokenNotBound, unauth: true,
			inMsg: []string{`UID "uid-before"`, "now has UID uid-a"}},
		{name: "pod gone", auth: bearer("gone-pod"), agentID: "edge-a", reason: ReasonTokenNotBound, unauth: true,
			inMsg: []string{"kube-system/agent-gone no longer exists"}},
		{name: "pod not scheduled", auth: bearer("unscheduled"), agentID: "edge-a", reason: ReasonTokenNotBound, unauth: true,
			inMsg: []string{"not scheduled to a node"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := identity.Parse(tc.ids)
			if err != nil {
				t.Fatal(err)
			}
			err = f.binder().Check(context.Background(), Credentials{Authorization: tc.auth}, tc.agentID, ids)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			var r *Refusal
			if !errors.As(err, &r) {
				t.Fatalf("got %v, want a refusal with reason %s", err, tc.reason)
			}
			if r.Reason != tc.reason || r.Unauthenticated() != tc.unauth {
				t.Errorf("reason %s (unauthenticated %v), want %s (%v): %v", r.Reason, r.Unauthenticated(), tc.reason, tc.unauth, err)
			}
			for _, s := range tc.inMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q does not contain %q", err, s)
				}
			}
		})
	}
	for _, spec := range f.asked {
		if len(spec.Audiences) != 1 || spec.Audiences[0] != testAudience {
			t.Errorf("TokenReview asked for audiences %v, want [%s]", spec.Audiences, testAudience)
		}
	}
}

// TestTokenOrCertificate: with tokens accepted but not required, an agent
// without a token is bound by its certificate, one with a token by the
// token, whatever its certificate says. Without Tokens, a token is ignored.
func TestTokenOrCertificate(t *testing.T) {
	f := newFakeAPI()
	f.reviews["a"] = bound(agentUser, "agent-a", "uid-a", "edge-a")
	b := f.binder()
	b.RequireToken = false
	ids, _ := identity.Parse("host=edge-b")
	certB := cert("system:node:edge-b")
	if err := b.Check(context.Background(), Credentials{Certificate: certB}, "edge-b", ids); err != nil {
		t.Errorf("certificate of edge-b without a token: %v", err)
	}
	err := b.Check(context.Background(), Credentials{Certificate: certB, Authorization: []string{"Bearer a"}}, "edge-b", ids)
	var r *Refusal
	if !errors.As(err, &r) || r.Reason != ReasonHost {
		t.Errorf("token of edge-a with a certificate of edge-b, claiming edge-b: got %v, want the token's refusal", err)
	}
	err = b.Check(context.Background(), Credentials{}, "edge-b", ids)
	if !errors.As(err, &r) || r.Reason != ReasonNoCertificate || !r.Unauthenticated() || !strings.Contains(err.Error(), "--service-account-token-path") {
		t.Errorf("neither credential: got %v, want %s naming both credentials", err, ReasonNoCertificate)
	}
	b.Tokens = nil
	if err := b.Check(context.Background(), Credentials{Certificate: certB, Authorization: []string{"Bearer a"}}, "edge-b", ids); err != nil {
		t.Errorf("certificate mode with a token: %v (the token should be ignored)", err)
	}
}

// TestTokenCache: an accepted token is reviewed once per TTL; rejected
// tokens and API errors are asked again every time.
func TestTokenCache(t *testing.T) {
	f := newFakeAPI()
	f.reviews["a"] = bound(agentUser, "agent-a", "uid-a", "")
	now := time.Unix(1000, 0)
	r := &TokenReviewer{Client: f.client, Audience: testAudience, Namespace: "kube-system", ServiceAccount: "edge-tunnel-agent",
		TTL: 10 * time.Second, now: func() time.Time { return now }}
	ctx := context.Background()
	for i := range 5 {
		who, err := r.Review(ctx, "a")
		if err != nil || who.Node != "edge-a" || who.Pod != "kube-system/agent-a" {
			t.Fatalf("review %d: %+v %v", i, who, err)
		}
	}
	for range 3 {
		r.Review(ctx, "bad")
	}
	if len(f.asked) != 4 {
		t.Fatalf("%d TokenReviews, want 4 (one for the accepted token, one per rejected attempt)", len(f.asked))
	}
	// A cached token needs no API: it keeps working while the API is down,
	// until the TTL is over.
	f.down = true
	if _, err := r.Review(ctx, "a"); err != nil {
		t.Fatalf("cached token with the API down: %v", err)
	}
	now = now.Add(11 * time.Second)
	_, err := r.Review(ctx, "a")
	var le *LookupError
	if !errors.As(err, &le) || le.Reason != ReasonTokenReview || !strings.Contains(err.Error(), "create on tokenreviews") {
		t.Fatalf("expired token with the API down: got %v, want a LookupError naming the permission", err)
	}
	f.down = false
	if _, err := r.Review(ctx, "a"); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

// TestTokenPodLookupError: when the pod cannot be read, the answer is
// unknown: a LookupError, not a refusal.
func TestTokenPodLookupError(t *testing.T) {
	f := newFakeAPI()
	f.reviews["a"] = bound(agentUser, "agent-a", "uid-a", "")
	f.client.PrependReactor("get", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("forbidden")
	})
	ids, _ := identity.Parse("")
	err := f.binder().Check(context.Background(), Credentials{Authorization: []string{"Bearer a"}}, "edge-a", ids)
	var le *LookupError
	if !errors.As(err, &le) || le.Reason != ReasonTokenReview || !strings.Contains(err.Error(), "get on pods") {
		t.Fatalf("got %v, want a LookupError naming get on pods", err)
	}
}
