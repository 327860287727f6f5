package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/health"
	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
)

// portsSource is where the port policy comes from: ports.FileSource
// (--ports-config) or ports.KubeSource (the ConfigMap through the API).
type portsSource interface {
	Run(ctx context.Context, apply func(data map[string]string), report func(error))
	String() string
}

// portsStatus is what the admin page and the readiness detail show beside
// the policy itself. The policy lives in the router, read lock-free by
// every dial; this is only read by people.
type portsStatus struct {
	mu       sync.Mutex
	applied  time.Time // when the policy in effect was applied
	warnings []string  // of the policy in effect
	err      error     // of the last read; nil when it succeeded
	lastErr  string    // the last read error ever, kept after recovery
	errAt    time.Time // when lastErr was first seen
	logged   string    // last error text logged, so a retry loop logs once
}

// portsSource returns the configured source, or nil.
func (s *Server) portsSource() portsSource {
	switch {
	case s.cfg.PortsKube != nil:
		return s.cfg.PortsKube
	case s.cfg.PortsFile != "":
		return &ports.FileSource{Path: s.cfg.PortsFile}
	}
	return nil
}

// watchPorts keeps the port policy in step with src until ctx ends.
func (s *Server) watchPorts(ctx context.Context, src portsSource) {
	s.log.Info("Following the port configuration", "source", src.String())
	src.Run(ctx, func(data map[string]string) { s.applyPorts(data, src.String()) }, s.reportPorts)
}

// applyPorts makes data (a ConfigMap's data; nil when there is none) the
// port policy for new dials. Connections already open are not affected.
// Each warning is logged and counted once, when it first appears, not
// again for every change that keeps it.
func (s *Server) applyPorts(data map[string]string, source string) {
	var cfg *ports.Config
	var warns []ports.Warning
	if data == nil {
		cfg = ports.Default()
		cfg.Source = source + " (absent: defaults)"
	} else {
		cfg, warns = ports.Parse(data)
		cfg.Source = source
	}
	cfg.Generation = s.router.Ports().Generation + 1
	s.router.SetPorts(cfg)
	s.m.PortsGeneration.Set(float64(cfg.Generation))

	texts := make([]string, len(warns))
	for i, w := range warns {
		texts[i] = w.String()
	}
	st := &s.portsStatus
	st.mu.Lock()
	prev := st.warnings
	st.warnings, st.applied = texts, time.Now()
	st.mu.Unlock()
	for _, w := range texts {
		if !slices.Contains(prev, w) {
			s.m.PortsWarnings.Inc()
			s.log.Info("Port configuration item not applied", "warning", w)
		}
	}
	s.log.Info("Port configuration changed", "config", cfg.String())
}

// reportPorts records the outcome of a read of the source: err nil means
// it succeeded again after a failure. A failure keeps the policy in
// effect; it is logged once per distinct error, shown by the ports-config
// readiness detail and /ports, and counted by the source_up metric.
func (s *Server) reportPorts(err error) {
	st := &s.portsStatus
	st.mu.Lock()
	defer st.mu.Unlock()
	gen := s.router.Ports().Generation
	if err == nil {
		s.m.PortsSourceUp.Set(1)
		if st.err != nil {
			s.log.Info("The port configuration can be read again", "generation", gen)
		}
		st.err, st.logged = nil, ""
		return
	}
	s.m.PortsSourceUp.Set(0)
	if st.err == nil {
		st.errAt = time.Now()
	}
	st.err, st.lastErr = err, err.Error()
	if st.logged != err.Error() {
		st.logged = err.Error()
		s.log.Error(err, "Reading the port configuration failed; keeping the policy in effect and retrying", "generation", gen)
	}
}

// portsCheck is the ports-config readiness detail: informational, since a
// replica with the last good policy serves as well as before, and taking
// every replica out of service because the API is down would turn an API
// outage into an edge outage.
func (s *Server) portsCheck() health.Check {
	return health.Check{Name: "ports-config", Informational: true, Fn: func(*http.Request) error {
		st := &s.portsStatus
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.err == nil {
			return nil
		}
		pc := s.router.Ports()
		return fmt.Errorf("the port configuration cannot be read since %s (%v); still using generation %d from %s",
			st.errAt.UTC().Format(time.RFC3339), st.err, pc.Generation, pc.Source)
	}}
}

// PortsView is the JSON the admin endpoint /ports prints.
type PortsView struct {
	Generation int64     `json:"generation"`
	Source     string    `json:"source"`
	Applied    time.Time `json:"applied"`
	Always     []int     `json:"always"`
	HTTP       []int     `json:"http"`
	HTTPS      []int     `json:"https"`
	Localhost  []int     `json:"localhost"`
	Warnings   []string  `json:"warnings"`
	// SourceUp is false while the source cannot be read (the policy shown
	// is the last good one).
	SourceUp bool `json:"sourceUp"`
	// LastError is the last read error, kept after recovery, and when it
	// began.
	LastError     string     `json:"lastError,omitempty"`
	LastErrorTime *time.Time `json:"lastErrorTime,omitempty"`
}

// portsView snapshots the policy in effect and its status.
func (s *Server) portsView() PortsView {
	st := &s.portsStatus
	st.mu.Lock()
	defer st.mu.Unlock()
	pc := s.router.Ports()
	v := PortsView{
		Generation: pc.Generation, Source: pc.Source, Applied: st.applied,
		Always: []int{ports.KubeletPort, ports.KubeletReadOnlyPort},
		HTTP:   pc.HTTP(), HTTPS: pc.HTTPS(), Localhost: pc.Localhost(),
		Warnings: append([]string{}, st.warnings...), SourceUp: st.err == nil, LastError: st.lastErr,
	}
	if st.lastErr != "" {
		t := st.errAt
		v.LastErrorTime = &t
	}
	return v
}

// adminHandler is pprof (health.AdminHandler) plus GET /ports.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", health.AdminHandler())
	mux.HandleFunc("GET /ports", func(w http.ResponseWriter, _ *http.Request) {
		b, err := json.MarshalIndent(s.portsView(), "", "  ")
		if err != nil { // cannot happen with these types; say so rather than print half
			http.Error(w, fmt.Sprintf("encoding the port configuration: %v", err), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(append(b, '\n'))
	})
	return mux
}

// errTwoPortSources is returned by New when both sources are configured.
var errTwoPortSources = errors.New("two sources for the port policy: a file (--ports-config) and the ConfigMap watch (--kubeconfig / --ports-configmap); choose one")
