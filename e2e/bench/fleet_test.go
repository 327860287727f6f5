package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edge-tunnel/edge-tunnel/pkg/agent"
	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// fleet is many real agents (pkg/agent, the code edge-tunnel-agent runs)
// inside the benchmark process, each with its own gRPC connection, TLS
// session and agent ID, so that the server sees what many edge nodes look
// like without as many processes.
type fleet struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// connectTimes is how long each agent took from its start to holding
	// its server connection.
	connectTimes []time.Duration
}

// agentConnectionsMetric is the agent's gauge of server connections held.
const agentConnectionsMetric = "edge_tunnel_agent_server_connections"

// startFleet starts count agents against the server's agent port at addr,
// with at most concurrency of them connecting (TLS handshake and control
// stream) at a time, and returns once every one is connected, or the first
// error. Agent i is "bench-agent-i" and serves the host of that name only,
// so no dial of the benchmark is routed to it.
func startFleet(addr string, tlsCfg *tls.Config, count, concurrency int, timeout time.Duration) (*fleet, error) {
	ctx, cancel := context.WithCancel(context.Background())
	f := &fleet{cancel: cancel}
	sem := make(chan struct{}, concurrency)
	errc := make(chan error, 1)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	deadline := time.Now().Add(timeout)
	for i := range count {
		select {
		case sem <- struct{}{}:
		case err := <-errc:
			f.stop(time.Minute)
			return nil, err
		}
		name := fmt.Sprintf("bench-agent-%d", i)
		ids, err := identity.Parse("host=" + name)
		if err != nil {
			f.stop(time.Minute)
			return nil, fmt.Errorf("identifiers of %s: %w", name, err)
		}
		// A registry of its own: the agent's metrics only, without the
		// Go and process collectors a default one would add.
		reg := prometheus.NewRegistry()
		a, err := agent.New(agent.Config{
			ServerAddr:  addr,
			TLS:         tlsCfg,
			AgentID:     name,
			Identifiers: ids,
			ConnStreams: true,
			Mux:         true,
			Registry:    reg,
		})
		if err != nil {
			f.stop(time.Minute)
			return nil, fmt.Errorf("set up %s: %w", name, err)
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			_ = a.Run(ctx)
		}()
		start := time.Now()
		go func() {
			defer func() { <-sem }()
			if err := waitConnected(ctx, reg, deadline); err != nil {
				fail(fmt.Errorf("%s: %w", name, err))
				return
			}
			f.mu.Lock()
			f.connectTimes = append(f.connectTimes, time.Since(start))
			f.mu.Unlock()
		}()
	}
	for range concurrency {
		select {
		case sem <- struct{}{}:
		case err := <-errc:
			f.stop(time.Minute)
			return nil, err
		}
	}
	select {
	case err := <-errc:
		f.stop(time.Minute)
		return nil, err
	default:
	}
	return f, nil
}

// waitConnected polls an agent's registry until it holds a server
// connection.
func waitConnected(ctx context.Context, reg *prometheus.Registry, deadline time.Time) error {
	for {
		n, err := gauge(reg, agentConnectionsMetric)
		if err != nil {
			return err
		}
		if n >= 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("not connected to the server in time")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func gauge(reg *prometheus.Registry, name string) (float64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, fmt.Errorf("gather agent metrics: %w", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		var sum float64
		for _, m := range mf.GetMetric() {
			sum += m.GetGauge().GetValue()
		}
		return sum, nil
	}
	return 0, fmt.Errorf("agent metrics have no %s", name)
}

// connectQuantiles returns the median, 99th percentile and maximum of the
// agents' connect times.
func (f *fleet) connectQuantiles() (p50, p99, maxT time.Duration) {
	f.mu.Lock()
	ds := slices.Clone(f.connectTimes)
	f.mu.Unlock()
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[len(ds)*99/100], ds[len(ds)-1]
}

// stop ends every agent (each drains and closes its connection, as on
// SIGTERM) and waits up to timeout for all of them to return.
func (f *fleet) stop(timeout time.Duration) error {
	f.cancel()
	done := make(chan struct{})
	go func() {
		f.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("in-process agents still running %s after they were told to stop", timeout)
	}
}
