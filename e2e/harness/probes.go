package harness

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

var probeClient = &http.Client{Timeout: 5 * time.Second}

// FDCount is the number of open file descriptors of process pid.
func FDCount(pid int) (int, error) {
	entries, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, fmt.Errorf("count file descriptors of pid %d: %w", pid, err)
	}
	return len(entries), nil
}

// Goroutines reads the goroutine count from adminURL's pprof endpoint,
// whose first line is "goroutine profile: total N".
func Goroutines(adminURL string) (int, error) {
	url := adminURL + "/debug/pprof/goroutine?debug=1"
	resp, err := probeClient.Get(url)
	if err != nil {
		return 0, fmt.Errorf("goroutine profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("goroutine profile: GET %s: %s", url, resp.Status)
	}
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("goroutine profile: read first line: %w", err)
	}
	const prefix = "goroutine profile: total "
	if !strings.HasPrefix(line, prefix) {
		return 0, fmt.Errorf("goroutine profile: first line %q does not start with %q", line, prefix)
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, prefix)))
	if err != nil {
		return 0, fmt.Errorf("goroutine profile: first line %q: %w", line, err)
	}
	return n, nil
}

// Metric fetches healthURL/metrics and returns the sum of every series of
// the metric called name whose label set contains all of labels (each
// written as in the exposition format, e.g. `mode="single-stream"`). A
// metric with no matching series is an error, so a renamed metric fails
// the test instead of reading as 0.
func Metric(healthURL, name string, labels ...string) (float64, error) {
	resp, err := probeClient.Get(healthURL + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("metrics: GET %s/metrics: %s", healthURL, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("metrics: read: %w", err)
	}
	return MetricFromText(string(body), name, labels...)
}

// MetricFromText is Metric on an already fetched exposition text.
func MetricFromText(text, name string, labels ...string) (float64, error) {
	var sum float64
	found := false
	for _, line := range strings.Split(text, "\n") {
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		var labelSet, value string
		switch {
		case strings.HasPrefix(rest, "{"):
			end := strings.LastIndex(rest, "}")
			if end < 0 {
				continue
			}
			labelSet, value = rest[1:end], rest[end+1:]
		case strings.HasPrefix(rest, " "):
			value = rest
		default:
			continue // a longer name with this one as prefix
		}
		if !hasAll(labelSet, labels) {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return 0, fmt.Errorf("metric %s: bad value in %q: %w", name, line, err)
		}
		sum += v
		found = true
	}
	if !found {
		return 0, fmt.Errorf("metric %s%v: %w in the exposition", name, labels, errNotFound)
	}
	return sum, nil
}

func hasAll(labelSet string, want []string) bool {
	for _, w := range want {
		if !strings.Contains(labelSet, w) {
			return false
		}
	}
	return true
}
