package tlsutil

import (
	"os"
	"sync"
	"time"
)

// reloadInterval bounds how often the files behind a config are stat'ed: at
// most once per interval, on the handshake path, so a busy server pays one
// stat per second, not one per handshake.
const reloadInterval = time.Second

// reloader holds a value loaded from files and loads it again when one of the
// files changes (modification time, size, or the file itself, as when a
// Kubernetes Secret volume swaps its ..data symlink). A failed reload keeps
// the previous value and is retried at the next check: rotation tools write
// the certificate and the key one after the other, and the pair does not
// match in between.
type reloader[T any] struct {
	files    []string
	load     func() (T, error)
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	cur     T
	stamps  []os.FileInfo
	checked time.Time
	lastErr error
}

func newReloader[T any](files []string, interval time.Duration, load func() (T, error)) (*reloader[T], error) {
	r := &reloader[T]{files: files, load: load, interval: interval, now: time.Now}
	// Stat before loading: a change that lands while loading then shows up
	// as a difference at the next check instead of being missed.
	stamps, _ := r.stat()
	v, err := load()
	if err != nil {
		return nil, err
	}
	r.cur, r.stamps, r.checked = v, stamps, r.now()
	return r, nil
}

// stat returns the FileInfo of every file; ok is false if any is missing.
func (r *reloader[T]) stat() (infos []os.FileInfo, ok bool) {
	infos = make([]os.FileInfo, len(r.files))
	for i, f := range r.files {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, false
		}
		infos[i] = fi
	}
	return infos, true
}

func (r *reloader[T]) changed(infos []os.FileInfo) bool {
	if len(infos) != len(r.stamps) {
		return true
	}
	for i, fi := range infos {
		old := r.stamps[i]
		if old == nil || !os.SameFile(old, fi) || !old.ModTime().Equal(fi.ModTime()) || old.Size() != fi.Size() {
			return true
		}
	}
	return false
}

// get returns the current value, reloading it first if the files changed
// and the last check is at least one interval old.
func (r *reloader[T]) get() T {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Sub(r.checked) < r.interval {
		return r.cur
	}
	r.checked = now
	infos, ok := r.stat()
	if !ok || !r.changed(infos) {
		// A file missing in the middle of a rotation: keep what we have.
		return r.cur
	}
	v, err := r.load()
	if err != nil {
		r.lastErr = err // stamps stay old, so the next check tries again
		return r.cur
	}
	r.cur, r.stamps, r.lastErr = v, infos, nil
	return r.cur
}

// err returns the error of the last failed reload, nil after a success.
func (r *reloader[T]) err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastErr
}
