package leases

import (
	"context"
	"fmt"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Counter counts the replicas whose Lease is live.
type Counter struct {
	cfg Config

	mu     sync.Mutex
	count  int
	listed bool

	failing bool // as in Renewer: log an outage's start and end only
}

// NewCounter checks cfg and returns a Counter. Holder is not used for
// counting, but names this replica in the logs.
func NewCounter(cfg Config) (*Counter, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Counter{cfg: cfg}, nil
}

// Count returns the number of live Leases at the last successful listing,
// and false while no listing has succeeded yet. When the API cannot be
// reached the last count stays: nothing better is known, and dropping to a
// guess would make every agent change its target at once.
func (c *Counter) Count() (int, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count, c.listed
}

// Run lists the Leases every RenewInterval until ctx ends.
func (c *Counter) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.RenewInterval)
	defer t.Stop()
	for {
		err := c.Refresh(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
		case err != nil && !c.failing:
			c.failing = true
			n, _ := c.Count()
			c.cfg.Log.Error(err, "Cannot count the server replicas' Leases; agents are told the last count; retrying", "lastCount", n, "every", c.cfg.RenewInterval)
		case err != nil:
			c.cfg.Log.V(2).Info("Counting the Leases failed again", "err", err)
		case c.failing:
			c.failing = false
			n, _ := c.Count()
			c.cfg.Log.Info("Counting the Leases again", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Refresh lists the Leases once, updates the count, and deletes Leases that
// expired more than a lease duration ago (their replicas crashed or were
// killed before they could delete them).
func (c *Counter) Refresh(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RenewInterval)
	defer cancel()
	api := c.cfg.Client.CoordinationV1().Leases(c.cfg.Namespace)
	list, err := api.List(ctx, metav1.ListOptions{LabelSelector: Selector()})
	if err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("listing Leases %s in namespace %s: %w (the server's ServiceAccount needs list on leases.coordination.k8s.io there: see manifests/base/server/rbac.yaml)", Selector(), c.cfg.Namespace, err)
		}
		return fmt.Errorf("listing Leases %s in namespace %s: %w", Selector(), c.cfg.Namespace, err)
	}
	now := time.Now()
	n := Live(list.Items, now, c.cfg.Duration)
	c.mu.Lock()
	old, listed := c.count, c.listed
	c.count, c.listed = n, true
	c.mu.Unlock()
	if !listed || old != n {
		c.cfg.Log.Info("Live server replicas counted from their Leases", "count", n, "before", old)
	}
	for i := range list.Items {
		l := &list.Items[i]
		if now.After(expiry(l, c.cfg.Duration).Add(leaseDuration(l, c.cfg.Duration))) {
			c.collect(ctx, l)
		}
	}
	return nil
}

// collect deletes an expired Lease unless it changed since it was listed
// (its replica came back and renewed it).
func (c *Counter) collect(ctx context.Context, l *coordinationv1.Lease) {
	rv := l.ResourceVersion
	err := c.cfg.Client.CoordinationV1().Leases(l.Namespace).Delete(ctx, l.Name,
		metav1.DeleteOptions{Preconditions: &metav1.Preconditions{ResourceVersion: &rv}})
	switch {
	case err == nil:
		c.cfg.Log.Info("Deleted the expired Lease of a replica that is gone", "lease", l.Namespace+"/"+l.Name, "holder", holder(l))
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
	default:
		c.cfg.Log.V(2).Info("Could not delete an expired Lease", "lease", l.Namespace+"/"+l.Name, "err", err)
	}
}

// Live counts the Leases that have not expired at now: renewTime (else
// acquireTime, else creation) plus leaseDurationSeconds (else def) is
// after now.
func Live(items []coordinationv1.Lease, now time.Time, def time.Duration) int {
	n := 0
	for i := range items {
		if expiry(&items[i], def).After(now) {
			n++
		}
	}
	return n
}

func expiry(l *coordinationv1.Lease, def time.Duration) time.Time {
	var last time.Time
	switch {
	case l.Spec.RenewTime != nil:
		last = l.Spec.RenewTime.Time
	case l.Spec.AcquireTime != nil:
		last = l.Spec.AcquireTime.Time
	default:
		last = l.CreationTimestamp.Time
	}
	return last.Add(leaseDuration(l, def))
}

func leaseDuration(l *coordinationv1.Lease, def time.Duration) time.Duration {
	if l.Spec.LeaseDurationSeconds != nil && *l.Spec.LeaseDurationSeconds > 0 {
		return time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	return def
}

func holder(l *coordinationv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}
