package leases

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"
)

// WatchConfig configures a Watcher.
type WatchConfig struct {
	// Client reaches the Kubernetes API; it needs list and watch on
	// leases in Namespace, nothing else.
	Client kubernetes.Interface
	// Namespace holds the replicas' Leases (default kube-system).
	Namespace string
	// Selector picks the replica Leases (default Selector()).
	Selector string
	// Duration stands in for a Lease's missing leaseDurationSeconds
	// (default 15 s).
	Duration time.Duration
	// Log receives the count's changes and the API errors; the zero value
	// means klog's default.
	Log klog.Logger
	// RBACHint says where the permissions come from, for the error when
	// the API refuses the watch.
	RBACHint string
}

// Watcher counts the server replicas' live Leases for an agent that
// counts them itself (edge-tunnel-agent --count-server-leases). It never
// writes, so it needs only list and watch.
//
// It watches rather than lists: one list and then a stream of changes, so
// a fleet of agents costs the API server a watch each, not a list every
// few seconds each.
//
// Liveness is judged by when this process saw a Lease change, not by the
// renewTime written in it: edge nodes' clocks drift from the cloud's, and a
// skew larger than the lease duration would otherwise count every replica
// dead (agent clock ahead) or keep dead ones alive (behind). A Lease is
// live for its leaseDurationSeconds after its last observed change; one in
// the first listing counts as just seen.
//
// A Lease past that time is counted out only once another Lease's renewal
// has arrived after it: proof that the watch still delivers, so the
// silence is the replica's. A watch cut off from the API (client-go
// re-watches quietly, reporting nothing) looks like every replica going
// silent at once; then nothing is proven, and the count stays.
type Watcher struct {
	cfg      WatchConfig
	informer cache.SharedIndexInformer

	mu        sync.Mutex
	seen      map[string]sighting // by Lease name
	lastEvent time.Time           // the newest renewal or deletion seen
	count     int                 // the last count handed out; 0 before any
	failing   error               // listing fails: the count stays
	quiet     bool                // the silence was logged
}

// sighting is when a Lease was last seen to change.
type sighting struct {
	version string
	at      time.Time
	ttl     time.Duration
}

// NewWatcher checks cfg and returns a Watcher; Run starts it.
func NewWatcher(cfg WatchConfig) (*Watcher, error) {
	if cfg.Client == nil {
		return nil, errors.New("leases: no Kubernetes client")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = DefaultNamespace
	}
	if cfg.Selector == "" {
		cfg.Selector = Selector()
	}
	if _, err := labels.Parse(cfg.Selector); err != nil {
		return nil, fmt.Errorf("leases: label selector %q: %w", cfg.Selector, err)
	}
	if cfg.Duration <= 0 {
		cfg.Duration = DefaultDuration
	}
	if cfg.Log.GetSink() == nil {
		cfg.Log = klog.Background().WithName("leases")
	}
	w := &Watcher{cfg: cfg, seen: map[string]sighting{}}
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithNamespace(cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = cfg.Selector }))
	w.informer = factory.Coordination().V1().Leases().Informer()
	if _, err := w.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.saw(obj) },
		UpdateFunc: func(_, obj any) { w.saw(obj) },
		DeleteFunc: w.gone,
	}); err != nil {
		return nil, fmt.Errorf("leases: watching: %w", err)
	}
	if err := w.informer.SetWatchErrorHandler(w.watchFailed); err != nil {
		return nil, fmt.Errorf("leases: watching: %w", err)
	}
	return w, nil
}

// Run watches until ctx ends.
func (w *Watcher) Run(ctx context.Context) { w.informer.RunWithContext(ctx) }

// Count returns the number of live replica Leases, and false until the
// first listing is in or while no Lease has ever been live (servers
// without --enable-lease-controller): the caller then has no count from
// Leases and goes by the servers' own.
//
// While listing fails, while no renewal proves a silent Lease dead (see
// Watcher), and when every Lease has been deleted, the last count stays:
// agents keep holding every replica they knew of rather than all lowering
// their target on one API outage.
func (w *Watcher) Count() (int, bool) {
	if !w.informer.HasSynced() {
		return 0, false
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failing != nil {
		return w.count, w.count > 0
	}
	n, silent := 0, false
	for _, s := range w.seen {
		expiry := s.at.Add(s.ttl)
		switch {
		case now.Before(expiry):
			n++
		case !w.lastEvent.After(expiry):
			// Silent, but so is every other Lease since: not proven
			// dead. Usually another replica's renewal is only a moment
			// away; a whole lease duration of silence is worth a line.
			n++
			silent = silent || now.Sub(w.lastEvent) > s.ttl
		}
	}
	switch {
	case silent && !w.quiet:
		w.quiet = true
		w.cfg.Log.Info("No server replica Lease renewed for longer than a lease duration; keeping the count until renewals arrive again (kube-apiserver out of reach, or every replica gone)",
			"count", n, "lastRenewal", w.lastEvent.Format(time.RFC3339), "namespace", w.cfg.Namespace)
	case !silent && w.quiet:
		w.quiet = false
		w.cfg.Log.Info("Server replica Lease renewals arrive again")
	}
	switch {
	case n == 0 && w.count > 0:
		// Every Lease was deleted: the replicas stopped, or someone
		// removed the Leases. The agent holds what it holds.
	case n != w.count:
		w.cfg.Log.Info("Live server replicas counted from their Leases", "count", n, "before", w.count)
		w.count = n
	}
	return w.count, w.count > 0
}

// saw records a listed, added or changed Lease. A relist after a broken
// watch replays every Lease unchanged; only a new resourceVersion or
// renewTime is a renewal.
func (w *Watcher) saw(obj any) {
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recovered()
	version := l.ResourceVersion
	if rt := l.Spec.RenewTime; rt != nil {
		version += "/" + rt.UTC().Format(time.RFC3339Nano)
	}
	if s, ok := w.seen[l.Name]; ok && s.version == version {
		return
	}
	now := time.Now()
	w.seen[l.Name] = sighting{version: version, at: now, ttl: leaseDuration(l, w.cfg.Duration)}
	w.lastEvent = now
}

// gone forgets a deleted Lease: its replica stopped gracefully.
func (w *Watcher) gone(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	l, ok := obj.(*coordinationv1.Lease)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recovered()
	delete(w.seen, l.Name)
	w.lastEvent = time.Now()
}

// recovered ends an outage once an event arrives again; w.mu held.
func (w *Watcher) recovered() {
	if w.failing != nil {
		w.failing = nil
		w.cfg.Log.Info("Watching the server replicas' Leases again")
	}
}

// watchFailed is called by the informer each time its list or watch
// fails; it retries by itself with a backoff. The first failure of an
// outage is logged as an error, the rest at V(2).
func (w *Watcher) watchFailed(_ *cache.Reflector, err error) {
	w.mu.Lock()
	first := w.failing == nil
	w.failing = err
	count := w.count
	w.mu.Unlock()
	if apierrors.IsForbidden(err) {
		err = fmt.Errorf("%w (needs list and watch on leases.coordination.k8s.io in namespace %s%s)", err, w.cfg.Namespace, w.cfg.RBACHint)
	}
	if first {
		w.cfg.Log.Error(err, "Cannot watch the server replicas' Leases; keeping the last count; retrying",
			"namespace", w.cfg.Namespace, "selector", w.cfg.Selector, "lastCount", count)
		return
	}
	w.cfg.Log.V(2).Info("Watching the Leases failed again", "err", err)
}
