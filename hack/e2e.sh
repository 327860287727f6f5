#!/usr/bin/env bash
# Runs the control-plane end-to-end tests (e2e/controlplane): a real
# kube-apiserver and etcd, the real kubectl, edge nodes in network
# namespaces that the host cannot reach, kubectl logs/exec/attach/
# port-forward through edge-tunnel in each egress mode, and faults.
#
# Needs root (network namespaces, nftables); as another user it says so and
# exits 0. Installs iproute2, nftables and etcd-server from Debian when
# missing. kube-apiserver, kubectl, the kubelet stand-in, metrics-server and
# Prometheus are built from the modules under e2e/tools and cached by
# version in ${E2E_CACHE:-$HOME/.cache/edge-tunnel-e2e}: about 11 minutes on
# 2 cores the first time (Prometheus about 3 of them), seconds afterwards.
#
# The last line is "e2e tests: N passed, M failed" (hack/test.sh adds it to
# its own count). E2E_RUN=REGEXP runs only matching tests (go test -run).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi

if [ "$(id -u)" != 0 ]; then
  echo "e2e: skipped: the control-plane tests need root for network namespaces and nftables (CI runs them as root)"
  echo "e2e tests: 0 passed, 0 failed"
  exit 0
fi

apt_updated=""
apt_install() { # PACKAGE COMMAND
  command -v "$2" >/dev/null && return 0
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  echo "e2e: installing $1 (for $2)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}
apt_install iproute2 ip
apt_install nftables nft
apt_install etcd-server etcd

log="$(mktemp -t edge-tunnel-e2e.XXXXXX)"
status=0
start=$SECONDS
# Tools are built in TestMain (its progress lines start with "controlplane:").
E2E_CONTROLPLANE=1 go test -count=1 -timeout 40m -v -run "${E2E_RUN:-.}" ./e2e/controlplane >"$log" 2>&1 || status=$?
grep -E '^(ok|FAIL|panic:|controlplane:)|^\s*--- (FAIL|SKIP)|^--- PASS' "$log" || true
passed=$(grep -cE '^\s*--- PASS' "$log" || true)
failed=$(grep -cE '^\s*--- FAIL' "$log" || true)
if [ "$status" != 0 ]; then
  [ "$failed" != 0 ] || failed=1 # a build failure or panic counts too
  # go test -v prints each test's log as it happens, so a failure's
  # context (what failed, then the last lines of every component's log)
  # comes before its "--- FAIL" line: print the whole run.
  echo "e2e: go test failed (exit $status) after $((SECONDS - start)) s; the whole run (also in $log):" >&2
  tail -n 5000 "$log" >&2
  echo "e2e: failed tests:" >&2
  grep -E '^\s*--- FAIL|^panic:' "$log" >&2 || true
else
  echo "e2e: passed in $((SECONDS - start)) s (log: $log)"
fi
echo "e2e tests: ${passed} passed, ${failed} failed"
[ "$status" = 0 ]
