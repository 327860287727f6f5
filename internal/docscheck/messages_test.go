package docscheck

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// messageDirs are the packages whose messages reach users: kubectl (dial
// errors through DIAL_RSP and CONNECT answers), agents (gRPC statuses),
// HTTP proxy clients, and operators (flag validation, start-up errors,
// warnings, the port policy's warnings, logged errors).
var messageDirs = []string{
	"pkg/router", "pkg/server", "pkg/frontend", "pkg/httpproxy", "pkg/egress",
	"pkg/agent", "pkg/ports", "pkg/tlsutil", "pkg/identity", "pkg/certgen", "pkg/pki", "pkg/agentauth", "pkg/leases", "internal/cli",
	"cmd/edge-tunnel-server/app", "cmd/edge-tunnel-server/app/options",
	"cmd/edge-tunnel-agent/app", "cmd/edge-tunnel-agent/app/options",
	"cmd/edge-tunnel-proxy/app", "cmd/edge-tunnel-proxy/app/options",
}

// message is a user-facing message template found in the code.
type message struct {
	pos    string // file:line
	format string // the format string as written
	key    string // the part docs/troubleshooting.md must quote
}

// messageCalls are the functions whose string argument is a message:
// fmt.Errorf, tunnel.Errorf, status.Errorf, errors.New; the options'
// validation helper add and warnings appended to ws; the HTTP proxy's
// refuse, the frontends' WriteStatus and fail, the agent's dialResponse;
// the port parser's warn; a logger's Error; and fmt.Sprintf, which builds
// the messages of error types (agentauth's refusals) and of the proxy.
var messageCalls = map[string]bool{
	"Errorf": true, "New": true, "add": true, "refuse": true, "WriteStatus": true,
	"fail": true, "dialResponse": true, "warn": true, "Error": true, "append": true, "Sprintf": true,
}

// verb matches a fmt verb, which the key never spans.
var verb = regexp.MustCompile(`%[-+# 0]*[0-9.*]*[a-zA-Z%]`)

// componentOnly is a fragment that names a component and nothing else.
var componentOnly = regexp.MustCompile(`^(edge-tunnel-(server|agent|proxy)|egress|httpproxy|tls|server tls|client tls)$`)

// minKey is the shortest key worth checking: shorter fragments ("file",
// "host") are the wrapping around a more specific message that is
// documented on its own.
const minKey = 10

// keyOf returns the longest literal stretch of format between verbs, trimmed
// of punctuation, not counting component names: the part of a message that
// identifies it and that a search of the docs finds. "" means nothing
// specific enough to check.
func keyOf(format string) string {
	best := ""
	for _, frag := range verb.Split(format, -1) {
		frag = strings.Join(strings.Fields(frag), " ")
		frag = strings.Trim(frag, ` :;,.()"'=$`)
		for _, p := range []string{"edge-tunnel-server: ", "edge-tunnel-agent: ", "edge-tunnel-proxy: ", "edge-tunnel-agent ", "egress: ", "httpproxy: "} {
			frag = strings.TrimPrefix(frag, p)
		}
		if componentOnly.MatchString(strings.ToLower(frag)) {
			continue
		}
		if len(frag) > len(best) {
			best = frag
		}
	}
	if len(best) < minKey {
		return ""
	}
	return best
}

// messages parses the non-test Go files of messageDirs and returns every
// message template with a key.
func messages(t *testing.T) []message {
	t.Helper()
	var out []message
	fset := token.NewFileSet()
	for _, dir := range messageDirs {
		files, err := filepath.Glob(filepath.Join(root, dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no Go files in %s (moved? update messageDirs): %v", dir, err)
		}
		for _, name := range files {
			if strings.HasSuffix(name, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(fset, name, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || !isMessageCall(call) {
					return true
				}
				if s, ok := messageArg(call); ok {
					if k := keyOf(s); k != "" {
						out = append(out, message{pos: relPos(fset, call.Pos()), format: s, key: k})
					}
				}
				return true
			})
		}
	}
	return out
}

func isMessageCall(call *ast.CallExpr) bool {
	var name string
	switch fun := call.Fun.(type) {
	case *ast.Ident:
		name = fun.Name
		if name == "append" {
			// Warnings are collected as ws = append(ws, "...").
			id, ok := call.Args[0].(*ast.Ident)
			return ok && id.Name == "ws"
		}
	case *ast.SelectorExpr:
		name = fun.Sel.Name
		if x, ok := fun.X.(*ast.Ident); ok && name == "New" && x.Name != "errors" {
			return false
		}
		if x, ok := fun.X.(*ast.Ident); ok && name == "Error" && x.Name == "http" {
			return true
		}
	}
	return messageCalls[name]
}

// messageArg returns the first argument that is a non-empty string literal, a
// fmt.Sprintf of one, or a literal with something appended ("..." + err).
func messageArg(call *ast.CallExpr) (string, bool) {
	for _, a := range call.Args {
		if b, ok := a.(*ast.BinaryExpr); ok && b.Op == token.ADD {
			a = b.X
		}
		switch a := a.(type) {
		case *ast.BasicLit:
			if a.Kind == token.STRING {
				s, err := strconv.Unquote(a.Value)
				if err == nil && s == "" {
					continue // an empty item or prefix before the message
				}
				return s, err == nil
			}
		case *ast.CallExpr:
			if sel, ok := a.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Sprintf" && len(a.Args) > 0 {
				if lit, ok := a.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					s, err := strconv.Unquote(lit.Value)
					return s, err == nil
				}
			}
		}
	}
	return "", false
}

func relPos(fset *token.FileSet, p token.Pos) string {
	pos := fset.Position(p)
	rel, err := filepath.Rel(root, pos.Filename)
	if err != nil {
		rel = pos.Filename
	}
	return rel + ":" + strconv.Itoa(pos.Line)
}

// normalize makes the comparison blind to case, line breaks, Markdown
// code spans and escaped pipes, so that reflowing the page never fails it.
func normalize(s string) string {
	s = strings.ReplaceAll(s, "`", "")
	s = strings.ReplaceAll(s, `\|`, "|")
	return strings.ToLower(strings.Join(strings.Fields(s), " "))
}

// TestEveryMessageIsExplained fails when a message a user can see is not
// quoted in docs/troubleshooting.md, naming the file and line of the
// message and the words to quote.
func TestEveryMessageIsExplained(t *testing.T) {
	doc := normalize(readRepoFile(t, "docs/troubleshooting.md"))
	msgs := messages(t)
	if len(msgs) < 100 {
		t.Fatalf("only %d messages found; the extraction broke", len(msgs))
	}
	var missing []string
	for _, m := range msgs {
		if !strings.Contains(doc, normalize(m.key)) {
			missing = append(missing, m.pos+": "+strconv.Quote(m.key)+"  (message "+strconv.Quote(m.format)+")")
		}
	}
	sort.Strings(missing)
	for _, m := range missing {
		t.Errorf("docs/troubleshooting.md does not explain the message at %s", m)
	}
}

func TestKeyOf(t *testing.T) {
	for in, want := range map[string]string{
		"edge-tunnel-server: edge-tunnel-agent %s disconnected":                   "disconnected",
		"edge-tunnel-server: port %d of edge node %q is not forwarded: add %d to": "is not forwarded: add",
		"%s file %q: %w": "",
		"--ports-config and --kubeconfig both give a source": "--ports-config and --kubeconfig both give a source",
	} {
		if got := keyOf(in); got != want {
			t.Errorf("keyOf(%q) = %q, want %q", in, got, want)
		}
	}
}
