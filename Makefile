# edge-tunnel build and test entry points. Every target works on a fresh
# Debian machine with Go at /usr/local/go; hack/*.sh install what they need.

SHELL := /usr/bin/env bash
# Go may not be on PATH in a fresh shell (CI, sudo); fall back to the
# standard install location.
export PATH := $(PATH):/usr/local/go/bin

GO ?= go
BIN := bin

# Version stamped into the binaries through component-base's version
# package, which --version and the start-up log line print. Without a v*
# tag, the version is v0.0.0-<commit>.
VERSION_PKG := k8s.io/component-base/version
GIT_COMMIT := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
GIT_VERSION := $(shell git describe --tags --match 'v*' --dirty 2>/dev/null || echo "v0.0.0-$$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)")
GIT_TREE_STATE := $(shell if git diff --quiet HEAD -- 2>/dev/null; then echo clean; else echo dirty; fi)
BUILD_DATE := $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -X $(VERSION_PKG).gitVersion=$(GIT_VERSION) \
	-X $(VERSION_PKG).gitCommit=$(GIT_COMMIT) \
	-X $(VERSION_PKG).gitTreeState=$(GIT_TREE_STATE) \
	-X $(VERSION_PKG).buildDate=$(BUILD_DATE)

COMMANDS := edge-tunnel-server edge-tunnel-agent edge-tunnel-proxy

# Go files of this repository, without the tool cache.
GO_FILES = $(shell find . -name '*.go' -not -path './.cache/*' -not -path './.git/*' -not -path './bin/*')

.PHONY: all build test e2e fuzz proto verify-proto demo bench docs fmt vet lint clean

all: build

build: $(addprefix $(BIN)/,$(COMMANDS))

# Always rebuilt: go's own cache makes that cheap, and make cannot see the
# Go dependency graph.
$(BIN)/%: FORCE
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/$*

.PHONY: FORCE
FORCE:

test:
	hack/test.sh

# kube-apiserver, etcd, kubectl and edge nodes in network namespaces (root).
e2e:
	hack/e2e.sh

# Every fuzz target for FUZZTIME each (default 10s): make fuzz FUZZTIME=1m.
fuzz:
	hack/fuzz.sh

proto:
	hack/gen-proto.sh

verify-proto:
	hack/verify-proto.sh

demo:
	$(GO) run ./e2e/demo

# The command-line reference (docs/reference/*.md) from the binaries' flags;
# go test ./hack/gendocs fails when the committed pages are stale.
docs:
	$(GO) run ./hack/gendocs

bench:
	hack/bench.sh

# Sustained mixed load through a server and three agents on loopback
# (hack/soak): prints throughput, dials/s, unexpected errors and each
# process's RSS and goroutines every INTERVAL; fails on an unexpected error
# or memory that keeps growing (docs/operations.md, "Soak and churn").
DURATION ?= 5m
INTERVAL ?= 10s

.PHONY: soak
soak:
	$(GO) run ./hack/soak -duration $(DURATION) -interval $(INTERVAL)

fmt:
	gofmt -w $(GO_FILES)

vet:
	$(GO) vet ./...

lint:
	@unformatted="$$(gofmt -l $(GO_FILES))"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt would change these files (run 'make fmt'):"; echo "$$unformatted"; exit 1; \
	fi
	$(GO) vet ./...

# Container images of the three binaries (Dockerfile), tagged with the
# version: $(IMAGE_REGISTRY)/edge-tunnel-server:$(IMAGE_TAG) and so on.
# manifests/images/kustomization.yaml is where the manifests pick the tag.
IMAGE_REGISTRY ?= ghcr.io/edge-tunnel
IMAGE_TAG ?= $(GIT_VERSION)
CONTAINER_ENGINE ?= $(shell command -v docker 2>/dev/null || command -v podman 2>/dev/null)

image:
	@if [ -z "$(CONTAINER_ENGINE)" ]; then \
		echo "make image: neither docker nor podman is installed here, so no image was built."; \
		echo "Install one (or set CONTAINER_ENGINE=/path/to/engine) and run make image again;"; \
		echo "it builds the Dockerfile's targets $(COMMANDS) as $(IMAGE_REGISTRY)/NAME:$(IMAGE_TAG)."; \
		exit 1; \
	fi
	@# The Dockerfile uses BuildKit (cache mounts, cross-compiling stages):
	@# docker needs its buildx plugin; podman has it built in.
	@if [ "$$(basename $(CONTAINER_ENGINE))" = docker ] && ! $(CONTAINER_ENGINE) buildx version >/dev/null 2>&1; then \
		echo "make image: $(CONTAINER_ENGINE) has no buildx plugin, which the Dockerfile needs (BuildKit)."; \
		echo "Install docker-buildx-plugin, or build with podman: make image CONTAINER_ENGINE=podman"; \
		exit 1; \
	fi
	for c in $(COMMANDS); do \
		DOCKER_BUILDKIT=1 $(CONTAINER_ENGINE) build --target $$c --build-arg LDFLAGS='$(LDFLAGS)' \
			-t $(IMAGE_REGISTRY)/$$c:$(IMAGE_TAG) . || exit 1; \
	done

clean:
	rm -rf $(BIN)
