// Package agent holds the generated code of proto/agent/agent.proto: the
// upstream-compatible AgentService and edge-tunnel's per-connection
// ConnService. Regenerate with `make proto`.
package agent
