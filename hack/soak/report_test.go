package main

import (
	"strings"
	"testing"
)

func TestKeepsGrowing(t *testing.T) {
	const m = 1 << 20
	cases := []struct {
		name string
		rss  []float64
		want bool
		why  string
	}{
		{"too few samples", []float64{10 * m, 90 * m}, false, "no verdict"},
		{"flat", []float64{40 * m, 41 * m, 40 * m, 42 * m, 41 * m, 41 * m}, false, ""},
		{"warm-up growth then plateau", []float64{20 * m, 60 * m, 62 * m, 61 * m, 63 * m, 62 * m}, false, ""},
		{"steady leak", []float64{40 * m, 50 * m, 60 * m, 70 * m, 80 * m, 90 * m}, true, "rising"},
		{"grew, then fell back in the last third", []float64{40 * m, 40 * m, 50 * m, 90 * m, 100 * m, 95 * m}, false, "not steadily"},
		{"small process doubling is under the floor", []float64{8 * m, 8 * m, 10 * m, 12 * m, 14 * m, 16 * m}, false, ""},
		{"long run leak", []float64{50 * m, 55 * m, 58 * m, 60 * m, 65 * m, 70 * m, 75 * m, 80 * m, 85 * m, 90 * m, 95 * m, 100 * m}, true, "rising"},
		{"long run, one dip in the last third", []float64{50 * m, 55 * m, 58 * m, 60 * m, 65 * m, 70 * m, 75 * m, 80 * m, 85 * m, 84 * m, 95 * m, 100 * m}, false, "not steadily"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, why := keepsGrowing(tc.rss)
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Errorf("keepsGrowing = %v, %q; want %v and a reason containing %q", got, why, tc.want, tc.why)
			}
		})
	}
}
