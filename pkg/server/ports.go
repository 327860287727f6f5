package server

import (
	"context"

	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
)

// applyPorts makes data (a ConfigMap's data; nil when there is none) the
// port policy for new dials. Connections already open are not affected.
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
	for _, w := range warns {
		s.log.Info("Port configuration item not applied", "warning", w.String())
	}
	s.log.Info("Port configuration changed", "config", cfg.String())
}

// watchPortsFile keeps the port policy in step with --ports-config.
func (s *Server) watchPortsFile(ctx context.Context) {
	src := &ports.FileSource{Path: s.cfg.PortsFile}
	src.Run(ctx, func(data map[string]string) { s.applyPorts(data, "file "+s.cfg.PortsFile) },
		func(err error) { s.log.Error(err, "Reading the port configuration failed; keeping the last good one") })
}
