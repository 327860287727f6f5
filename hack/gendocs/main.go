// Command gendocs writes the command-line reference of edge-tunnel-server,
// edge-tunnel-agent and edge-tunnel-proxy (docs/reference/*.md) from the
// commands' own flags, so that the reference cannot drift from the binaries.
// Run it as `make docs` (or `go run ./hack/gendocs [-out DIR]`) from the
// repository root; its test fails when the committed pages are stale.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
)

func main() {
	out := flag.String("out", "docs/reference", "directory the pages are written to")
	flag.Parse()
	if err := write(*out); err != nil {
		fmt.Fprintf(os.Stderr, "gendocs: %v\n", err)
		os.Exit(1)
	}
}

func write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s (run from the repository root): %w", dir, err)
	}
	for name, page := range renderAll() {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, page, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
		fmt.Println("wrote", p)
	}
	return nil
}
