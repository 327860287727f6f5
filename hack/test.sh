#!/usr/bin/env bash
# Runs every check CI runs, in order, and says which step failed:
# gofmt, go vet, the unit and in-process end-to-end tests (with -race), and
# the konnectivity-client compatibility module under e2e/konnclient against
# each client version it pins, and a one-minute soak (hack/soak). Installs
# missing system tools when root.
#
# VERIFY_PROTO=1 also checks that the generated protobuf code is up to date
# (needs protoc; installed from Debian when missing).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

step="setup"
trap 'echo >&2; echo "FAILED: step \"$step\" (hack/test.sh)" >&2' ERR
begin() {
  step="$1"
  echo
  echo "==> $step"
}

# apt_install PACKAGE COMMAND: install PACKAGE when COMMAND is missing.
apt_updated=""
apt_install() {
  command -v "$2" >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "warning: $2 not found and not root; install Debian package $1 for the tests that need it" >&2
    return 0
  fi
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  echo "installing $1 (for $2)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

begin "install tools"
command -v go >/dev/null || { echo "go not found (looked on PATH and in /usr/local/go/bin)" >&2; false; }
go version
apt_install iproute2 ip # network namespaces for the end-to-end tests
apt_install curl curl # a real proxy client for the HTTP proxy end-to-end tests
apt_install nftables nft # the edge firewall and the network cut in e2e/ha
apt_install haproxy haproxy # a real TCP load balancer for the high-availability tests (e2e/ha)
if [ "${VERIFY_PROTO:-0}" = 1 ]; then
  apt_install protobuf-compiler protoc
fi

begin "gofmt"
unformatted="$(find . -name '*.go' -not -path './.cache/*' -not -path './.git/*' -not -path './bin/*' -print0 | xargs -0 gofmt -l)"
if [ -n "$unformatted" ]; then
  echo "gofmt would change these files (run 'make fmt'):" >&2
  echo "$unformatted" >&2
  false
fi

begin "go vet"
go vet ./...

if [ "${VERIFY_PROTO:-0}" = 1 ]; then
  begin "verify generated protobuf code"
  hack/verify-proto.sh
fi

# The konnectivity-client module has no tests of its own: the e2e tests run
# it under both client versions. Here it must build and vet cleanly.
if [ -f e2e/konnclient/go.mod ]; then
  begin "e2e/konnclient vet (go.mod)"
  (cd e2e/konnclient && go vet ./...)
  if [ -f e2e/konnclient/go.v037.mod ]; then
    begin "e2e/konnclient vet (go.v037.mod)"
    (cd e2e/konnclient && go vet -modfile=go.v037.mod ./...)
  fi
fi

begin "go test (race detector)"
# -v output goes to a log; the console gets the package lines, any failure
# with its context, and a closing count of passed and failed tests.
log="$(mktemp)"
status=0
go test -race -count=1 -timeout 20m -v ./... >"$log" 2>&1 || status=$?
grep -E '^(ok|FAIL|---|panic:|\?)|DATA RACE' "$log" | grep -vE '^\s*--- PASS' || true
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
if [ "$status" != 0 ]; then
  echo
  echo "tests: ${passed} passed, ${failed} failed"
  echo "go test failed (exit $status); full log: $log. Failing tests with context:" >&2
  grep -nE -B2 -A30 '^\s*--- FAIL|^panic:|DATA RACE' "$log" | head -400 >&2 || tail -100 "$log" >&2
fi
[ "$status" = 0 ]

begin "benchmarks (once each, short sizes)"
# The figures come from `make bench`; this only keeps every benchmark
# building and running (16 MiB transfers, 200 connections, 200 agents).
bench_log="$(mktemp)"
bench_status=0
BENCH_IDLE_CONNS=200 BENCH_AGENTS=200 go test -short -run '^$' -bench . -benchtime 1x -timeout 10m \
  ./pkg/... ./e2e/bench/ >"$bench_log" 2>&1 || bench_status=$?
grep -E '^(Benchmark|ok|FAIL|---|panic:)' "$bench_log" || true
if [ "$bench_status" != 0 ]; then
  # The benchmarks' own messages first (a process's log may follow them,
  # with lines too long to read), then the end of the output.
  grep -E '^\s+[A-Za-z0-9_]+\.go:[0-9]+: ' "$bench_log" | cut -c1-400 | tail -40 >&2 || true
  tail -60 "$bench_log" | cut -c1-400 >&2
  false
fi

begin "soak (1 minute)"
# A server and three agents as processes under sustained mixed load
# (hack/soak); fails on an unexpected error, memory that keeps growing, or
# connections and goroutines that do not come back afterwards.
go run ./hack/soak -duration 1m -interval 10s

begin "fuzzing (make fuzz, ${FUZZTIME:-5s} per target)"
# The seed corpora already ran above; this explores beyond them for a few
# seconds per target (FUZZTIME=0 skips it). A failing input is saved under
# the package's testdata/fuzz/ and go test names it.
if [ "${FUZZTIME:-5s}" != 0 ]; then
  FUZZTIME="${FUZZTIME:-5s}" hack/fuzz.sh 2>&1 | grep -vE '^fuzz: elapsed|^[IW][0-9]{4} '
fi

begin "control-plane end-to-end tests (make e2e)"
# Real kube-apiserver, etcd and kubectl against edge nodes in network
# namespaces (hack/e2e.sh; it says why and counts nothing when not root).
# Its last line is its own count, added to the total here.
e2e_log="$(mktemp)"
e2e_status=0
hack/e2e.sh 2>&1 | tee "$e2e_log" || e2e_status=$?
e2e_counts="$(sed -n 's/^e2e tests: \([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$e2e_log" | tail -n 1)"
if [ -n "$e2e_counts" ]; then
  passed=$((passed + ${e2e_counts%% *}))
  failed=$((failed + ${e2e_counts##* }))
elif [ "$e2e_status" != 0 ]; then
  failed=$((failed + 1))
fi
if [ "$e2e_status" != 0 ]; then
  echo
  echo "tests: ${passed} passed, ${failed} failed"
fi
[ "$e2e_status" = 0 ]

echo
echo "all checks passed"
echo "tests: ${passed} passed, ${failed} failed"
