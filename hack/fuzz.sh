#!/usr/bin/env bash
# Runs every fuzz target of the repository (func FuzzXxx in a _test.go file)
# for FUZZTIME each, one after the other: go test -fuzz takes one package
# and one target at a time. Targets are found per package with
# go test -list '^Fuzz'. Their seed corpora (testdata/fuzz/FuzzXxx/) also
# run as ordinary tests in go test ./...; this script goes beyond them.
#
#   FUZZTIME=10s     how long each target runs (go test -fuzztime: 30s, 5000x)
#   FUZZ_PARALLEL=   fuzzing workers per target (default: GOMAXPROCS)
#   FUZZ_PKGS=       packages to fuzz (default: every package with a target)
#
# A failure leaves the failing input in the package's testdata/fuzz/FuzzXxx/
# (go test prints its path); go test -run 'FuzzXxx/NAME' ./pkg/... replays
# it. Commit it with the fix, as a regression seed.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

fuzztime="${FUZZTIME:-10s}"
parallel=()
if [ -n "${FUZZ_PARALLEL:-}" ]; then
  parallel=(-parallel "$FUZZ_PARALLEL")
fi

if [ -n "${FUZZ_PKGS:-}" ]; then
  read -r -a pkgs <<<"$FUZZ_PKGS"
else
  # Only packages whose tests declare a target need listing (listing
  # builds the test binary).
  mapfile -t pkgs < <(grep -rl --include='*_test.go' -E '^func Fuzz[A-Z0-9_]' . \
    | grep -vE '^\./(\.cache|\.git|bin)/' | xargs -n1 dirname | sort -u)
fi

# fuzz_one runs one target. Go 1.26's fuzzing coordinator can end a
# duration-bounded run with a bare "context deadline exceeded" when a busy
# worker misses the stop (golang/go#75804, fixed in Go 1.27): no input
# failed, none is written. That outcome, and only that one, runs the
# target again, up to three runs in all; any other failure, or that one
# three times, fails.
fuzz_one() {
  local pkg="$1" target="$2" out corpus="$1/testdata/fuzz/$2" before after attempt
  for attempt in 1 2 3; do
    before="$(ls "$corpus" 2>/dev/null | sort)"
    out="$(mktemp)"
    if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "${parallel[@]}" "$pkg" 2>&1 | tee "$out"; then
      rm -f "$out"
      return 0
    fi
    after="$(ls "$corpus" 2>/dev/null | sort)"
    if [ "$attempt" != 3 ] && [ "$before" = "$after" ] &&
      grep -q '^    context deadline exceeded$' "$out" && ! grep -q 'Failing input written' "$out"; then
      echo "fuzz: $target stopped with Go's fuzztime race (golang/go#75804), no failing input; running it again" >&2
      rm -f "$out"
      continue
    fi
    rm -f "$out"
    return 1
  done
  return 1
}

failed=()
count=0
start=$SECONDS
for pkg in "${pkgs[@]}"; do
  case "$pkg" in ./* | github.com/*) ;; *) pkg="./$pkg" ;; esac
  if ! targets="$(go test -list '^Fuzz' "$pkg" | grep -E '^Fuzz')"; then
    echo "no fuzz targets in $pkg (or its tests do not build)" >&2
    failed+=("$pkg (listing)")
    continue
  fi
  for target in $targets; do
    count=$((count + 1))
    echo "==> $pkg $target ($fuzztime)"
    if ! fuzz_one "$pkg" "$target"; then
      failed+=("$pkg $target")
    fi
  done
done

echo
echo "fuzzed $count targets in $((SECONDS - start))s"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzzing failed:" >&2
  printf '  %s\n' "${failed[@]}" >&2
  echo "the failing inputs are in the packages' testdata/fuzz/ directories (see the output above)" >&2
  exit 1
fi
