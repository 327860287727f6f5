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
    if ! go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "${parallel[@]}" "$pkg"; then
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
