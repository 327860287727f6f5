package main

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/edge-tunnel/edge-tunnel/e2e/harness"
)

// reading is one process's state at one sample.
type reading struct {
	rss        float64 // bytes, process_resident_memory_bytes
	goroutines float64 // go_goroutines
}

var metricsClient = &http.Client{Timeout: 5 * time.Second}

// read fetches healthURL/metrics once and takes the RSS and goroutine count
// from it (both processes register the Go and process collectors).
func read(healthURL string) (reading, error) {
	resp, err := metricsClient.Get(healthURL + "/metrics")
	if err != nil {
		return reading{}, fmt.Errorf("read metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return reading{}, fmt.Errorf("read metrics: GET %s/metrics: %s", healthURL, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return reading{}, fmt.Errorf("read metrics: %w", err)
	}
	var r reading
	if r.rss, err = harness.MetricFromText(string(body), "process_resident_memory_bytes"); err != nil {
		return reading{}, err
	}
	if r.goroutines, err = harness.MetricFromText(string(body), "go_goroutines"); err != nil {
		return reading{}, err
	}
	return r, nil
}

// Memory growth rule. A process's memory "keeps growing" when, over the
// RSS samples taken at every interval of the run (the first sample one
// interval after the load starts):
//
//   - the last sample is more than growthFactor times the sample at the end
//     of the first third of the run, and more than growthFloor above it
//     (so that a small process's first buffers are not a leak), and
//   - every sample of the last third is at least the one before it: RSS
//     still rising when the run ends, not a plateau reached late.
//
// The first third is warm-up: buffers, pools and the heap's GC target
// settle there. Fewer than minSamples samples give no verdict.
const (
	growthFactor = 1.5
	growthFloor  = 16 << 20
	minSamples   = 3
)

// keepsGrowing applies the rule to rss, one sample per interval, and says
// why in words for the summary.
func keepsGrowing(rss []float64) (bool, string) {
	n := len(rss)
	if n < minSamples {
		return false, fmt.Sprintf("no verdict: %d samples, the rule needs %d (run longer or shorten -interval)", n, minSamples)
	}
	third := n / 3
	ref, last := rss[third-1], rss[n-third:]
	final := last[len(last)-1]
	rising := true
	for i := 1; i < len(last); i++ {
		if last[i] < last[i-1] {
			rising = false
		}
	}
	summary := fmt.Sprintf("RSS %s at the end of the first third, %s at the end", mib(ref), mib(final))
	grew := final > growthFactor*ref && final-ref > growthFloor
	switch {
	case grew && rising:
		return true, summary + fmt.Sprintf(": more than %.1fx and rising through the last third", growthFactor)
	case grew:
		return false, summary + ": grew, but not steadily through the last third"
	}
	return false, summary
}

func mib(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
