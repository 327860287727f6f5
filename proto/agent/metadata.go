package agent

import "strings"

// Metadata keys of the agent handshake. AgentIDKey, AgentIdentifiersKey,
// ServerIDKey and ServerCountKey are upstream konnectivity's (gRPC lowercases
// them on the wire); the others are edge-tunnel's.
const (
	// AgentIDKey: exactly one, sent by the agent on Connect, Conn and Mux.
	AgentIDKey = "agentID"
	// AgentIdentifiersKey: at most one, URL-query encoded
	// (host=NAME&ipv4=A&ipv6=B&cidr=C&default-route=true).
	AgentIdentifiersKey = "agentIdentifiers"
	// ServerIDKey and ServerCountKey: exactly one each, in the server's
	// response header on Connect.
	ServerIDKey    = "serverID"
	ServerCountKey = "serverCount"
	// FeaturesKey lists optional features, comma-separated. The agent sends
	// what it supports; the server answers with what it supports; a feature
	// is in use when both name it.
	FeaturesKey = "edge-tunnel-features"
	// DialIDKey: on a Conn stream, the DIAL_REQ random it answers.
	DialIDKey = "dialID"

	// FeatureConnStreams: one ConnService stream per tunneled connection.
	FeatureConnStreams = "conn-streams"
	// FeatureMux: every tunneled connection on one MuxService stream, with
	// per-connection windows. Preferred over FeatureConnStreams when both
	// sides name both.
	FeatureMux = "mux"

	// FeatureLiveCount, offered by the server only: its serverCount follows
	// the replicas alive now (their Leases), so it may change while an
	// agent is connected. An agent that holds a connection to every replica
	// asks again now and then with a count probe.
	FeatureLiveCount = "live-server-count"
	// CountProbeKey marks a Connect as a count probe: the server answers
	// with its handshake header and ends the stream at once, without
	// registering the agent. Send it only to servers that offered
	// FeatureLiveCount; an older server would take the probe for a real
	// agent connection.
	CountProbeKey = "edge-tunnel-count-probe"
)

// HasFeature reports whether the FeaturesKey values name want.
func HasFeature(values []string, want string) bool {
	for _, v := range values {
		for _, f := range strings.Split(v, ",") {
			if strings.TrimSpace(f) == want {
				return true
			}
		}
	}
	return false
}
