// Package health serves the health port of the server and the agent in the
// style of Kubernetes' healthz: /healthz and /livez run the liveness checks,
// /readyz the readiness checks, /metrics exposes Prometheus metrics. Each
// check endpoint answers 200 "ok" or 500 with the failed checks; ?verbose
// lists every check, ?exclude=NAME skips one, and /readyz/NAME runs one.
package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// shutdownTimeout bounds how long Serve waits for requests in flight.
const shutdownTimeout = 5 * time.Second

// Check is one named health check. Fn returns nil when healthy; its error
// text is shown to whoever asks. Fn gets the request so it can honour its
// context.
type Check struct {
	Name string
	Fn   func(*http.Request) error
	// Informational checks report a problem without failing the endpoint:
	// their error is shown as a warning (with ?verbose, or on /ENDPOINT/NAME)
	// and the answer stays 200. For conditions worth seeing that must not
	// take the process out of service, such as a config source that cannot
	// be read while the last good config is still in use.
	Informational bool
}

// Handler serves /healthz and /livez from the live checks, /readyz from the
// ready checks, and /metrics from g when g is not nil.
func Handler(live []Check, ready []Check, g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	for _, ep := range []struct {
		name   string
		checks []Check
	}{{"healthz", live}, {"livez", live}, {"readyz", ready}} {
		mux.Handle("/"+ep.name, checksHandler(ep.name, ep.checks))
		mux.Handle("/"+ep.name+"/{check}", oneCheckHandler(ep.checks))
	}
	if g != nil && !isNilRegistry(g) {
		mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	}
	return mux
}

// isNilRegistry catches a nil *prometheus.Registry passed as a Gatherer,
// which is not == nil as an interface.
func isNilRegistry(g prometheus.Gatherer) bool {
	r, ok := g.(*prometheus.Registry)
	return ok && r == nil
}

func run(c Check, r *http.Request) error {
	if c.Fn == nil {
		return errors.New("no check function")
	}
	return c.Fn(r)
}

// checksHandler runs every check (minus ?exclude ones) and reports as
// kube-apiserver does.
func checksHandler(endpoint string, checks []Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		_, verbose := q["verbose"]
		excluded := make(map[string]bool)
		for _, name := range q["exclude"] {
			excluded[name] = true
		}
		var out bytes.Buffer
		failed := false
		for _, c := range checks {
			if excluded[c.Name] {
				delete(excluded, c.Name)
				if verbose {
					fmt.Fprintf(&out, "[+]%s excluded: ok\n", c.Name)
				}
				continue
			}
			err := run(c, r)
			switch {
			case err != nil && c.Informational:
				if verbose {
					fmt.Fprintf(&out, "[+]%s ok (warning: %v)\n", c.Name, err)
				}
			case err != nil:
				failed = true
				fmt.Fprintf(&out, "[-]%s failed: %v\n", c.Name, err)
			case verbose:
				fmt.Fprintf(&out, "[+]%s ok\n", c.Name)
			}
		}
		for name := range excluded {
			if verbose {
				fmt.Fprintf(&out, "warn: some checks cannot be excluded: no matches for %q\n", name)
			}
		}
		switch {
		case failed:
			fmt.Fprintf(&out, "%s check failed\n", endpoint)
			writeText(w, http.StatusInternalServerError, out.Bytes())
		case verbose:
			fmt.Fprintf(&out, "%s check passed\n", endpoint)
			writeText(w, http.StatusOK, out.Bytes())
		default:
			writeText(w, http.StatusOK, []byte("ok"))
		}
	})
}

// oneCheckHandler serves /ENDPOINT/NAME: the named check alone.
func oneCheckHandler(checks []Check) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("check")
		for _, c := range checks {
			if c.Name != name {
				continue
			}
			err := run(c, r)
			if err != nil && c.Informational {
				writeText(w, http.StatusOK, []byte(fmt.Sprintf("ok (warning: %v)\n", err)))
				return
			}
			if err != nil {
				writeText(w, http.StatusInternalServerError, []byte(fmt.Sprintf("[-]%s failed: %v\n", name, err)))
				return
			}
			writeText(w, http.StatusOK, []byte("ok"))
			return
		}
		http.NotFound(w, r)
	})
}

func writeText(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(body)
}

// Serve listens on addr and serves h until ctx ends, then shuts down
// gracefully, waiting at most 5 s for requests in flight. A listen error is
// returned at once; ready, if not nil, is closed once the port is bound.
// It returns nil after a clean shutdown.
func Serve(ctx context.Context, addr string, h http.Handler, ready chan<- struct{}) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health: listen on %s: %w", addr, err)
	}
	if ready != nil {
		close(ready)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("health: serve on %s: %w", addr, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
		<-errc
		return fmt.Errorf("health: shut down %s: %w", addr, err)
	}
	<-errc // http.ErrServerClosed
	return nil
}

// AdminHandler serves net/http/pprof under /debug/pprof/ on its own mux,
// for a port that should stay on localhost.
func AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
