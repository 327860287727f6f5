package ports

import (
	"context"
	"errors"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// fakeAPI is client-go's fake clientset with two faults the tests can turn
// on: an API that refuses every list and watch, and a watch that ends (as
// when the connection to the API server drops).
type fakeAPI struct {
	*fake.Clientset
	down    atomic.Bool
	mu      sync.Mutex
	watches []watch.Interface
	watched chan struct{} // a receive per watch opened
}

func newFakeAPI(objs ...runtime.Object) *fakeAPI {
	f := &fakeAPI{Clientset: fake.NewClientset(objs...), watched: make(chan struct{}, 100)}
	refuse := func(k8stesting.Action) (bool, runtime.Object, error) {
		if f.down.Load() {
			return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
		}
		return false, nil, nil
	}
	f.PrependReactor("list", "configmaps", refuse)
	f.PrependWatchReactor("configmaps", func(a k8stesting.Action) (bool, watch.Interface, error) {
		if f.down.Load() {
			return true, nil, errors.New("dial tcp 127.0.0.1:6443: connect: connection refused")
		}
		w, err := f.Tracker().Watch(a.GetResource(), a.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		f.mu.Lock()
		f.watches = append(f.watches, w)
		f.mu.Unlock()
		f.watched <- struct{}{}
		return true, w, nil
	})
	return f
}

// dropWatches ends every open watch.
func (f *fakeAPI) dropWatches() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.watches {
		w.Stop()
	}
	f.watches = nil
}

// waitWatch returns once the source has a watch open, so that a change
// made afterwards reaches it (the fake does not replay missed events).
func (f *fakeAPI) waitWatch(t *testing.T) {
	t.Helper()
	select {
	case <-f.watched:
	case <-time.After(5 * time.Second):
		t.Fatal("the source opened no watch within 5 s")
	}
}

// runSource starts src and returns the channels its callbacks feed.
type event struct {
	data    map[string]string
	applied bool  // apply was called
	err     error // report was called (err may be nil: recovered)
}

func runSource(t *testing.T, src *KubeSource) <-chan event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan event, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Run(ctx,
			func(d map[string]string) { events <- event{data: d, applied: true} },
			func(err error) { events <- event{err: err} })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Run did not return within 5 s of cancel")
		}
	})
	return events
}

func next(t *testing.T, events <-chan event, what string) event {
	t.Helper()
	select {
	case ev := <-events:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s within 5 s", what)
		return event{}
	}
}

func expectApply(t *testing.T, events <-chan event, want map[string]string) {
	t.Helper()
	ev := next(t, events, "apply")
	if !ev.applied {
		t.Fatalf("got report(%v), want apply(%v)", ev.err, want)
	}
	if !maps.Equal(ev.data, want) || (ev.data == nil) != (want == nil) {
		t.Fatalf("apply(%v), want apply(%v)", ev.data, want)
	}
}

func expectQuiet(t *testing.T, events <-chan event, d time.Duration) {
	t.Helper()
	select {
	case ev := <-events:
		t.Fatalf("unexpected callback: %+v", ev)
	case <-time.After(d):
	}
}

func cm(name string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: name}, Data: data}
}

func TestKubeSourceFollowsTheConfigMap(t *testing.T) {
	api := newFakeAPI()
	src := &KubeSource{Client: api, Namespace: "kube-system", Name: DefaultName}
	events := runSource(t, src)
	ctx := context.Background()
	cms := api.CoreV1().ConfigMaps("kube-system")

	expectApply(t, events, nil) // absent at start: defaults
	api.waitWatch(t)

	v1 := map[string]string{KeyHTTP: "9051"}
	if _, err := cms.Create(ctx, cm(DefaultName, v1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectApply(t, events, v1)

	v2 := map[string]string{KeyHTTP: "9051", KeyHTTPS: "9052, 8080"}
	if _, err := cms.Update(ctx, cm(DefaultName, v2), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectApply(t, events, v2)

	// A change that leaves the data as it was (a label) applies nothing,
	// and neither does another ConfigMap in the namespace.
	same := cm(DefaultName, v2)
	same.Labels = map[string]string{"touched": "yes"}
	if _, err := cms.Update(ctx, same, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Create(ctx, cm("something-else", map[string]string{KeyHTTP: "1"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectQuiet(t, events, 200*time.Millisecond)

	if err := cms.Delete(ctx, DefaultName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expectApply(t, events, nil) // deleted: back to the defaults
}

func TestKubeSourceExistingAtStart(t *testing.T) {
	v := map[string]string{KeyDNAT: "9051=10264"}
	api := newFakeAPI(cm(DefaultName, v), cm("other", map[string]string{KeyHTTP: "1"}))
	events := runSource(t, &KubeSource{Client: api, Namespace: "kube-system", Name: DefaultName})
	expectApply(t, events, v)
	expectQuiet(t, events, 100*time.Millisecond)
}

// TestKubeSourceAPIDown: an unreachable API keeps the last good data (no
// apply, in particular no fall-back to the defaults), is reported, and is
// retried; on recovery the source reports it and picks up changes again.
func TestKubeSourceAPIDown(t *testing.T) {
	v1 := map[string]string{KeyHTTP: "9051"}
	api := newFakeAPI(cm(DefaultName, v1))
	src := &KubeSource{Client: api, Namespace: "kube-system", Name: DefaultName, MaxBackoff: 100 * time.Millisecond}
	events := runSource(t, src)
	expectApply(t, events, v1)
	api.waitWatch(t)

	api.down.Store(true)
	api.dropWatches()
	for i := 0; i < 3; i++ { // retried, each failure reported
		ev := next(t, events, "report")
		if ev.applied || ev.err == nil {
			t.Fatalf("while the API is down: %+v, want report(error)", ev)
		}
		if i == 0 {
			t.Logf("reported: %v", ev.err)
		}
	}

	// The API comes back with the same data: recovery is reported and
	// nothing is re-applied.
	api.down.Store(false)
	for {
		ev := next(t, events, "recovery")
		if ev.applied {
			t.Fatalf("unchanged data re-applied after recovery: %v", ev.data)
		}
		if ev.err == nil {
			break
		}
	}
	api.waitWatch(t)
	expectQuiet(t, events, 100*time.Millisecond)

	v2 := map[string]string{KeyHTTP: "9051,9053"}
	if _, err := api.CoreV1().ConfigMaps("kube-system").Update(context.Background(), cm(DefaultName, v2), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expectApply(t, events, v2)
}

// TestKubeSourceDownAtStart: with no API at start nothing is applied (the
// server keeps its start-up policy) until the API answers.
func TestKubeSourceDownAtStart(t *testing.T) {
	v := map[string]string{KeyHTTPS: "8443"}
	api := newFakeAPI(cm(DefaultName, v))
	api.down.Store(true)
	events := runSource(t, &KubeSource{Client: api, Namespace: "kube-system", Name: DefaultName, MaxBackoff: 50 * time.Millisecond})
	if ev := next(t, events, "report"); ev.applied || ev.err == nil {
		t.Fatalf("got %+v, want report(error)", ev)
	}
	api.down.Store(false)
	for {
		ev := next(t, events, "apply after recovery")
		if ev.applied {
			if !maps.Equal(ev.data, v) {
				t.Fatalf("apply(%v), want %v", ev.data, v)
			}
			break
		}
	}
}

// TestKubeSourceWatchError: an error event in the watch (other than 410
// Gone, which only means "relist") is reported and retried.
func TestKubeSourceWatchError(t *testing.T) {
	api := newFakeAPI()
	fw := watch.NewFake()
	var first atomic.Bool
	api.PrependWatchReactor("configmaps", func(k8stesting.Action) (bool, watch.Interface, error) {
		if first.CompareAndSwap(false, true) {
			return true, fw, nil
		}
		return false, nil, nil
	})
	events := runSource(t, &KubeSource{Client: api, Namespace: "kube-system", Name: DefaultName, MaxBackoff: 50 * time.Millisecond})
	expectApply(t, events, nil)
	fw.Error(&metav1.Status{Code: 403, Message: `configmaps "edge-tunnel-server-cfg" is forbidden`})
	ev := next(t, events, "report")
	if ev.err == nil || !strings.Contains(ev.err.Error(), "forbidden") {
		t.Fatalf("got %+v, want the watch error reported", ev)
	}
	if ev := next(t, events, "recovery"); ev.applied || ev.err != nil {
		t.Fatalf("got %+v, want report(nil) after the relist", ev)
	}
}

func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		in       string
		ns, name string
		ok       bool
	}{
		{"kube-system/edge-tunnel-server-cfg", "kube-system", "edge-tunnel-server-cfg", true},
		{"edge/cfg", "edge", "cfg", true},
		{"edge-tunnel-server-cfg", "", "", false},
		{"/cfg", "", "", false},
		{"kube-system/", "", "", false},
		{"a/b/c", "", "", false},
	} {
		ns, name, err := ParseRef(tc.in)
		if (err == nil) != tc.ok || ns != tc.ns || name != tc.name {
			t.Errorf("ParseRef(%q) = %q, %q, %v", tc.in, ns, name, err)
		}
	}
}
