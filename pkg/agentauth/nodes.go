package agentauth

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// KubeNodes looks up Node objects through the Kubernetes API (get nodes).
// Answers, including "no such node", are cached for TTL so that an agent
// that reconnects in a loop does not turn into a stream of API requests;
// errors are not cached.
type KubeNodes struct {
	Client kubernetes.Interface
	// TTL is how long an answer is reused; 0 means 30 s.
	TTL time.Duration
	// now is time.Now, replaceable in tests.
	now func() time.Time

	mu    sync.Mutex
	cache map[string]nodeEntry
}

type nodeEntry struct {
	addrs []netip.Addr
	found bool
	at    time.Time
}

// maxCached bounds the cache: past it, expired entries are dropped, and
// if none expired the cache starts over. Names come from certificates the
// cluster CA signed, so the set is the cluster's nodes, not attacker input.
const maxCached = 10000

// NodeAddresses implements NodeAddresses with the addresses in the Node's
// status (InternalIP, ExternalIP and any other type that holds an IP).
func (k *KubeNodes) NodeAddresses(ctx context.Context, name string) ([]netip.Addr, bool, error) {
	now := time.Now
	if k.now != nil {
		now = k.now
	}
	ttl := k.TTL
	if ttl <= 0 {
		ttl = 30 * time.Second
	}
	k.mu.Lock()
	if e, ok := k.cache[name]; ok && now().Sub(e.at) < ttl {
		k.mu.Unlock()
		return e.addrs, e.found, nil
	}
	k.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	e := nodeEntry{at: now()}
	node, err := k.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, false, fmt.Errorf("get node %s (the server's ServiceAccount needs get on nodes): %w", name, err)
	default:
		e.found = true
		for _, a := range node.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				e.addrs = append(e.addrs, ip.Unmap())
			}
		}
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cache == nil || len(k.cache) >= maxCached {
		k.prune(now(), ttl)
	}
	k.cache[name] = e
	return e.addrs, e.found, nil
}

// prune drops expired entries, or everything if none expired.
func (k *KubeNodes) prune(now time.Time, ttl time.Duration) {
	for n, e := range k.cache {
		if now.Sub(e.at) >= ttl {
			delete(k.cache, n)
		}
	}
	if k.cache == nil || len(k.cache) >= maxCached {
		k.cache = map[string]nodeEntry{}
	}
}
