package manifests

import (
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// checkProxyExposure checks who can reach the server's HTTP proxy. It
// forwards to every edge node's allowed ports, so where it listens beyond
// loopback it must authenticate its clients (--proxy-token-file or
// --proxy-ca-cert), or be explicitly open (--proxy-allow-unauthenticated,
// which the binary insists on) behind a NetworkPolicy that admits the proxy
// port only from selected pods.
func checkProxyExposure(o *objects, c *container, add func(string, ...any)) {
	if c.port("proxy-port") == 0 || isLoopbackFlag(c.flag("proxy-bind-address")) {
		return
	}
	if c.flag("proxy-token-file") != "" || c.flag("proxy-ca-cert") != "" {
		return
	}
	if c.flag("proxy-allow-unauthenticated") != "true" {
		add("%s: the HTTP proxy listens beyond loopback (--proxy-bind-address=%q) without --proxy-token-file or --proxy-ca-cert; the server refuses to start that way unless --proxy-allow-unauthenticated is set, with a NetworkPolicy", c.Where, c.flag("proxy-bind-address"))
		return
	}
	ns := nsOf(o, c.W)
	var policies []*networkingv1.NetworkPolicy
	for _, np := range o.NetworkPolicies {
		if np.Namespace == ns && matches(&np.Spec.PodSelector, c.W.Template.Labels) && hasIngress(np) {
			policies = append(policies, np)
		}
	}
	if len(policies) == 0 {
		add("%s: the HTTP proxy is unauthenticated (--proxy-allow-unauthenticated) but no NetworkPolicy in %s selects the server's pods for Ingress: every pod in the cluster could reach every edge node through it", c.Where, ns)
		return
	}
	proxyPort := c.port("proxy-port")
	for _, np := range policies {
		for i, r := range np.Spec.Ingress {
			if !admitsPort(r, "proxy", proxyPort) {
				continue
			}
			if len(r.From) == 0 {
				add("%s: NetworkPolicy %s ingress rule %d admits the HTTP proxy's port from anywhere; give it a from: with the pods that need the proxy", c.Where, np.Name, i)
			}
			for j, peer := range r.From {
				if peer.PodSelector == nil || isEmptySelector(peer.PodSelector) {
					add("%s: NetworkPolicy %s ingress rule %d peer %d admits the HTTP proxy's port from whole namespaces or address blocks; name the client pods with a podSelector", c.Where, np.Name, i, j)
				}
			}
		}
	}
}

// checkPolicyPorts checks that the NetworkPolicies selecting a container's
// pods admit each port it declares from somewhere: a port a policy shuts
// is one its Service or its clients cannot reach.
func checkPolicyPorts(o *objects, c *container, add func(string, ...any)) {
	ns := nsOf(o, c.W)
	var policies []*networkingv1.NetworkPolicy
	for _, np := range o.NetworkPolicies {
		if np.Namespace == ns && matches(&np.Spec.PodSelector, c.W.Template.Labels) && hasIngress(np) {
			policies = append(policies, np)
		}
	}
	if len(policies) == 0 {
		return
	}
	for _, cp := range c.C.Ports {
		admitted := false
		for _, np := range policies {
			for _, r := range np.Spec.Ingress {
				admitted = admitted || admitsPort(r, cp.Name, int(cp.ContainerPort))
			}
		}
		if !admitted {
			add("%s: port %s (%d) is declared, but no ingress rule of the NetworkPolicies selecting the pod admits it", c.Where, cp.Name, cp.ContainerPort)
		}
	}
}

func hasIngress(np *networkingv1.NetworkPolicy) bool {
	if len(np.Spec.PolicyTypes) == 0 {
		return true // Ingress is implied
	}
	for _, t := range np.Spec.PolicyTypes {
		if t == networkingv1.PolicyTypeIngress {
			return true
		}
	}
	return false
}

// admitsPort reports whether an ingress rule covers the container port with
// that name or number (a rule without ports covers every port).
func admitsPort(r networkingv1.NetworkPolicyIngressRule, name string, number int) bool {
	if len(r.Ports) == 0 {
		return true
	}
	for _, p := range r.Ports {
		if p.Port == nil {
			return true
		}
		if p.Port.StrVal == name || (p.Port.StrVal == "" && int(p.Port.IntVal) == number) {
			return true
		}
		if p.EndPort != nil && p.Port.StrVal == "" && int(p.Port.IntVal) <= number && number <= int(*p.EndPort) {
			return true
		}
	}
	return false
}

func isEmptySelector(s *metav1.LabelSelector) bool {
	return len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0
}

func isLoopbackFlag(v string) bool {
	return v == "127.0.0.1" || v == "::1" || v == "localhost"
}

// loopbackPortDeclared reports a declared container port that its binary
// serves on loopback only: a Service or a client outside the pod would get
// connection refused.
func loopbackPortDeclared(cc *container, pname, bindFlag string, add func(string, ...any)) {
	if b := cc.flag(bindFlag); isLoopbackFlag(b) {
		add("%s: port %s is declared, but --%s=%s listens on loopback only, so nothing outside the pod reaches it; set --%s (e.g. 0.0.0.0)", cc.Where, pname, bindFlag, b, bindFlag)
	}
}

// TestProxyChecksCatchBreakage proves the checks of who reaches the HTTP
// proxy can fail: each case opens the proxy wider than the base does.
func TestProxyChecksCatchBreakage(t *testing.T) {
	cases := []struct {
		name string
		objs func(*objects)
		want string
	}{
		{"proxy back on the loopback default", func(o *objects) { removeArg(serverContainer(o), "--proxy-bind-address=") },
			"port proxy is declared, but --proxy-bind-address=127.0.0.1 listens on loopback only"},
		{"open proxy without the explicit flag", func(o *objects) { removeArg(serverContainer(o), "--proxy-allow-unauthenticated") },
			"the server refuses to start that way unless --proxy-allow-unauthenticated is set"},
		{"no NetworkPolicy", func(o *objects) { o.NetworkPolicies = nil },
			"no NetworkPolicy in kube-system selects the server's pods for Ingress"},
		{"policy for other pods", func(o *objects) {
			o.NetworkPolicies[0].Spec.PodSelector.MatchLabels = map[string]string{"app": "other"}
		},
			"no NetworkPolicy in kube-system selects the server's pods"},
		{"proxy admitted from anywhere", func(o *objects) { o.NetworkPolicies[0].Spec.Ingress[1].From = nil },
			"admits the HTTP proxy's port from anywhere"},
		{"proxy admitted from a whole namespace", func(o *objects) { o.NetworkPolicies[0].Spec.Ingress[1].From[1].PodSelector = nil },
			"admits the HTTP proxy's port from whole namespaces or address blocks"},
		{"proxy admitted by a rule without ports", func(o *objects) { o.NetworkPolicies[0].Spec.Ingress[0].Ports = nil },
			"admits the HTTP proxy's port from anywhere"},
		{"health port shut", func(o *objects) {
			r := &o.NetworkPolicies[0].Spec.Ingress[0]
			r.Ports = r.Ports[:1]
		}, "port health (8092) is declared, but no ingress rule of the NetworkPolicies selecting the pod admits it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, "base")
			if len(objs.NetworkPolicies) != 1 {
				t.Fatalf("base has %d NetworkPolicies, want 1", len(objs.NetworkPolicies))
			}
			tc.objs(objs)
			wantProblem(t, check(objs, binaryFlags()), tc.want)
		})
	}

	// A token instead of the policy is fine.
	objs := render(t, "base")
	removeArg(serverContainer(objs), "--proxy-allow-unauthenticated")
	c := serverContainer(objs)
	c.Args = append(c.Args, "--proxy-token-file=/etc/edge-tunnel/proxy/token")
	objs.NetworkPolicies = nil
	for _, p := range check(objs, binaryFlags()) {
		if strings.Contains(p, "HTTP proxy") {
			t.Errorf("a token-authenticated proxy reported: %s", p)
		}
	}
}
