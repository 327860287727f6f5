// Command bench runs the tunnel benchmarks of pkg/server and prints figures
// that compare across machines: each tunnel path as a ratio of direct TCP
// measured in the same run, and a download beside a stalled reader as a
// ratio of the same download alone.
//
//	go run ./hack/bench [-count 3] [-benchtime 5x]
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

func main() {
	count := flag.Int("count", 3, "runs of each benchmark; the median is reported")
	benchtime := flag.String("benchtime", "5x", "go test -benchtime")
	flag.Parse()

	args := []string{"test", "-run", "^$", "-bench", "^Benchmark(Download|Upload|Dial|StalledReader)$",
		"-benchmem", "-count", strconv.Itoa(*count), "-benchtime", *benchtime, "./pkg/server/"}
	fmt.Fprintf(os.Stderr, "==> go %s\n", strings.Join(args, " "))
	cmd := exec.Command("go", args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = nil // the benchmarks' logs are not the point here
	if err := cmd.Run(); err != nil {
		os.Stdout.Write(out.Bytes())
		fmt.Fprintf(os.Stderr, "bench: go test failed: %v\n", err)
		os.Exit(1)
	}
	res := parse(out.Bytes())
	if len(res) == 0 {
		fmt.Fprintln(os.Stderr, "bench: no benchmark results in the output")
		os.Exit(1)
	}
	report(res)
}

type result struct {
	nsPerOp, mbPerS, bytesPerOp, allocsPerOp []float64
}

var line = regexp.MustCompile(`^Benchmark(\S+?)(-\d+)?\s+\d+\s+(.*)$`)

func parse(out []byte) map[string]*result {
	res := map[string]*result{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		r := res[m[1]]
		if r == nil {
			r = &result{}
			res[m[1]] = r
		}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			switch f[i+1] {
			case "ns/op":
				r.nsPerOp = append(r.nsPerOp, v)
			case "MB/s":
				r.mbPerS = append(r.mbPerS, v)
			case "B/op":
				r.bytesPerOp = append(r.bytesPerOp, v)
			case "allocs/op":
				r.allocsPerOp = append(r.allocsPerOp, v)
			}
		}
	}
	return res
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func report(res map[string]*result) {
	paths := []string{"direct", "grpc", "connect", "connect-mtls"}
	for _, kind := range []string{"Download", "Upload"} {
		fmt.Printf("\n%s, 64 MiB per op (median of runs)\n", kind)
		fmt.Printf("  %-14s %10s %10s %12s %10s\n", "path", "MB/s", "x direct", "allocs/op", "B/op")
		direct := median(res[kind+"/direct"].mb())
		for _, p := range paths {
			r := res[kind+"/"+p]
			if r == nil {
				continue
			}
			fmt.Printf("  %-14s %10.0f %10.3f %12.0f %10.0f\n", p, median(r.mbPerS), ratio(median(r.mbPerS), direct),
				median(r.allocsPerOp), median(r.bytesPerOp))
		}
	}
	fmt.Printf("\nNew tunnel + dial + 64-byte echo + close (median of runs)\n")
	fmt.Printf("  %-14s %10s %10s %12s\n", "path", "ms", "x direct", "allocs/op")
	direct := median(res["Dial/direct"].ns())
	for _, p := range paths {
		r := res["Dial/"+p]
		if r == nil {
			continue
		}
		fmt.Printf("  %-14s %10.3f %10.2f %12.0f\n", p, median(r.nsPerOp)/1e6, ratio(median(r.nsPerOp), direct), median(r.allocsPerOp))
	}
	fmt.Printf("\nDownload beside a stalled reader on the same agent (goal: >= 0.90 of alone)\n")
	fmt.Printf("  %-14s %10s %10s %10s\n", "frontend", "alone", "beside", "ratio")
	for _, fe := range []string{"grpc", "connect"} {
		alone, beside := res["StalledReader/"+fe+"/alone"], res["StalledReader/"+fe+"/beside-stalled"]
		if alone == nil || beside == nil {
			continue
		}
		a, b := median(alone.mbPerS), median(beside.mbPerS)
		fmt.Printf("  %-14s %10.0f %10.0f %10.2f\n", fe, a, b, ratio(b, a))
	}
}

func (r *result) mb() []float64 {
	if r == nil {
		return nil
	}
	return r.mbPerS
}

func (r *result) ns() []float64 {
	if r == nil {
		return nil
	}
	return r.nsPerOp
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
