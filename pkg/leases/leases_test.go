package leases

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func lease(name string, lbls map[string]string, renewed time.Time, secs int32) *coordinationv1.Lease {
	h := name
	rt := metav1.NewMicroTime(renewed)
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: DefaultNamespace, Labels: lbls},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &h, RenewTime: &rt, LeaseDurationSeconds: &secs},
	}
}

func TestLive(t *testing.T) {
	now := time.Now()
	acq := metav1.NewMicroTime(now.Add(-5 * time.Second))
	items := []coordinationv1.Lease{
		*lease("fresh", Labels, now.Add(-time.Second), 15),
		*lease("about-to-expire", Labels, now.Add(-14*time.Second), 15),
		*lease("expired", Labels, now.Add(-16*time.Second), 15),
		*lease("long-lease", Labels, now.Add(-time.Minute), 120),
		// No renewTime: acquireTime counts; no duration: the default.
		{ObjectMeta: metav1.ObjectMeta{Name: "acquired-only"}, Spec: coordinationv1.LeaseSpec{AcquireTime: &acq}},
		// Nothing at all but an old creation time: expired.
		{ObjectMeta: metav1.ObjectMeta{Name: "bare", CreationTimestamp: metav1.NewTime(now.Add(-time.Hour))}},
	}
	if got := Live(items, now, 10*time.Second); got != 4 {
		t.Errorf("Live = %d, want 4 (fresh, about-to-expire, long-lease, acquired-only)", got)
	}
	if got := Live(items, now, time.Second); got != 3 {
		t.Errorf("Live with a 1 s default = %d, want 3 (acquired-only expires under the default)", got)
	}
	if got := Live(nil, now, time.Second); got != 0 {
		t.Errorf("Live(nil) = %d", got)
	}
}

func TestName(t *testing.T) {
	for _, tc := range []struct{ id, want string }{
		{"edge-tunnel-server-5c9d7-xk2pq", "edge-tunnel-server-5c9d7-xk2pq"},
		{"server-1", "edge-tunnel-server-server-1"},
		{"3f2a9c0e-1b7d-4c55-9a65-0e7c5b1d2f10", "edge-tunnel-server-3f2a9c0e-1b7d-4c55-9a65-0e7c5b1d2f10"},
	} {
		if got := Name(tc.id); got != tc.want {
			t.Errorf("Name(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
	seen := map[string]string{}
	for _, id := range []string{"Server_1", "server-1", "server_1", "SERVER-1", "a/b", strings.Repeat("x", 300), strings.Repeat("x", 301), "edge-tunnel-server-", "-"} {
		n := Name(id)
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			t.Errorf("Name(%q) = %q, not an object name: %v", id, n, errs)
		}
		if other, dup := seen[n]; dup {
			t.Errorf("Name(%q) = Name(%q) = %q", id, other, n)
		}
		seen[n] = id
	}
}

func newConfig(client *fake.Clientset, holder string) Config {
	return Config{Client: client, Holder: holder, Duration: 15 * time.Second, RenewInterval: 5 * time.Second}
}

func TestConfigChecks(t *testing.T) {
	client := fake.NewClientset()
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Holder: "a"}, "no Kubernetes client"},
		{Config{Client: client}, "holder (server ID) is empty"},
		{Config{Client: client, Holder: "a", Duration: 5 * time.Second, RenewInterval: 5 * time.Second}, "must be shorter than the lease duration"},
		{Config{Client: client, Holder: "a", Duration: 500 * time.Millisecond, RenewInterval: time.Millisecond}, "under a second"},
	} {
		_, err := NewRenewer(tc.cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewRenewer(%+v) = %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}
	c, err := NewCounter(Config{Client: client, Holder: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.Namespace != "kube-system" || c.cfg.Duration != 15*time.Second || c.cfg.RenewInterval != 5*time.Second {
		t.Errorf("defaults: %+v", c.cfg)
	}
}

func TestRenewerCreatesRenewsAndDeletes(t *testing.T) {
	client := fake.NewClientset()
	r, err := NewRenewer(newConfig(client, "server-a"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.Renew(ctx); err != nil {
		t.Fatalf("first Renew: %v", err)
	}
	api := client.CoordinationV1().Leases("kube-system")
	l, err := api.Get(ctx, "edge-tunnel-server-server-a", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the Lease was not created: %v", err)
	}
	if holder(l) != "server-a" || *l.Spec.LeaseDurationSeconds != 15 || l.Spec.RenewTime == nil || l.Spec.AcquireTime == nil {
		t.Errorf("created Lease spec: %+v", l.Spec)
	}
	for k, v := range Labels {
		if l.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, l.Labels[k], v)
		}
	}
	first := l.Spec.RenewTime.Time

	// Another holder wrote the Lease in between (a reused server ID): it
	// is taken over and the transition counted.
	other := "server-old"
	l.Spec.HolderIdentity = &other
	if _, err := api.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	if err := r.Renew(ctx); err != nil {
		t.Fatalf("second Renew: %v", err)
	}
	l, _ = api.Get(ctx, r.Name(), metav1.GetOptions{})
	if !l.Spec.RenewTime.After(first) {
		t.Errorf("renewTime not advanced: %v then %v", first, l.Spec.RenewTime.Time)
	}
	if holder(l) != "server-a" || l.Spec.LeaseTransitions == nil || *l.Spec.LeaseTransitions != 1 {
		t.Errorf("after takeover: holder %q, transitions %v", holder(l), l.Spec.LeaseTransitions)
	}

	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { r.Run(runCtx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if _, err := api.Get(ctx, r.Name(), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after Run returned, Get = %v, want NotFound (the Lease deleted)", err)
	}
}

func TestRenewerExplainsForbidden(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("get", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "edge-tunnel-server-a", errors.New("RBAC: no"))
	})
	r, err := NewRenewer(newConfig(client, "a"))
	if err != nil {
		t.Fatal(err)
	}
	err = r.Renew(context.Background())
	if err == nil || !strings.Contains(err.Error(), "needs get, create, update and delete on leases.coordination.k8s.io in namespace kube-system") {
		t.Errorf("Renew = %v, want the missing permission named", err)
	}
}

func TestRenewerKeepsTryingWhileTheAPIIsDown(t *testing.T) {
	client := fake.NewClientset()
	down := make(chan bool, 1)
	down <- true
	client.PrependReactor("*", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		d := <-down
		down <- d
		if d {
			return true, nil, errors.New("connection refused")
		}
		return false, nil, nil
	})
	cfg := newConfig(client, "a")
	cfg.Duration, cfg.RenewInterval = 2*time.Second, 20*time.Millisecond
	r, err := NewRenewer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	time.Sleep(100 * time.Millisecond)
	<-down
	down <- false
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := client.CoordinationV1().Leases("kube-system").Get(ctx, r.Name(), metav1.GetOptions{}); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the Lease was not created once the API came back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}

func TestCounter(t *testing.T) {
	now := time.Now()
	other := map[string]string{"app.kubernetes.io/name": "edge-tunnel-server", "app.kubernetes.io/component": "leader"}
	client := fake.NewClientset(
		lease("edge-tunnel-server-a", Labels, now.Add(-time.Second), 15),
		lease("edge-tunnel-server-b", Labels, now.Add(-10*time.Second), 15),
		// Expired, but within a lease duration of expiring: not counted, kept.
		lease("edge-tunnel-server-c", Labels, now.Add(-20*time.Second), 15),
		// Expired for longer than a lease duration: not counted, deleted.
		lease("edge-tunnel-server-d", Labels, now.Add(-time.Minute), 15),
		// Live, but not a replica Lease.
		lease("edge-tunnel-server-leader", other, now, 15),
		lease("kube-scheduler", nil, now, 15),
	)
	c, err := NewCounter(newConfig(client, "a"))
	if err != nil {
		t.Fatal(err)
	}
	if n, ok := c.Count(); ok || n != 0 {
		t.Errorf("Count before any listing = %d, %v; want 0, false", n, ok)
	}
	ctx := context.Background()
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n, ok := c.Count(); !ok || n != 2 {
		t.Errorf("Count = %d, %v; want 2 (a and b), true", n, ok)
	}
	api := client.CoordinationV1().Leases("kube-system")
	if _, err := api.Get(ctx, "edge-tunnel-server-d", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the long-expired Lease d: Get = %v, want NotFound", err)
	}
	for _, keep := range []string{"edge-tunnel-server-c", "edge-tunnel-server-leader", "kube-scheduler"} {
		if _, err := api.Get(ctx, keep, metav1.GetOptions{}); err != nil {
			t.Errorf("Lease %s should be left alone: %v", keep, err)
		}
	}

	// A replica renews through its own Renewer and is counted.
	r, err := NewRenewer(newConfig(client, "e"))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Count(); n != 3 {
		t.Errorf("Count after replica e renewed = %d, want 3", n)
	}

	// The API goes away: Refresh says so and the last count stays.
	client.PrependReactor("list", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("connection refused")
	})
	err = c.Refresh(ctx)
	if err == nil || !strings.Contains(err.Error(), "listing Leases app.kubernetes.io/component=replica-lease,app.kubernetes.io/name=edge-tunnel-server in namespace kube-system") {
		t.Errorf("Refresh with the API down = %v", err)
	}
	if n, ok := c.Count(); !ok || n != 3 {
		t.Errorf("Count with the API down = %d, %v; want the last count 3, true", n, ok)
	}
}
