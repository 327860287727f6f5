// Package leases tells server replicas about each other through
// coordination.k8s.io/v1 Leases, so that the number of replicas an agent
// should connect to follows the Deployment's scale without a restart.
//
// Every replica renews one Lease of its own (Renewer) and counts the Leases
// of all replicas that are still live (Counter). The server announces that
// count to agents in its handshake, so agents need no API access of their
// own, which edge nodes usually lack. An agent that has it may count the
// Leases itself instead (Watcher, edge-tunnel-agent --count-server-leases).
//
// A replica that stops gracefully deletes its Lease, so the others count it
// out at their next look; one that dies stops renewing, and its Lease stops
// counting once renewTime + leaseDurationSeconds has passed. Expired Leases
// are deleted by the counters, so crashed pods leave nothing behind.
package leases

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// Defaults of Config.
const (
	DefaultNamespace     = "kube-system"
	DefaultDuration      = 15 * time.Second
	DefaultRenewInterval = 5 * time.Second
)

// Labels are on every replica's Lease; the counter lists the Leases that
// carry all of them. The component label keeps other Leases an
// edge-tunnel-server might hold one day (leader election, say) out of the
// count.
var Labels = map[string]string{
	"app.kubernetes.io/name":      "edge-tunnel-server",
	"app.kubernetes.io/component": "replica-lease",
}

// Selector is Labels as a label selector string.
func Selector() string { return labels.SelectorFromSet(Labels).String() }

// Config is shared by Renewer and Counter.
type Config struct {
	// Client reaches the Kubernetes API.
	Client kubernetes.Interface
	// Namespace holds the Leases (default kube-system).
	Namespace string
	// Holder is this replica's server ID: the Lease's holderIdentity, and
	// what its name is derived from (see Name).
	Holder string
	// Duration is the Lease's leaseDurationSeconds: how long after its
	// last renewal a replica still counts (default 15 s, whole seconds).
	Duration time.Duration
	// RenewInterval is how often the Lease is renewed and the Leases
	// counted (default 5 s). Keep it well below Duration, so that a renewal
	// or two may fail without the replica dropping out of the count.
	RenewInterval time.Duration
	// Log receives the API errors; the zero value means klog's default.
	Log klog.Logger
}

// withDefaults fills in the defaults and checks what is left.
func (c Config) withDefaults() (Config, error) {
	if c.Client == nil {
		return c, errors.New("leases: no Kubernetes client")
	}
	if c.Holder == "" {
		return c, errors.New("leases: the holder (server ID) is empty")
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	if c.Duration <= 0 {
		c.Duration = DefaultDuration
	}
	if c.RenewInterval <= 0 {
		c.RenewInterval = DefaultRenewInterval
	}
	if c.Duration < time.Second {
		return c, fmt.Errorf("leases: duration %v is under a second; Leases count in whole seconds", c.Duration)
	}
	if c.RenewInterval >= c.Duration {
		return c, fmt.Errorf("leases: renew interval %v must be shorter than the lease duration %v, or the Lease expires between renewals", c.RenewInterval, c.Duration)
	}
	if c.Log.GetSink() == nil {
		c.Log = klog.Background().WithName("leases")
	}
	return c, nil
}

// namePrefix starts every replica's Lease name.
const namePrefix = "edge-tunnel-server-"

// Name is the Lease name of the replica with server ID id:
// "edge-tunnel-server-" + id, or id alone when it already starts with
// "edge-tunnel-server-" (a pod name of the Deployment). An ID that is not
// a valid object name (upper case, underscores, too long) is cleaned up and
// gets a hash of the original, so that two IDs never share a Lease.
func Name(id string) string {
	name := id
	if !strings.HasPrefix(name, namePrefix) {
		name = namePrefix + name
	}
	clean := sanitize(name)
	if clean == name && len(name) <= maxNameLen {
		return name
	}
	sum := sha256.Sum256([]byte(id))
	suffix := "-" + hex.EncodeToString(sum[:])[:10]
	if len(clean) > maxNameLen-len(suffix) {
		clean = strings.TrimRight(clean[:maxNameLen-len(suffix)], "-.")
	}
	return clean + suffix
}

// maxNameLen keeps names well inside the 253 characters of a DNS subdomain.
const maxNameLen = 200

// sanitize lowercases s and turns everything but [a-z0-9.-] into '-', then
// trims what may not end a name.
func sanitize(s string) string {
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '.' {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b), "-.")
}
