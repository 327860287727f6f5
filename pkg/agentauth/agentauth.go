// Package agentauth decides whether an agent may claim the node identity it
// announces. A client certificate from the cluster CA proves that the agent
// is some node; without a binding between that proof and the agentID and
// agentIdentifiers metadata, any agent could claim any node and receive
// the traffic meant for it. This package is that binding.
//
// The node names a certificate proves are the one in a kubelet-style
// common name "system:node:NAME" and, else, each DNS SAN. The agent's ID
// and every host= identifier must be one of them. Every ipv4= and ipv6=
// identifier must be an IP SAN of the certificate or, when the server has
// API access, an address of the Node object of that name. cidr= and
// default-route= claims have no owner that a certificate could prove, so
// they are refused unless the operator allows them.
package agentauth

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/edge-tunnel/edge-tunnel/pkg/identity"
)

// Modes of --agent-identity.
const (
	// ModeCertificate binds claims to the agent's client certificate.
	ModeCertificate = "certificate"
	// ModeNone accepts every claim: any authenticated agent may claim any
	// node. Only for setups that cannot issue per-node certificates.
	ModeNone = "none"
)

// Reasons of a Refusal, the values of the refusals metric's reason label.
const (
	ReasonNoCertificate = "no_certificate" // no client certificate on the connection
	ReasonNoNodeName    = "no_node_name"   // the certificate names no node
	ReasonHost          = "host"           // agentID or host= not proven
	ReasonAddress       = "address"        // ipv4=/ipv6= not proven
	ReasonNetwork       = "network"        // cidr= or default-route= while not allowed
	// ReasonNodeLookup is not a Refusal: the Node lookup failed, so the
	// answer is unknown and the agent is told to retry.
	ReasonNodeLookup = "node_lookup_failed"
)

// Reasons lists every reason, for pre-creating metric series.
var Reasons = []string{ReasonNoCertificate, ReasonNoNodeName, ReasonHost, ReasonAddress, ReasonNetwork, ReasonNodeLookup}

// certCNPrefix is the common-name prefix of kubelet client certificates,
// which edge nodes already have and which the agent can reuse.
const certCNPrefix = "system:node:"

// NodeAddresses looks up the addresses of a Node object. found is false
// when the node does not exist. An error means the answer is unknown (the
// API cannot be reached): the agent is then refused for now, not for good.
type NodeAddresses interface {
	NodeAddresses(ctx context.Context, name string) (addrs []netip.Addr, found bool, err error)
}

// Binder checks an agent's claims against its certificate.
type Binder struct {
	// Nodes, when set, is asked about claimed addresses that are not IP
	// SANs of the certificate.
	Nodes NodeAddresses
	// AllowNetworks accepts cidr= and default-route= claims from any
	// authenticated agent.
	AllowNetworks bool
}

// Refusal is a claim the certificate does not prove. Its message names
// both sides: what the certificate proves and what the agent claims.
type Refusal struct {
	Reason string
	// Proven are the node names (and, for an address, the IP SANs) the
	// certificate proves; Claim is the identifier that is not among them.
	Proven []string
	Claim  string
	// Detail adds what was looked up, if anything.
	Detail string
}

func (r *Refusal) Error() string {
	var msg string
	switch r.Reason {
	case ReasonNoCertificate:
		msg = "the agent presented no client certificate; the server needs one from --cluster-ca-cert to know which node the agent is"
	case ReasonNoNodeName:
		msg = fmt.Sprintf("the client certificate names no node (want common name %q or DNS SANs with the node name); agent claims %s", certCNPrefix+"NAME", r.Claim)
	case ReasonNetwork:
		msg = fmt.Sprintf("agent claims %s, but networks and the default route cannot be proven by a certificate; drop the claim, or start the server with --agent-identity-allow-networks", r.Claim)
	default:
		msg = fmt.Sprintf("certificate proves node(s) [%s], agent claims %s", strings.Join(r.Proven, ", "), r.Claim)
	}
	if r.Detail != "" {
		msg += " (" + r.Detail + ")"
	}
	return msg
}

// NodeNames are the node names cert proves, normalized as identity host
// keys: the NAME of a "system:node:NAME" common name if there is one, else
// every DNS SAN.
func NodeNames(cert *x509.Certificate) []string {
	if cert == nil {
		return nil
	}
	if name, ok := strings.CutPrefix(cert.Subject.CommonName, certCNPrefix); ok && name != "" {
		return []string{identity.NormalizeHost(name)}
	}
	var names []string
	for _, n := range cert.DNSNames {
		if k := identity.NormalizeHost(n); k != "" && !slices.Contains(names, k) {
			names = append(names, k)
		}
	}
	return names
}

// Check returns nil if cert proves everything the agent claims: its agentID
// and ids. Otherwise it returns a *Refusal, or another error when a Node
// lookup failed and the answer is unknown.
func (b *Binder) Check(ctx context.Context, cert *x509.Certificate, agentID string, ids identity.Identifiers) error {
	if cert == nil {
		return &Refusal{Reason: ReasonNoCertificate, Claim: describe(agentID, ids)}
	}
	names := NodeNames(cert)
	if len(names) == 0 {
		return &Refusal{Reason: ReasonNoNodeName, Claim: describe(agentID, ids)}
	}
	if !b.AllowNetworks {
		if len(ids.CIDRs) > 0 {
			return &Refusal{Reason: ReasonNetwork, Proven: names, Claim: "cidr " + ids.CIDRs[0].String()}
		}
		if ids.DefaultRoute {
			return &Refusal{Reason: ReasonNetwork, Proven: names, Claim: "the default route"}
		}
	}
	for _, h := range append([]string{agentID}, ids.Hosts...) {
		if !slices.Contains(names, identity.NormalizeHost(h)) {
			return &Refusal{Reason: ReasonHost, Proven: names, Claim: "host " + h}
		}
	}

	var unproven []netip.Addr
	for _, a := range ids.Addrs() {
		if !slices.ContainsFunc(cert.IPAddresses, func(ip net.IP) bool {
			sa, ok := netip.AddrFromSlice(ip)
			return ok && sa.Unmap() == a.Unmap()
		}) {
			unproven = append(unproven, a)
		}
	}
	if len(unproven) == 0 {
		return nil
	}
	proven := append(slices.Clone(names), ipSANs(cert)...)
	if b.Nodes == nil {
		return &Refusal{Reason: ReasonAddress, Proven: proven, Claim: "address " + unproven[0].String(),
			Detail: "not an IP SAN of the certificate, and the server has no API access to look up Node addresses"}
	}
	// The certificate proves one node by CN, or possibly several by SANs:
	// an address of any of them is proven.
	nodeAddrs := map[netip.Addr]bool{}
	var looked []string
	for _, n := range names {
		addrs, found, err := b.Nodes.NodeAddresses(ctx, n)
		if err != nil {
			return fmt.Errorf("looking up the addresses of Node %s: %w", n, err)
		}
		if !found {
			looked = append(looked, "no Node "+n)
			continue
		}
		for _, a := range addrs {
			nodeAddrs[a.Unmap()] = true
		}
		looked = append(looked, fmt.Sprintf("Node %s has %s", n, addrList(addrs)))
	}
	for _, a := range unproven {
		if !nodeAddrs[a.Unmap()] {
			return &Refusal{Reason: ReasonAddress, Proven: proven, Claim: "address " + a.String(),
				Detail: "not an IP SAN of the certificate; " + strings.Join(looked, "; ")}
		}
	}
	return nil
}

func ipSANs(cert *x509.Certificate) []string {
	var out []string
	for _, ip := range cert.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap().String())
		}
	}
	return out
}

func addrList(addrs []netip.Addr) string {
	if len(addrs) == 0 {
		return "no addresses"
	}
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return "addresses [" + strings.Join(s, ", ") + "]"
}

// describe summarizes what an agent claims, for refusals that are about
// the certificate rather than one claim.
func describe(agentID string, ids identity.Identifiers) string {
	if q := ids.String(); q != "" {
		return "agent ID " + agentID + " with " + q
	}
	return "agent ID " + agentID
}
