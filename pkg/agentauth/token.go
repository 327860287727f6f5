package agentauth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// Keys of a TokenReview's user extra that kube-apiserver fills for tokens
// bound to a pod (projected serviceAccountToken volumes, TokenRequest with
// a bound Pod). node-name is there since Kubernetes 1.30 (feature
// ServiceAccountTokenPodNodeInfo); before that only the pod is named.
const (
	extraNodeName = "authentication.kubernetes.io/node-name"
	extraPodName  = "authentication.kubernetes.io/pod-name"
	extraPodUID   = "authentication.kubernetes.io/pod-uid"
)

// saUserPrefix starts the user name of every ServiceAccount token:
// system:serviceaccount:NAMESPACE:NAME.
const saUserPrefix = "system:serviceaccount:"

// TokenIdentity is what a ServiceAccount token proves.
type TokenIdentity struct {
	// Node is the node name (normalized as an identity host key) that
	// the token's pod is scheduled to.
	Node string
	// Pod is NAMESPACE/NAME of the pod the token is bound to.
	Pod string
}

// TokenReviewer authenticates agents by ServiceAccount token: kube-apiserver
// checks the token (TokenReview, for Audience), the token must belong to
// Namespace/ServiceAccount, and the node it proves is the one its pod runs
// on. The pod's node comes from the token itself when kube-apiserver put it
// there, else from the Pod object (get pods).
//
// Accepted tokens are remembered for TTL, keyed by their SHA-256, so that
// an agent reconnecting in a loop costs one TokenReview per TTL, not one
// per attempt. Rejections and errors are not remembered: a token that
// becomes valid (a clock skew, a pod that was just created) works at once.
type TokenReviewer struct {
	Client kubernetes.Interface
	// Audience is the audience agents' tokens must carry
	// (--authentication-audience). A dedicated audience keeps the token
	// useless against kube-apiserver itself.
	Audience string
	// Namespace and ServiceAccount name the one ServiceAccount whose
	// tokens are accepted (--agent-namespace, --agent-service-account).
	Namespace      string
	ServiceAccount string
	// TTL is how long an accepted token is reused; 0 means 10 s. A token
	// whose pod is deleted keeps working for at most this long.
	TTL time.Duration
	// now is time.Now, replaceable in tests.
	now func() time.Time

	mu    sync.Mutex
	cache map[[sha256.Size]byte]tokenEntry
}

type tokenEntry struct {
	who TokenIdentity
	at  time.Time
}

// BearerToken extracts TOKEN from the "authorization" metadata values,
// which must be a single "Bearer TOKEN". No values give "" and no error.
func BearerToken(values []string) (string, error) {
	switch len(values) {
	case 0:
		return "", nil
	case 1:
	default:
		return "", &Refusal{Reason: ReasonBadToken, Detail: fmt.Sprintf("%d authorization metadata values; send one, \"Bearer TOKEN\"", len(values))}
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", &Refusal{Reason: ReasonBadToken, Detail: "the authorization metadata is not \"Bearer TOKEN\""}
	}
	return token, nil
}

// Review returns what token proves, a *Refusal when it proves nothing the
// server accepts, or a *LookupError when the API could not be asked.
func (r *TokenReviewer) Review(ctx context.Context, token string) (TokenIdentity, error) {
	now := time.Now
	if r.now != nil {
		now = r.now
	}
	ttl := r.TTL
	if ttl <= 0 {
		ttl = 10 * time.Second
	}
	key := sha256.Sum256([]byte(token))
	r.mu.Lock()
	if e, ok := r.cache[key]; ok && now().Sub(e.at) < ttl {
		r.mu.Unlock()
		return e.who, nil
	}
	r.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	who, err := r.review(ctx, token)
	if err != nil {
		return TokenIdentity{}, err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cache == nil || len(r.cache) >= maxCached {
		r.prune(now(), ttl)
	}
	r.cache[key] = tokenEntry{who: who, at: now()}
	return who, nil
}

func (r *TokenReviewer) review(ctx context.Context, token string) (TokenIdentity, error) {
	tr, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{r.Audience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return TokenIdentity{}, &LookupError{Reason: ReasonTokenReview,
			Err: fmt.Errorf("TokenReview (the server's ServiceAccount needs create on tokenreviews.authentication.k8s.io): %w", err)}
	}
	st := tr.Status
	if !st.Authenticated {
		why := st.Error
		if why == "" {
			why = "not authenticated"
		}
		return TokenIdentity{}, &Refusal{Reason: ReasonBadToken, Detail: fmt.Sprintf(
			"kube-apiserver says: %s; give the agent a current projected ServiceAccount token with audience %q (--service-account-token-path)", why, r.Audience)}
	}
	// An authenticator that ignores audiences returns none; only one that
	// confirms ours proves the token was issued for this server.
	if !slices.Contains(st.Audiences, r.Audience) {
		return TokenIdentity{}, &Refusal{Reason: ReasonBadToken, Detail: fmt.Sprintf(
			"kube-apiserver accepted the token for audiences %v, not for %q; give the agent a projected ServiceAccount token with audience %q", st.Audiences, r.Audience, r.Audience)}
	}
	want := saUserPrefix + r.Namespace + ":" + r.ServiceAccount
	if st.User.Username != want {
		return TokenIdentity{}, &Refusal{Reason: ReasonServiceAccount, Detail: fmt.Sprintf(
			"the token is %s, the server accepts only ServiceAccount %s/%s (--agent-namespace, --agent-service-account); run the agent with that ServiceAccount",
			st.User.Username, r.Namespace, r.ServiceAccount)}
	}

	extra := func(k string) string {
		if v := st.User.Extra[k]; len(v) == 1 {
			return v[0]
		}
		return ""
	}
	podName, podUID := extra(extraPodName), extra(extraPodUID)
	if podName == "" {
		// A legacy Secret token, or a TokenRequest without a bound pod.
		return TokenIdentity{}, &Refusal{Reason: ReasonTokenNotBound, Detail: "the token is not bound to a pod; mount a projected serviceAccountToken volume in the agent's pod and pass its path with --service-account-token-path"}
	}
	who := TokenIdentity{Pod: r.Namespace + "/" + podName}
	if node := extra(extraNodeName); node != "" {
		// kube-apiserver checked, in the TokenReview, that the pod with
		// this UID still exists; the node it names is the pod's.
		who.Node = identity.NormalizeHost(node)
		return who, nil
	}
	pod, err := r.Client.CoreV1().Pods(r.Namespace).Get(ctx, podName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return TokenIdentity{}, &Refusal{Reason: ReasonTokenNotBound, Detail: fmt.Sprintf("the token's pod %s no longer exists", who.Pod)}
	case err != nil:
		return TokenIdentity{}, &LookupError{Reason: ReasonTokenReview,
			Err: fmt.Errorf("get pod %s (the server's ServiceAccount needs get on pods): %w", who.Pod, err)}
	}
	if podUID == "" || string(pod.UID) != podUID {
		return TokenIdentity{}, &Refusal{Reason: ReasonTokenNotBound, Detail: fmt.Sprintf(
			"the token was issued for pod %s with UID %q, but that pod now has UID %s; restart the agent so that it reads its current token", who.Pod, podUID, pod.UID)}
	}
	if pod.Spec.NodeName == "" {
		return TokenIdentity{}, &Refusal{Reason: ReasonTokenNotBound, Detail: fmt.Sprintf("the token's pod %s is not scheduled to a node", who.Pod)}
	}
	who.Node = identity.NormalizeHost(pod.Spec.NodeName)
	return who, nil
}

// prune drops expired entries, or everything if none expired.
func (r *TokenReviewer) prune(now time.Time, ttl time.Duration) {
	for k, e := range r.cache {
		if now.Sub(e.at) >= ttl {
			delete(r.cache, k)
		}
	}
	if r.cache == nil || len(r.cache) >= maxCached {
		r.cache = map[[sha256.Size]byte]tokenEntry{}
	}
}
