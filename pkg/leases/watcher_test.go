package leases

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// logBuffer collects a logger's lines for the tests that check what an
// operator is told.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (b *logBuffer) add(prefix, args string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lines = append(b.lines, prefix+" "+args)
}

// mark and since give the lines logged after a point.
func (b *logBuffer) mark() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.lines)
}

func (b *logBuffer) since(mark int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines[mark:], "\n")
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.lines, "\n")
}

func startWatcher(t *testing.T, cfg WatchConfig) (*Watcher, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Log = funcr.New(logs.add, funcr.Options{Verbosity: 2})
	w, err := NewWatcher(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return w, logs
}

// eventually waits up to 10 s for cond (the informer retries a failed
// listing after a backoff of about a second).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func countIs(w *Watcher, want int) func() bool {
	return func() bool { n, ok := w.Count(); return ok && n == want }
}

func TestWatcherCounts(t *testing.T) {
	now := time.Now()
	other := map[string]string{"app.kubernetes.io/name": "edge-tunnel-server", "app.kubernetes.io/component": "leader"}
	client := fake.NewClientset(
		lease("edge-tunnel-server-a", Labels, now, 15),
		// Renewed an hour ago by the cloud's clock: an edge clock an hour
		// ahead of the cloud's sees this. Just listed, it counts.
		lease("edge-tunnel-server-b", Labels, now.Add(-time.Hour), 15),
		// Not replica Leases.
		lease("edge-tunnel-server-leader", other, now, 15),
		lease("kube-scheduler", nil, now, 15),
	)
	w, logs := startWatcher(t, WatchConfig{Client: client})
	eventually(t, "the first count", countIs(w, 2))

	// A replica's Renewer creates its Lease: counted.
	ctx := context.Background()
	r, err := NewRenewer(newConfig(client, "c"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica c counted", countIs(w, 3))

	// A replica that stops deletes its Lease: forgotten at once.
	if err := client.CoordinationV1().Leases(DefaultNamespace).Delete(ctx, "edge-tunnel-server-b", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "replica b forgotten", countIs(w, 2))
	if !strings.Contains(logs.String(), `"msg"="Live server replicas counted from their Leases" "count"=2 "before"=3`) {
		t.Errorf("the count's change was not logged:\n%s", logs)
	}
}

func TestWatcherExpiry(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	api := client.CoordinationV1().Leases(DefaultNamespace)
	w, logs := startWatcher(t, WatchConfig{Client: client})
	eventually(t, "the first listing", func() bool { return w.informer.HasSynced() })
	if n, ok := w.Count(); ok || n != 0 {
		t.Errorf("Count with no Lease = %d, %v; want 0, false (no count from Leases: go by the servers')", n, ok)
	}

	// Two replicas with one-second Leases; only a keeps renewing.
	for _, name := range []string{"edge-tunnel-server-a", "edge-tunnel-server-b"} {
		if _, err := api.Create(ctx, lease(name, Labels, time.Now(), 1), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both counted", countIs(w, 2))
	stop := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			l, err := api.Get(ctx, "edge-tunnel-server-a", metav1.GetOptions{})
			if err != nil {
				t.Error(err)
				return
			}
			rt := metav1.NewMicroTime(time.Now())
			l.Spec.RenewTime = &rt
			if _, err := api.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	eventually(t, "b expired, a renewing", countIs(w, 1))
	time.Sleep(1500 * time.Millisecond)
	if n, _ := w.Count(); n != 1 {
		t.Errorf("Count while a renews = %d, want 1", n)
	}

	// a stops renewing too: nothing proves the watch still delivers (an
	// API outage looks the same), so a stays counted.
	close(stop)
	<-renewed
	mark := logs.mark()
	eventually(t, "the silence logged", func() bool {
		w.Count()
		return strings.Contains(logs.since(mark), "No server replica Lease renewed for longer than a lease duration; keeping the count until renewals arrive again")
	})
	mark = logs.mark()
	if n, ok := w.Count(); !ok || n != 1 {
		t.Errorf("Count with every Lease silent = %d, %v; want the last count 1, true", n, ok)
	}
	// A renewal of another replica proves a dead: counted out.
	if _, err := api.Create(ctx, lease("edge-tunnel-server-c", Labels, time.Now(), 15), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a counted out, c in", func() bool {
		n, ok := w.Count()
		return ok && n == 1 && strings.Contains(logs.since(mark), "Server replica Lease renewals arrive again")
	})

	// Every Lease deleted (every replica stopped): the last count stays.
	for _, name := range []string{"edge-tunnel-server-a", "edge-tunnel-server-b", "edge-tunnel-server-c"} {
		if err := api.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the deletions seen", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.seen) == 0
	})
	if n, ok := w.Count(); !ok || n != 1 {
		t.Errorf("Count with every Lease deleted = %d, %v; want the last count 1, true", n, ok)
	}
}

// TestWatcherOutage: while the watch is broken the count stays, however
// old the Leases seen last are; the refusal says which permission is
// missing.
func TestWatcherOutage(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset(lease("edge-tunnel-server-a", Labels, time.Now(), 1), lease("edge-tunnel-server-b", Labels, time.Now(), 1))
	var mu sync.Mutex
	broken := false
	forbidden := apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "",
		errFake("system:serviceaccount:kube-system:edge-tunnel-agent cannot list leases"))
	react := func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		if broken {
			return true, nil, forbidden
		}
		return false, nil, nil
	}
	client.PrependReactor("list", "leases", react)
	client.PrependWatchReactor("leases", func(a k8stesting.Action) (bool, watch.Interface, error) {
		mu.Lock()
		defer mu.Unlock()
		if broken {
			return true, nil, forbidden
		}
		return false, nil, nil
	})
	// The agent starts without the permission: no count from Leases, and
	// the log says which permission is missing.
	broken = true
	w, logs := startWatcher(t, WatchConfig{Client: client, RBACHint: ": see manifests/components/agent-lease-count"})
	eventually(t, "the refusal logged", func() bool {
		return strings.Contains(logs.String(), "Cannot watch the server replicas' Leases; keeping the last count; retrying")
	})
	if !strings.Contains(logs.String(), "needs list and watch on leases.coordination.k8s.io in namespace kube-system: see manifests/components/agent-lease-count") {
		t.Errorf("the refusal does not say what is missing:\n%s", logs)
	}
	if n, ok := w.Count(); ok {
		t.Errorf("Count before any listing = %d, true", n)
	}
	// Granted: the informer's retry lists them.
	mu.Lock()
	broken = false
	mu.Unlock()
	eventually(t, "the first count", countIs(w, 2))

	// The watch breaks (the fake's running watch cannot be cut, so the
	// informer's report is made here): the count stays, though both
	// Leases seen last are past their one second.
	mu.Lock()
	broken = true
	mu.Unlock()
	w.watchFailed(nil, forbidden)
	time.Sleep(1500 * time.Millisecond)
	if n, ok := w.Count(); !ok || n != 2 {
		t.Errorf("Count during the outage = %d, %v; want the last count 2, true", n, ok)
	}

	// The API is back and a replica renews: counting resumes.
	mu.Lock()
	broken = false
	mu.Unlock()
	api := client.CoordinationV1().Leases(DefaultNamespace)
	l, err := api.Get(ctx, "edge-tunnel-server-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rt := metav1.NewMicroTime(time.Now())
	l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &rt, ptr(int32(15))
	if _, err := api.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "counting again: a alone is live", countIs(w, 1))
	if !strings.Contains(logs.String(), "Watching the server replicas' Leases again") {
		t.Errorf("the recovery was not logged:\n%s", logs)
	}
}

func TestWatcherConfig(t *testing.T) {
	if _, err := NewWatcher(WatchConfig{}); err == nil || !strings.Contains(err.Error(), "no Kubernetes client") {
		t.Errorf("NewWatcher without a client = %v", err)
	}
	_, err := NewWatcher(WatchConfig{Client: fake.NewClientset(), Selector: "app in (a"})
	if err == nil || !strings.Contains(err.Error(), `label selector "app in (a"`) {
		t.Errorf("NewWatcher with a bad selector = %v", err)
	}
}

type errFake string

func (e errFake) Error() string { return string(e) }

func ptr[T any](v T) *T { return &v }
