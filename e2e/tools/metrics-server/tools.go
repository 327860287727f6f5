//go:build tools

// The command this module builds; the import keeps it in go.mod.
package tools

import _ "sigs.k8s.io/metrics-server/cmd/metrics-server"
