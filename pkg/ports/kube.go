package ports

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

// Where the policy lives in a cluster.
const (
	DefaultNamespace = "kube-system"
	DefaultName      = "edge-tunnel-server-cfg"
)

// KubeSource follows one ConfigMap through the Kubernetes API: a list and a
// watch restricted to its name by a field selector, so that RBAC can grant
// get/list/watch on that one object (a Role with resourceNames) and nothing
// else in kube-system.
//
// It lists, then watches; whenever the watch ends (the API server closes
// watches after a while, or the connection drops) it lists again. A list
// of one object is cheap, and relisting avoids every resourceVersion
// corner case: the data seen is always current.
type KubeSource struct {
	Client          kubernetes.Interface
	Namespace, Name string

	// MaxBackoff caps the wait between attempts while the API cannot be
	// reached; 0 means 10 s. The first retry comes after about 0.5 s.
	MaxBackoff time.Duration
	// WatchTimeout asks the API server to end each watch after this long
	// (then the source relists), a guard against a connection that died
	// without an error; 0 means about 5 min.
	WatchTimeout time.Duration
}

// String names the source in logs and on the admin page.
func (k *KubeSource) String() string {
	return "configmap " + k.Namespace + "/" + k.Name
}

// Run calls apply with the ConfigMap's data after the first successful
// list and again after every change, until ctx ends. data is nil when the
// ConfigMap does not exist (or was deleted): the defaults apply. apply is
// not called when a relist finds the data unchanged.
//
// When the API cannot be reached, Run keeps the last data it applied,
// calls report with the error, and retries with a growing backoff. Once a
// list succeeds again it calls report(nil). Run never blocks anyone but
// itself.
func (k *KubeSource) Run(ctx context.Context, apply func(data map[string]string), report func(error)) {
	maxBackoff := k.MaxBackoff
	if maxBackoff <= 0 {
		maxBackoff = 10 * time.Second
	}
	const firstBackoff = 500 * time.Millisecond
	backoff := firstBackoff

	var last map[string]string
	applied, failing := false, false
	// use applies data when it differs from what was applied last.
	use := func(data map[string]string) {
		if applied && maps.Equal(data, last) && (data == nil) == (last == nil) {
			return
		}
		applied, last = true, data
		apply(data)
	}

	for ctx.Err() == nil {
		data, rv, err := k.get(ctx)
		if err == nil {
			if failing {
				failing = false
				report(nil)
			}
			backoff = firstBackoff
			use(data)
			err = k.watch(ctx, rv, use)
		}
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			continue // the watch ended normally: relist at once
		}
		failing = true
		report(err)
		// Jitter keeps replicas from retrying in step.
		wait := backoff/2 + rand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// listTimeout bounds one list request.
const listTimeout = 10 * time.Second

func (k *KubeSource) selector() string {
	return fields.OneTermEqualSelector("metadata.name", k.Name).String()
}

// get lists the ConfigMap by name. It returns its data (nil when absent)
// and the list's resourceVersion to watch from.
func (k *KubeSource) get(ctx context.Context) (map[string]string, string, error) {
	// Bounded, so that an API that accepts connections but never answers
	// is reported too, not waited for in silence.
	ctx, cancel := context.WithTimeout(ctx, listTimeout)
	defer cancel()
	list, err := k.Client.CoreV1().ConfigMaps(k.Namespace).List(ctx, metav1.ListOptions{FieldSelector: k.selector()})
	if err != nil {
		return nil, "", fmt.Errorf("listing %s: %w", k, err)
	}
	for i := range list.Items {
		if list.Items[i].Name == k.Name {
			return dataOf(&list.Items[i]), list.ResourceVersion, nil
		}
	}
	return nil, list.ResourceVersion, nil
}

// watch passes every change of the ConfigMap to use until the watch ends.
// It returns nil when the API server ended the watch in the ordinary way,
// and an error when it could not be opened or reported a failure.
func (k *KubeSource) watch(ctx context.Context, rv string, use func(map[string]string)) error {
	timeout := int64(k.WatchTimeout / time.Second)
	if timeout <= 0 {
		timeout = 270 + rand.Int64N(60)
	}
	w, err := k.Client.CoreV1().ConfigMaps(k.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: k.selector(), ResourceVersion: rv, TimeoutSeconds: &timeout,
	})
	if err != nil {
		return fmt.Errorf("watching %s: %w", k, err)
	}
	defer w.Stop()
	for {
		var ev watch.Event
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case ev, ok = <-w.ResultChan():
		}
		if !ok {
			return nil
		}
		switch ev.Type {
		case watch.Added, watch.Modified, watch.Deleted:
			cm, isCM := ev.Object.(*corev1.ConfigMap)
			if !isCM || cm.Name != k.Name {
				continue // the field selector should have kept it out
			}
			if ev.Type == watch.Deleted {
				use(nil)
			} else {
				use(dataOf(cm))
			}
		case watch.Error:
			// Typically 410 Gone: the resourceVersion is too old. Relist.
			st, _ := ev.Object.(*metav1.Status)
			if st != nil && st.Code == 410 {
				return nil
			}
			return fmt.Errorf("watching %s: %s", k, statusText(st))
		}
	}
}

// dataOf copies a ConfigMap's data; the copy is never nil, so that an
// existing but empty ConfigMap is logged as such rather than as absent
// (the policy is the same). binaryData is ignored: ports are text.
func dataOf(cm *corev1.ConfigMap) map[string]string {
	data := make(map[string]string, len(cm.Data))
	maps.Copy(data, cm.Data)
	return data
}

func statusText(st *metav1.Status) string {
	if st == nil {
		return "the API server sent an error event"
	}
	return fmt.Sprintf("%s (code %d)", st.Message, st.Code)
}

// ParseRef reads "namespace/name" as given to --ports-configmap.
func ParseRef(ref string) (namespace, name string, err error) {
	ns, n, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || n == "" || strings.Contains(n, "/") {
		return "", "", errors.New("want NAMESPACE/NAME, such as kube-system/edge-tunnel-server-cfg")
	}
	return ns, n, nil
}
