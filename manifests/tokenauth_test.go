package manifests

import (
	"path"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// isAgentPodsRule is the rule that lets the server read the agents' Pods
// (get pods in --agent-namespace), checked by checkTokenAuth.
func isAgentPodsRule(r rbacv1.PolicyRule) bool {
	return slices.Contains(r.APIGroups, "") && slices.Contains(r.Resources, "pods")
}

// identityMethods is the server's effective --agent-identity, as the binary
// fills in its default.
func identityMethods(c *container) (cert, token bool) {
	v := c.flag("agent-identity")
	if v == "" {
		return c.flag("cluster-ca-cert") != "", c.flag("agent-service-account") != ""
	}
	for _, m := range strings.Split(v, ",") {
		cert = cert || strings.TrimSpace(m) == "certificate"
		token = token || strings.TrimSpace(m) == "token"
	}
	return cert, token
}

// checkTokenAuth checks agent identity binding: every server binds agents
// to their nodes (not --agent-identity=none), and a server that checks
// ServiceAccount tokens has the API access that needs (create tokenreviews
// and get nodes cluster-wide, get pods in the agents' namespace, nothing
// more from those roles) and agents that send a token it accepts: the
// DaemonSet in --agent-namespace runs as --agent-service-account and
// passes --service-account-token-path, a projected token with the
// server's --authentication-audience.
func checkTokenAuth(o *objects, cs []*container, add func(string, ...any)) {
	for _, c := range cs {
		if c.Bin != "edge-tunnel-server" {
			continue
		}
		cert, token := identityMethods(c)
		if !cert && !token {
			add("%s: --agent-identity=none: any agent may claim any node; use token (manifests/base) or certificate", c.Where)
		}
		if !token {
			continue
		}
		ns, sa, aud := c.flag("agent-namespace"), c.flag("agent-service-account"), c.flag("authentication-audience")
		if ns == "" || sa == "" || aud == "" {
			add("%s: token identity needs --agent-namespace, --agent-service-account and --authentication-audience", c.Where)
			continue
		}
		spec := &c.W.Template.Spec
		if spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken {
			add("%s: automountServiceAccountToken is false, so the server cannot ask for TokenReviews", c.W.Where)
		}
		checkTokenRBAC(o, c, ns, add)

		agents := 0
		for _, a := range cs {
			if a.Bin != "edge-tunnel-agent" || nsOf(o, a.W) != ns {
				continue
			}
			agents++
			if got := a.W.Template.Spec.ServiceAccountName; got != sa {
				add("%s: serviceAccountName %q, but the server accepts tokens of %s/%s only (--agent-service-account)", a.W.Where, got, ns, sa)
			}
			file := a.flag("service-account-token-path")
			if file == "" {
				add("%s: no --service-account-token-path, but the server (--agent-identity=%s) identifies agents by token", a.Where, c.flag("agent-identity"))
				continue
			}
			vol := mountFor(a.W, a.C, file)
			var src *corev1.ServiceAccountTokenProjection
			if vol != nil && vol.Projected != nil {
				mount := ""
				for _, m := range a.C.VolumeMounts {
					if m.Name == vol.Name {
						mount = m.MountPath
					}
				}
				for _, s := range vol.Projected.Sources {
					if s.ServiceAccountToken != nil && path.Join(mount, s.ServiceAccountToken.Path) == file {
						src = s.ServiceAccountToken
					}
				}
			}
			switch {
			case src == nil:
				add("%s: --service-account-token-path=%s is not a projected serviceAccountToken volume's file", a.Where, file)
			case src.Audience != aud:
				add("%s: the projected token's audience is %q, the server's --authentication-audience=%s: every agent would be refused", a.Where, src.Audience, aud)
			}
		}
		if agents == 0 {
			add("%s: no agent DaemonSet in --agent-namespace=%s", c.Where, ns)
		}
	}
}

// checkTokenRBAC checks what token identity needs from the API: create
// tokenreviews and get nodes through ClusterRoles, get pods in ns through a
// Role, all bound to the server's ServiceAccount, and no more than that in
// the roles that grant it.
func checkTokenRBAC(o *objects, c *container, ns string, add func(string, ...any)) {
	w := c.W
	sa, saNS := w.Template.Spec.ServiceAccountName, nsOf(o, w)
	boundTo := func(subjects []rbacv1.Subject) bool {
		return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == saNS
		})
	}
	granted := map[string]bool{}
	for _, b := range o.ClusterBindings {
		if b.RoleRef.Kind != "ClusterRole" || !boundTo(b.Subjects) {
			continue
		}
		for _, r := range o.ClusterRoles {
			if r.Name != b.RoleRef.Name {
				continue
			}
			for _, rule := range r.Rules {
				for _, g := range rule.APIGroups {
					for _, res := range rule.Resources {
						for _, v := range rule.Verbs {
							k := v + " " + res + "." + g
							if k != "create tokenreviews.authentication.k8s.io" && k != "get nodes." {
								add("ClusterRole %s: %s is more than the server needs", r.Name, strings.TrimSuffix(k, "."))
							}
							granted[k] = true
						}
					}
				}
			}
		}
	}
	for _, b := range o.RoleBindings {
		if b.Namespace != ns || b.RoleRef.Kind != "Role" || !boundTo(b.Subjects) {
			continue
		}
		for _, r := range o.Roles {
			if r.Namespace != ns || r.Name != b.RoleRef.Name {
				continue
			}
			for _, rule := range r.Rules {
				if !isAgentPodsRule(rule) {
					continue
				}
				if len(rule.APIGroups) != 1 || len(rule.Resources) != 1 || len(rule.Verbs) != 1 || rule.Verbs[0] != "get" {
					add("Role %s/%s: the pods rule must grant get on pods alone", ns, r.Name)
				}
				if slices.Contains(rule.Verbs, "get") {
					granted["get pods"] = true
				}
			}
		}
	}
	for _, need := range []string{"create tokenreviews.authentication.k8s.io", "get nodes.", "get pods"} {
		if !granted[need] {
			where := "ClusterRole"
			if need == "get pods" {
				where = "Role in " + ns
			}
			add("%s: --agent-identity=%s, but no %s bound to ServiceAccount %s grants %s", w.Where, c.flag("agent-identity"), where, sa, strings.TrimSuffix(need, "."))
		}
	}
}

// TestTokenAuthChecksCatchBreakage proves checkTokenAuth can fail: the
// rendered base, broken the ways a change would break token identity.
func TestTokenAuthChecksCatchBreakage(t *testing.T) {
	serverC := func(o *objects) *corev1.Container { return &o.Deployments[0].Spec.Template.Spec.Containers[0] }
	for _, tc := range []struct {
		name string
		objs func(*objects)
		want string
	}{
		{"identity off", func(o *objects) { replaceArg(&serverC(o).Args, "--agent-identity=", "--agent-identity=none") },
			"--agent-identity=none: any agent may claim any node"},
		{"TokenReview not granted", func(o *objects) { o.ClusterBindings = nil },
			"no ClusterRole bound to ServiceAccount edge-tunnel-server grants create tokenreviews.authentication.k8s.io"},
		{"pods not granted", func(o *objects) {
			o.RoleBindings = slices.DeleteFunc(o.RoleBindings, func(b *rbacv1.RoleBinding) bool { return b.Name == "edge-tunnel-server-agent-pods" })
		}, "grants get pods"},
		{"ClusterRole too wide", func(o *objects) {
			o.ClusterRoles[0].Rules[1].Verbs = append(o.ClusterRoles[0].Rules[1].Verbs, "list")
		}, "list nodes is more than the server needs"},
		{"wrong audience", func(o *objects) {
			o.DaemonSets[0].Spec.Template.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken.Audience = "api"
		}, `the projected token's audience is "api"`},
		{"agent without the token flag", func(o *objects) { removeArg(agentContainer(o), "--service-account-token-path=") },
			"no --service-account-token-path"},
		{"agent under another ServiceAccount", func(o *objects) { o.DaemonSets[0].Spec.Template.Spec.ServiceAccountName = "default" },
			`serviceAccountName "default", but the server accepts tokens of kube-system/edge-tunnel-agent only`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := render(t, "base")
			if len(o.ClusterRoles) != 1 || o.DaemonSets[0].Spec.Template.Spec.Volumes[0].Name != "token" {
				t.Fatalf("the base changed shape (ClusterRoles %d, first agent volume %q); adjust this test",
					len(o.ClusterRoles), o.DaemonSets[0].Spec.Template.Spec.Volumes[0].Name)
			}
			tc.objs(o)
			wantProblem(t, check(o, binaryFlags()), tc.want)
		})
	}
}
