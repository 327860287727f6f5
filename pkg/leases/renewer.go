package leases

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// deleteTimeout bounds the deletion of the Lease at shutdown, which must not
// hold up a server that is stopping: an undeleted Lease expires anyway.
const deleteTimeout = 5 * time.Second

// Renewer keeps one replica's Lease renewed.
type Renewer struct {
	cfg  Config
	name string

	// written says this replica wrote its Lease at least once; uid is the
	// Lease's UID then, so that the deletion at shutdown spares a Lease
	// that someone else has created since.
	written bool
	uid     types.UID
	// failing says the last attempt failed, so that an API outage is
	// logged when it starts and when it ends, not every few seconds.
	failing bool
}

// NewRenewer checks cfg and returns a Renewer for Lease Name(cfg.Holder).
func NewRenewer(cfg Config) (*Renewer, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Renewer{cfg: cfg, name: Name(cfg.Holder)}, nil
}

// Name is the Lease's name.
func (r *Renewer) Name() string { return r.name }

// Run renews the Lease every RenewInterval until ctx ends, then deletes it so
// that the other replicas stop counting this one at once. An API that cannot
// be reached is logged and tried again at the next interval; Run never gives
// up while ctx lives.
func (r *Renewer) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.RenewInterval)
	defer t.Stop()
	for {
		r.renewAndLog(ctx)
		select {
		case <-ctx.Done():
			r.delete()
			return
		case <-t.C:
		}
	}
}

func (r *Renewer) renewAndLog(ctx context.Context) {
	err := r.Renew(ctx)
	switch {
	case err != nil && ctx.Err() != nil:
		// Shutting down; the Lease is deleted next.
	case err != nil && !r.failing:
		r.failing = true
		r.cfg.Log.Error(err, "Cannot renew this replica's Lease; other replicas may stop counting it, so agents may not connect to it; retrying", "lease", r.cfg.Namespace+"/"+r.name, "every", r.cfg.RenewInterval)
	case err != nil:
		r.cfg.Log.V(2).Info("Lease renewal failed again", "lease", r.cfg.Namespace+"/"+r.name, "err", err)
	case r.failing:
		r.failing = false
		r.cfg.Log.Info("Lease renewed again", "lease", r.cfg.Namespace+"/"+r.name)
	}
}

// Renew creates the Lease or renews it once. Run calls it; it is exported
// for tests and for a first renewal before serving.
func (r *Renewer) Renew(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.RenewInterval)
	defer cancel()
	api := r.cfg.Client.CoordinationV1().Leases(r.cfg.Namespace)
	now := metav1.NewMicroTime(time.Now())
	lease, err := api.Get(ctx, r.name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		lease = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: r.name, Namespace: r.cfg.Namespace}}
		r.fill(lease, now)
		created, err := api.Create(ctx, lease, metav1.CreateOptions{})
		if err != nil {
			return r.explain("creating", err)
		}
		r.written, r.uid = true, created.UID
		return nil
	}
	if err != nil {
		return r.explain("reading", err)
	}
	r.fill(lease, now)
	updated, err := api.Update(ctx, lease, metav1.UpdateOptions{})
	if err != nil {
		return r.explain("renewing", err)
	}
	r.written, r.uid = true, updated.UID
	return nil
}

// fill sets this replica's labels, holder, duration and renewal time. A
// Lease that another holder wrote last (a server ID reused) is taken over,
// counted as a transition as leader election would.
func (r *Renewer) fill(l *coordinationv1.Lease, now metav1.MicroTime) {
	if l.Labels == nil {
		l.Labels = map[string]string{}
	}
	for k, v := range Labels {
		l.Labels[k] = v
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != r.cfg.Holder {
		if l.Spec.HolderIdentity != nil {
			n := int32(1)
			if l.Spec.LeaseTransitions != nil {
				n += *l.Spec.LeaseTransitions
			}
			l.Spec.LeaseTransitions = &n
		}
		holder := r.cfg.Holder
		l.Spec.HolderIdentity = &holder
		l.Spec.AcquireTime = &now
	}
	secs := int32(r.cfg.Duration / time.Second)
	l.Spec.LeaseDurationSeconds = &secs
	l.Spec.RenewTime = &now
}

// delete removes the Lease, if it is still the one this replica wrote.
func (r *Renewer) delete() {
	if !r.written {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), deleteTimeout)
	defer cancel()
	var opts metav1.DeleteOptions
	if r.uid != "" {
		opts.Preconditions = &metav1.Preconditions{UID: &r.uid}
	}
	err := r.cfg.Client.CoordinationV1().Leases(r.cfg.Namespace).Delete(ctx, r.name, opts)
	switch {
	case err == nil:
		r.cfg.Log.Info("Deleted this replica's Lease", "lease", r.cfg.Namespace+"/"+r.name)
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
	default:
		r.cfg.Log.Error(r.explain("deleting", err), "Cannot delete this replica's Lease; it stops counting once it expires", "lease", r.cfg.Namespace+"/"+r.name, "expiresIn", r.cfg.Duration)
	}
}

// explain wraps an API error with what was being done and, for a refusal,
// the permission that is missing.
func (r *Renewer) explain(doing string, err error) error {
	if apierrors.IsForbidden(err) {
		return fmt.Errorf("%s Lease %s/%s: %w (the server's ServiceAccount needs get, create, update and delete on leases.coordination.k8s.io in namespace %s: see manifests/base/server/rbac.yaml)", doing, r.cfg.Namespace, r.name, err, r.cfg.Namespace)
	}
	return fmt.Errorf("%s Lease %s/%s: %w", doing, r.cfg.Namespace, r.name, err)
}
