#!/usr/bin/env bash
# Regenerates proto/agent/*.pb.go reproducibly: pinned protoc plugins, built
# from the Go module proxy into .cache/bin, and the konnectivity-client proto
# taken from the exact module version go.mod selects.
set -euo pipefail
cd "$(dirname "$0")/.."

PROTOC_GEN_GO_VERSION=v1.36.11
PROTOC_GEN_GO_GRPC_VERSION=v1.6.0

if ! command -v protoc >/dev/null; then
  echo "protoc not found; installing Debian's protobuf-compiler" >&2
  apt-get update -qq && apt-get install -y -qq protobuf-compiler >/dev/null
fi

bin="$PWD/.cache/bin"
mkdir -p "$bin"
GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@${PROTOC_GEN_GO_VERSION}"
GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@${PROTOC_GEN_GO_GRPC_VERSION}"

# client.proto is imported as konnectivity-client/proto/client/client.proto,
# the name under which konnectivity-client registers it.
inc=$(mktemp -d)
trap 'rm -rf "$inc"' EXIT
ln -s "$(go list -m -f '{{.Dir}}' sigs.k8s.io/apiserver-network-proxy/konnectivity-client)" "$inc/konnectivity-client"

PATH="$bin:$PATH" protoc -I "$inc" -I . \
  --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative \
  proto/agent/agent.proto
echo "generated proto/agent with protoc $(protoc --version | cut -d' ' -f2), protoc-gen-go ${PROTOC_GEN_GO_VERSION}, protoc-gen-go-grpc ${PROTOC_GEN_GO_GRPC_VERSION}"
