package server

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/edge-tunnel/edge-tunnel/pkg/tunnel"
)

// Dial implements frontend.Dialer: the router decides, the route dials, and
// the outcome is measured. frontend labels the metrics.
func (s *Server) Dial(ctx context.Context, frontend, address string) (io.ReadWriteCloser, error) {
	start := time.Now()
	route, err := s.router.Route(address)
	if err != nil {
		s.m.Dials.WithLabelValues(frontend, "none", resultOf(ctx, err)).Inc()
		s.log.V(2).Info("Dial refused", "frontend", frontend, "address", address, "reason", err)
		return nil, err
	}
	conn, err := route.Dial(ctx)
	kind := string(route.Kind)
	s.m.DialLatency.WithLabelValues(frontend, kind).Observe(time.Since(start).Seconds())
	s.m.Dials.WithLabelValues(frontend, kind, resultOf(ctx, err)).Inc()
	if err != nil {
		s.log.V(2).Info("Dial failed", "frontend", frontend, "address", address, "route", kind, "err", err)
		return nil, err
	}
	s.log.V(4).Info("Dial succeeded", "frontend", frontend, "address", address, "route", kind, "duration", time.Since(start))
	open := s.m.OpenConns.WithLabelValues(frontend)
	open.Inc()
	in, out := s.bytesIn, s.bytesOut
	return tunnel.Metered(conn, tunnel.Meter{
		In:     func(n int64) { in.Add(float64(n)) },
		Out:    func(n int64) { out.Add(float64(n)) },
		Closed: open.Dec,
	}), nil
}

func resultOf(ctx context.Context, err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(ctx.Err(), context.Canceled):
		return "cancelled"
	}
	switch tunnel.KindOf(err) {
	case tunnel.KindTimeout:
		return "timeout"
	case tunnel.KindNoRoute, tunnel.KindForbidden, tunnel.KindBadRequest:
		return "refused"
	default:
		return "error"
	}
}
