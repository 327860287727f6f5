# syntax=docker/dockerfile:1
# Images of edge-tunnel's three binaries, one target each:
#   docker build --target edge-tunnel-server -t ghcr.io/edge-tunnel/edge-tunnel-server:TAG .
# (`make image` builds all three with the version stamped in.) The binaries
# are static (CGO_ENABLED=0), so the runtime image is distroless/static:
# no shell, no package manager, CA certificates and /etc/passwd only, running
# as the nonroot user (65532) unless a pod's securityContext says otherwise.

ARG GO_VERSION=1.26

# Build on the builder's own platform and cross-compile: no emulation for
# multi-platform builds (docker buildx build --platform linux/amd64,linux/arm64).
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first: this layer is reused until go.mod or go.sum change.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS
ARG TARGETARCH
# The -X flags of component-base's version package; the Makefile passes
# them (git is not in the build context). Empty: the binaries say v0.0.0.
ARG LDFLAGS=""
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    for cmd in edge-tunnel-server edge-tunnel-agent edge-tunnel-proxy; do \
      CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
        go build -trimpath -ldflags "-s -w $LDFLAGS" -o /out/$cmd ./cmd/$cmd || exit 1; \
    done

FROM gcr.io/distroless/static-debian12:nonroot AS edge-tunnel-server
COPY --from=build /out/edge-tunnel-server /edge-tunnel-server
USER 65532:65532
ENTRYPOINT ["/edge-tunnel-server"]

FROM gcr.io/distroless/static-debian12:nonroot AS edge-tunnel-agent
COPY --from=build /out/edge-tunnel-agent /edge-tunnel-agent
USER 65532:65532
ENTRYPOINT ["/edge-tunnel-agent"]

FROM gcr.io/distroless/static-debian12:nonroot AS edge-tunnel-proxy
COPY --from=build /out/edge-tunnel-proxy /edge-tunnel-proxy
USER 65532:65532
ENTRYPOINT ["/edge-tunnel-proxy"]
