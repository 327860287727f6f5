module github.com/edge-tunnel/edge-tunnel/e2e/konnclient

go 1.26

// kube-apiserver 1.35 (k8s.io/apiserver v0.35.0) links konnectivity-client
// v0.31.2; grpc, protobuf, klog, x/net and client_golang are pinned to the
// versions k8s.io/apiserver v0.35.0 requires, so this binary dials with the
// same code kube-apiserver does. go.v037.mod builds the same source against
// the newest client.
require (
	google.golang.org/grpc v1.72.2
	sigs.k8s.io/apiserver-network-proxy/konnectivity-client v0.31.2
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/go-logr/logr v1.4.2 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_golang v1.23.2 // indirect
	github.com/prometheus/client_model v0.6.2 // indirect
	github.com/prometheus/common v0.66.1 // indirect
	github.com/prometheus/procfs v0.16.1 // indirect
	go.yaml.in/yaml/v2 v2.4.2 // indirect
	golang.org/x/net v0.47.0 // indirect
	golang.org/x/sys v0.38.0 // indirect
	golang.org/x/text v0.31.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20250218202821-56aae31c358a // indirect
	google.golang.org/protobuf v1.36.8 // indirect
	k8s.io/klog/v2 v2.130.1 // indirect
)
