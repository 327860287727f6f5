package controlplane

import "testing"

func TestPrometheusRelease(t *testing.T) {
	for in, want := range map[string]string{
		"v0.315.0":  "3.15.0",
		"v0.305.2":  "3.5.2",
		"v0.300.1":  "3.0.1",
		"v0.54.1":   "v0.54.1",   // Prometheus 2 modules have no such mapping
		"v2.53.0":   "v2.53.0",   // not a module version of Prometheus 3
		"v0.3":      "v0.3",      // too short
		"v0.3151.0": "v0.3151.0", // not two digits
	} {
		if got := prometheusRelease(in); got != want {
			t.Errorf("prometheusRelease(%q) = %q, want %q", in, got, want)
		}
	}
}
