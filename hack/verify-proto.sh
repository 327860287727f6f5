#!/usr/bin/env bash
# Fails if proto/agent's generated code differs from what hack/gen-proto.sh
# produces now. It regenerates into a temporary copy of the repository, so the
# working tree is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
tar --exclude=./.git --exclude=./bin -cf - . | tar -C "$tmp" -xf -
(cd "$tmp" && hack/gen-proto.sh)
if ! diff -ru proto/agent "$tmp/proto/agent"; then
  echo "proto/agent is out of date: run 'make proto' and commit the result" >&2
  exit 1
fi
echo "proto/agent is up to date"
