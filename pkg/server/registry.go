package server

import (
	"sync"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/router"
)

// registry indexes the connected agent sessions by agent ID and by every
// host key they serve. It is the router's view of the agents.
type registry struct {
	mu       sync.RWMutex
	byID     map[string][]*session
	byHost   map[string][]*session
	departed map[string]departure // host keys whose last agent left
	count    func(n int)          // reports the number of distinct agent IDs
}

type departure struct {
	agentID string
	at      time.Time
}

func newRegistry(count func(int)) *registry {
	return &registry{byID: map[string][]*session{}, byHost: map[string][]*session{},
		departed: map[string]departure{}, count: count}
}

func (r *registry) add(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byID[s.id] = append(r.byID[s.id], s)
	for _, k := range s.hostKeys {
		r.byHost[k] = append(r.byHost[k], s)
		delete(r.departed, k)
	}
	r.count(len(r.byID))
}

func (r *registry) remove(s *session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byID[s.id] = without(r.byID[s.id], s)
	if len(r.byID[s.id]) == 0 {
		delete(r.byID, s.id)
	}
	for _, k := range s.hostKeys {
		r.byHost[k] = without(r.byHost[k], s)
		if len(r.byHost[k]) == 0 {
			delete(r.byHost, k)
			r.departed[k] = departure{agentID: s.id, at: time.Now()}
		}
	}
	r.count(len(r.byID))
}

func without(list []*session, s *session) []*session {
	out := list[:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	for i := len(out); i < len(list); i++ {
		list[i] = nil
	}
	return out
}

// Lookup returns the session for a host key: the newest one that is not
// draining, else the newest draining one (a draining agent still works, it
// is only asked for new dials when nothing else can take them).
func (r *registry) Lookup(key string) (router.Backend, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	list := r.byHost[key]
	var best *session
	for i := len(list) - 1; i >= 0; i-- {
		s := list[i]
		if !s.draining.Load() {
			return s, true
		}
		if best == nil {
			best = s
		}
	}
	return best, best != nil
}

// Departed implements router.Agents. Departures are remembered until an
// agent serves the host again: the map holds at most one entry per edge
// node address or name ever seen.
func (r *registry) Departed(key string) (string, time.Time, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.departed[key]
	return d.agentID, d.at, ok
}

// session returns the session of agentID whose control stream came from
// peerAddr: a per-connection stream must ride on the same HTTP/2 connection
// as the control stream it belongs to.
func (r *registry) session(agentID, peerAddr string) *session {
	r.mu.RLock()
	defer r.mu.RUnlock()
	for _, s := range r.byID[agentID] {
		if s.peerAddr == peerAddr {
			return s
		}
	}
	return nil
}

// agentCount is the number of distinct connected agents.
func (r *registry) agentCount() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.byID)
}
