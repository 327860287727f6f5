package ports

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// FileSource reads the policy from the file system and re-reads it when it
// changes, for setups without API access:
//   - a directory is a mounted ConfigMap: one file per key (hidden entries,
//     such as the kubelet's ..data link, are skipped);
//   - a file holds a ConfigMap manifest (its data is used) or a flat YAML map
//     of the keys.
//
// A path that does not exist means the defaults, as a deleted ConfigMap does.
type FileSource struct {
	Path string
	// Interval between checks; 0 means 1 s, so a change applies within 2 s.
	Interval time.Duration
}

// String names the source in logs and on the admin page.
func (f *FileSource) String() string { return "file " + f.Path }

// Run calls apply with the data read at start and again after every change,
// until ctx ends. data is nil when the path does not exist. A read error
// keeps the last good data and is passed to report; report(nil) follows
// once the path can be read again.
func (f *FileSource) Run(ctx context.Context, apply func(data map[string]string), report func(error)) {
	interval := f.Interval
	if interval <= 0 {
		interval = time.Second
	}
	var last map[string]string
	first, failing := true, false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		data, err := ReadFile(f.Path)
		switch {
		case err != nil:
			failing = true
			report(err)
		case failing:
			failing = false
			report(nil)
		}
		if err == nil && (first || !maps.Equal(data, last) || (data == nil) != (last == nil)) {
			first, last = false, data
			apply(data)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// ReadFile reads the ConfigMap data at path; nil, nil if it does not exist.
func ReadFile(path string) (map[string]string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("--ports-config %s: %w", path, err)
	}
	if fi.IsDir() {
		return readDir(path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--ports-config %s: %w", path, err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("--ports-config %s: not YAML: %w", path, err)
	}
	if d, ok := doc["data"].(map[string]any); ok && doc["kind"] == "ConfigMap" {
		doc = d
	}
	data := map[string]string{}
	for k, v := range doc {
		switch v := v.(type) {
		case string:
			data[k] = v
		case float64, int, int64:
			data[k] = fmt.Sprint(v)
		case nil:
			data[k] = ""
		default:
			return nil, fmt.Errorf("--ports-config %s: key %q has a %T value; want a string such as \"9051, 9052\"", path, k, v)
		}
	}
	return data, nil
}

func readDir(dir string) (map[string]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("--ports-config %s: %w", dir, err)
	}
	data := map[string]string{}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if fi, err := os.Stat(p); err != nil || fi.IsDir() {
			continue // a dangling link or a subdirectory is not a key
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("--ports-config %s: %w", p, err)
		}
		data[e.Name()] = string(b)
	}
	return data, nil
}
