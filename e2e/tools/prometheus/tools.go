//go:build tools

// The command this module builds; the import keeps it in go.mod. It is
// built with -tags remove_all_sd: the tests need static targets only, and
// leaving out the service-discovery plugins (cloud SDKs, Kubernetes)
// roughly halves the cold build.
package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
