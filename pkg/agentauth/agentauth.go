// Package agentauth decides whether an agent may claim the node identity it
// announces. A client certificate from the cluster CA, or a ServiceAccount
// token bound to a pod, proves that the agent is some node; without a
// binding between that proof and the agentID and agentIdentifiers
// metadata, any agent could claim any node and receive the traffic meant
// for it. This package is that binding.
//
// The node names a certificate proves are the one in a kubelet-style
// common name "system:node:NAME" and, else, each DNS SAN. A token proves
// the node its pod is scheduled to (token.go). The agent's ID and every
// host= identifier must be one of the proven names. Every ipv4= and ipv6=
// identifier must be an IP SAN of the certificate or, when the server has
// API access, an address of the Node object of that name. cidr= and
// default-route= claims have no owner that a certificate or token could
// prove, so they are refused unless the operator allows them.
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
	// ModeToken binds claims to the node of the pod the agent's
	// ServiceAccount token is bound to.
	ModeToken = "token"
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
	// Token refusals: the agent is not authenticated (codes.Unauthenticated).
	ReasonNoToken        = "no_token"        // no ServiceAccount token while one is required
	ReasonBadToken       = "bad_token"       // malformed, expired, wrong audience: TokenReview said no
	ReasonServiceAccount = "service_account" // a token of another ServiceAccount
	ReasonTokenNotBound  = "token_not_bound" // the token names no pod on a node
	// ReasonNodeLookup and ReasonTokenReview are not Refusals: the API
	// could not answer, so the answer is unknown and the agent is told to
	// retry (a *LookupError).
	ReasonNodeLookup  = "node_lookup_failed"
	ReasonTokenReview = "token_review_failed"
)

// Reasons lists every reason, for pre-creating metric series.
var Reasons = []string{ReasonNoCertificate, ReasonNoNodeName, ReasonHost, ReasonAddress, ReasonNetwork,
	ReasonNoToken, ReasonBadToken, ReasonServiceAccount, ReasonTokenNotBound, ReasonNodeLookup, ReasonTokenReview}

// certCNPrefix is the common-name prefix of kubelet client certificates,
// which edge nodes already have and which the agent can reuse.
const certCNPrefix = "system:node:"

// NodeAddresses looks up the addresses of a Node object. found is false
// when the node does not exist. An error means the answer is unknown (the
// API cannot be reached): the agent is then refused for now, not for good.
type NodeAddresses interface {
	NodeAddresses(ctx context.Context, name string) (addrs []netip.Addr, found bool, err error)
}

// Binder checks an agent's claims against its certificate or token.
type Binder struct {
	// Nodes, when set, is asked about claimed addresses that are not IP
	// SANs of the certificate.
	Nodes NodeAddresses
	// AllowNetworks accepts cidr= and default-route= claims from any
	// authenticated agent.
	AllowNetworks bool
	// Tokens, when set, accepts ServiceAccount tokens: an agent that sends
	// one is bound to the node of the token's pod, whatever certificate
	// it presents. Without Tokens, tokens are ignored.
	Tokens *TokenReviewer
	// RequireToken refuses agents that send no token instead of binding
	// them by their certificate (--agent-identity=token).
	RequireToken bool
}

// Mode names the --agent-identity mode b implements, for log lines: none
// (b is nil), certificate, token or certificate,token, with " (networks
// allowed)" when AllowNetworks is set.
func (b *Binder) Mode() string {
	if b == nil {
		return ModeNone
	}
	m := ModeCertificate
	switch {
	case b.Tokens != nil && b.RequireToken:
		m = ModeToken
	case b.Tokens != nil:
		m = ModeCertificate + "," + ModeToken
	}
	if b.AllowNetworks {
		m += " (networks allowed)"
	}
	return m
}

// Credentials are what an agent presented on its connection.
type Credentials struct {
	// Certificate is the verified client certificate, or nil.
	Certificate *x509.Certificate
	// Authorization are the values of the "authorization" gRPC metadata,
	// where an agent sends "Bearer TOKEN".
	Authorization []string
}

// Refusal is a claim the credential does not prove, or a credential that
// is missing or not accepted. Its message names both sides: what the
// credential proves and what the agent claims.
type Refusal struct {
	Reason string
	// Credential says what was checked: "certificate" (when empty) or
	// "token of pod NAMESPACE/NAME".
	Credential string
	// Proven are the node names (and, for an address, the IP SANs) the
	// credential proves; Claim is the identifier that is not among them.
	Proven []string
	Claim  string
	// Detail adds what was looked up, if anything.
	Detail string
}

func (r *Refusal) Error() string {
	var msg string
	credential := r.Credential
	if credential == "" {
		credential = "certificate"
	}
	switch r.Reason {
	case ReasonNoCertificate:
		msg = "the agent presented no client certificate; the server needs one from --cluster-ca-cert to know which node the agent is"
		if r.Detail != "" {
			msg = "the agent presented no client certificate and sent no ServiceAccount token; the server needs one of them to know which node the agent is"
		}
	case ReasonNoNodeName:
		msg = fmt.Sprintf("the client certificate names no node (want common name %q or DNS SANs with the node name); agent claims %s", certCNPrefix+"NAME", r.Claim)
	case ReasonNetwork:
		msg = fmt.Sprintf("agent claims %s, but networks and the default route cannot be proven by a certificate or token; drop the claim, or start the server with --agent-identity-allow-networks", r.Claim)
	case ReasonNoToken:
		msg = "the agent sent no ServiceAccount token, and the server (--agent-identity=token) needs one to know which node the agent is: start the agent with --service-account-token-path, a projected ServiceAccount token with the server's --authentication-audience"
	case ReasonBadToken:
		msg = "the agent's ServiceAccount token was not accepted"
	case ReasonServiceAccount:
		msg = "the agent's token belongs to a ServiceAccount the server does not accept"
	case ReasonTokenNotBound:
		msg = "the agent's token proves no node"
	default:
		msg = fmt.Sprintf("%s proves node(s) [%s], agent claims %s", credential, strings.Join(r.Proven, ", "), r.Claim)
	}
	if r.Detail != "" {
		msg += " (" + r.Detail + ")"
	}
	return msg
}

// Unauthenticated reports whether the refusal is about the credential
// itself (none, or not accepted) rather than about a claim it does not
// prove: the server answers codes.Unauthenticated instead of
// PermissionDenied.
func (r *Refusal) Unauthenticated() bool {
	switch r.Reason {
	case ReasonNoCertificate, ReasonNoToken, ReasonBadToken, ReasonServiceAccount, ReasonTokenNotBound:
		return true
	}
	return false
}

// LookupError is a Kubernetes API request that failed: whether the agent
// may claim what it claims is unknown, so it is refused for now and
// retries. Reason is ReasonNodeLookup or ReasonTokenReview.
type LookupError struct {
	Reason string
	Err    error
}

func (e *LookupError) Error() string { return e.Err.Error() }
func (e *LookupError) Unwrap() error { return e.Err }

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

// Check returns nil if the agent's credentials prove everything it
// claims: its agentID and ids. A token is checked when the Binder accepts
// tokens and the agent sent one (or must send one); otherwise the
// certificate. It returns a *Refusal, or a *LookupError when the API could
// not answer.
func (b *Binder) Check(ctx context.Context, cred Credentials, agentID string, ids identity.Identifiers) error {
	if b.Tokens != nil && (len(cred.Authorization) > 0 || b.RequireToken) {
		token, err := BearerToken(cred.Authorization)
		if err != nil {
			return err
		}
		if token == "" {
			return &Refusal{Reason: ReasonNoToken, Claim: describe(agentID, ids)}
		}
		who, err := b.Tokens.Review(ctx, token)
		if err != nil {
			return err
		}
		return b.checkClaims(ctx, "token of pod "+who.Pod, []string{who.Node}, nil, agentID, ids)
	}
	cert := cred.Certificate
	if cert == nil {
		r := &Refusal{Reason: ReasonNoCertificate, Claim: describe(agentID, ids)}
		if b.Tokens != nil {
			r.Detail = "a client certificate from --cluster-ca-cert, or a token from --service-account-token-path"
		}
		return r
	}
	names := NodeNames(cert)
	if len(names) == 0 {
		return &Refusal{Reason: ReasonNoNodeName, Claim: describe(agentID, ids)}
	}
	return b.checkClaims(ctx, "", names, cert.IPAddresses, agentID, ids)
}

// checkClaims checks agentID and ids against the node names a credential
// proves and, for a certificate, its IP SANs. credential names it in
// refusals ("" for a certificate).
func (b *Binder) checkClaims(ctx context.Context, credential string, names []string, ipSANs []net.IP, agentID string, ids identity.Identifiers) error {
	if !b.AllowNetworks {
		if len(ids.CIDRs) > 0 {
			return &Refusal{Reason: ReasonNetwork, Credential: credential, Proven: names, Claim: "cidr " + ids.CIDRs[0].String()}
		}
		if ids.DefaultRoute {
			return &Refusal{Reason: ReasonNetwork, Credential: credential, Proven: names, Claim: "the default route"}
		}
	}
	for _, h := range append([]string{agentID}, ids.Hosts...) {
		if !slices.Contains(names, identity.NormalizeHost(h)) {
			return &Refusal{Reason: ReasonHost, Credential: credential, Proven: names, Claim: "host " + h}
		}
	}

	var unproven []netip.Addr
	for _, a := range ids.Addrs() {
		if !slices.ContainsFunc(ipSANs, func(ip net.IP) bool {
			sa, ok := netip.AddrFromSlice(ip)
			return ok && sa.Unmap() == a.Unmap()
		}) {
			unproven = append(unproven, a)
		}
	}
	if len(unproven) == 0 {
		return nil
	}
	proven := append(slices.Clone(names), addrStrings(ipSANs)...)
	notSAN := "not an IP SAN of the certificate"
	if credential != "" {
		notSAN = "a token proves no address by itself"
	}
	if b.Nodes == nil {
		return &Refusal{Reason: ReasonAddress, Credential: credential, Proven: proven, Claim: "address " + unproven[0].String(),
			Detail: notSAN + ", and the server has no API access to look up Node addresses"}
	}
	// The certificate proves one node by CN, or possibly several by SANs:
	// an address of any of them is proven.
	nodeAddrs := map[netip.Addr]bool{}
	var looked []string
	for _, n := range names {
		addrs, found, err := b.Nodes.NodeAddresses(ctx, n)
		if err != nil {
			return &LookupError{Reason: ReasonNodeLookup, Err: fmt.Errorf("looking up the addresses of Node %s: %w", n, err)}
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
			return &Refusal{Reason: ReasonAddress, Credential: credential, Proven: proven, Claim: "address " + a.String(),
				Detail: notSAN + "; " + strings.Join(looked, "; ")}
		}
	}
	return nil
}

func addrStrings(ips []net.IP) []string {
	var out []string
	for _, ip := range ips {
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
