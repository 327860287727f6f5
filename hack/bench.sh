#!/usr/bin/env bash
# `make bench`: the tunnel benchmarks with ratios against direct TCP measured
# in the same run (hack/bench). COUNT and BENCHTIME tune the run.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
exec go run ./hack/bench -count "${COUNT:-5}" -benchtime "${BENCHTIME:-3x}" -dials "${DIALS:-2000}" -memory="${MEMORY:-true}"
