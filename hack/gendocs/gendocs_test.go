package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReferenceUpToDate fails when a flag was added, renamed or reworded
// without regenerating docs/reference.
func TestReferenceUpToDate(t *testing.T) {
	for name, want := range renderAll() {
		p := filepath.Join("..", "..", "docs", "reference", name)
		got, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%s: %v; run `make docs`", p, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `make docs` and commit the result", p)
		}
	}
}

// TestRenderListsEveryFlag guards the generator itself: every flag the
// binary accepts appears on its page, deprecated ones included.
func TestRenderListsEveryFlag(t *testing.T) {
	for _, c := range commands {
		cmd := c.cmd()
		page := string(render(cmd, c.sections()))
		n := 0
		for _, f := range flagsOf(cmd) {
			n++
			if !strings.Contains(page, "`--"+f+"`") {
				t.Errorf("%s: flag --%s missing from the page", c.file, f)
			}
		}
		if n < 10 {
			t.Errorf("%s: only %d flags found; the generator lost the flags", c.file, n)
		}
	}
}

// TestFlagsDocNamesRealFlags checks docs/flags.md, the hand-written
// companion page: every --flag it names in a table exists in some command,
// so a rename cannot leave it describing a flag that is gone.
func TestFlagsDocNamesRealFlags(t *testing.T) {
	known := map[string]bool{}
	for _, c := range commands {
		for _, f := range flagsOf(c.cmd()) {
			known[f] = true
		}
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "flags.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(doc), "\n") {
		if !strings.HasPrefix(line, "| `--") {
			continue
		}
		first := strings.SplitN(line, "|", 3)[1]
		for _, part := range strings.Split(first, ",") {
			part = strings.Trim(strings.TrimSpace(part), "`")
			if name, ok := strings.CutPrefix(part, "--"); ok && !known[name] {
				t.Errorf("docs/flags.md names --%s, which no command has", name)
			}
		}
	}
}
