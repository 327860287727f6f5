#!/usr/bin/env bash
# Runs every Go benchmark of the module once (no unit tests) and prints the
# results, then the throughput/latency program under hack/bench if one exists.
# BENCH selects benchmarks (a -bench regexp, default all), BENCHTIME sets
# -benchtime, PKGS the packages (default ./...).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
args=(-run '^$' -bench "${BENCH:-.}" -benchmem)
[ -n "${BENCHTIME:-}" ] && args+=(-benchtime "$BENCHTIME")

echo "==> go test ${args[*]} ${PKGS:-./...}"
# shellcheck disable=SC2086 # PKGS is a list of package patterns
go test "${args[@]}" ${PKGS:-./...} | tee "$out"

echo
echo "==> results"
if grep -E '^(Benchmark|pkg:)' "$out"; then :; else echo "(no benchmarks found)"; fi

if compgen -G 'hack/bench/*.go' >/dev/null; then
  echo
  echo "==> go run ./hack/bench"
  go run ./hack/bench
fi
