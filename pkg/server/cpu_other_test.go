//go:build !unix

package server_test

import "time"

// processCPU is not measured here; the benchmarks then omit cpu-ms/MiB.
func processCPU() time.Duration { return 0 }
