package manifests

import (
	"path"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/edge-tunnel/edge-tunnel/pkg/leases"
)

// apiTokenDir is where in-cluster config (client-go's rest.InClusterConfig)
// reads the ServiceAccount token and the cluster's CA.
const apiTokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// agentLeaseVerbs are the calls of --count-server-leases: one list and one
// watch of the replica Leases.
var agentLeaseVerbs = []string{"list", "watch"}

// checkAgentAPI checks what an agent may do in the Kubernetes API. By
// default nothing: no API token in its pod and no role bound to its
// ServiceAccount. With --count-server-leases (components/agent-lease-count)
// exactly what counting needs: credentials for in-cluster config, list and
// watch on leases in its --lease-namespace, which is the servers', with a
// selector that picks the servers' replica Leases.
func checkAgentAPI(o *objects, cs []*container, add func(string, ...any)) {
	for _, a := range cs {
		if a.Bin != "edge-tunnel-agent" {
			continue
		}
		grants := agentGrants(o, a, add)
		counting := a.flag("count-server-leases") == "true"
		auto, mounted := apiToken(o, a)
		if !counting {
			if auto {
				add("%s: the pod gets a Kubernetes API token (automountServiceAccountToken), but without --count-server-leases the agent makes no API calls: agents have no API access by default", a.W.Where)
			}
			if mounted != "" {
				add("%s: %s, but without --count-server-leases the agent makes no API calls: agents have no API access by default", a.Where, mounted)
			}
			for _, g := range grants {
				add("%s: ServiceAccount %s may %s, but without --count-server-leases agents have no API access by default", a.W.Where, a.W.Template.Spec.ServiceAccountName, g)
			}
			continue
		}

		ns := a.flag("lease-namespace")
		for _, s := range cs {
			if s.Bin == "edge-tunnel-server" && s.flag("lease-namespace") != ns {
				add("%s: --lease-namespace=%s, but the servers keep their Leases in %s (their --lease-namespace)", a.Where, ns, s.flag("lease-namespace"))
			}
		}
		if sel, err := labels.Parse(a.flag("lease-label-selector")); err != nil {
			add("%s: --lease-label-selector=%s: %v", a.Where, a.flag("lease-label-selector"), err)
		} else if sel.Empty() || !sel.Matches(labels.Set(leases.Labels)) {
			add("%s: --lease-label-selector=%q does not pick the servers' replica Leases alone (labels %s)", a.Where, sel.String(), leases.Selector())
		}
		if a.flag("kubeconfig") == "" && !auto && mounted == "" {
			add("%s: --count-server-leases with in-cluster config, but the pod has no API credentials: mount a projected serviceAccountToken (no audience), ca.crt from ConfigMap kube-root-ca.crt at %s, or set automountServiceAccountToken", a.Where, apiTokenDir)
		}
		checkAPITokenVolume(a, add)
		want := map[string]bool{}
		for _, v := range agentLeaseVerbs {
			want[v+" leases.coordination.k8s.io in "+ns] = true
		}
		for _, g := range grants {
			if !want[g] {
				add("%s: ServiceAccount %s may %s, more than --count-server-leases needs (%v leases in %s)", a.W.Where, a.W.Template.Spec.ServiceAccountName, g, agentLeaseVerbs, ns)
			}
		}
		for w := range want {
			if !slices.Contains(grants, w) {
				add("%s: --count-server-leases, but no Role bound to ServiceAccount %s grants %s", a.W.Where, a.W.Template.Spec.ServiceAccountName, w)
			}
		}
	}
}

// agentGrants lists what the roles bound to the agent's ServiceAccount
// allow, one "VERB RESOURCE.GROUP in NAMESPACE" each ("in *" for a
// ClusterRoleBinding). A rule with resourceNames is reported: the agent
// lists by label, which names cannot allow.
func agentGrants(o *objects, a *container, add func(string, ...any)) []string {
	sa, saNS := a.W.Template.Spec.ServiceAccountName, nsOf(o, a.W)
	boundTo := func(subjects []rbacv1.Subject) bool {
		return slices.ContainsFunc(subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == saNS
		})
	}
	var out []string
	grant := func(binding, ns string, ref rbacv1.RoleRef) {
		var rules []rbacv1.PolicyRule
		found := false
		for _, r := range o.Roles {
			if ref.Kind == "Role" && r.Namespace == ns && r.Name == ref.Name {
				rules, found = r.Rules, true
			}
		}
		for _, r := range o.ClusterRoles {
			if ref.Kind == "ClusterRole" && r.Name == ref.Name {
				rules, found = r.Rules, true
			}
		}
		if !found {
			add("%s binds ServiceAccount %s/%s to %s %s, which is not in the manifests", binding, saNS, sa, ref.Kind, ref.Name)
			return
		}
		for _, rule := range rules {
			if len(rule.ResourceNames) > 0 || len(rule.NonResourceURLs) > 0 {
				add("%s %s: a rule with resourceNames or nonResourceURLs for the agent: it lists Leases by label", ref.Kind, ref.Name)
			}
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					for _, v := range rule.Verbs {
						out = append(out, strings.TrimSuffix(v+" "+res+"."+g, ".")+" in "+ns)
					}
				}
			}
		}
	}
	for _, b := range o.RoleBindings {
		if boundTo(b.Subjects) {
			grant("RoleBinding "+b.Namespace+"/"+b.Name, b.Namespace, b.RoleRef)
		}
	}
	for _, b := range o.ClusterBindings {
		if boundTo(b.Subjects) {
			grant("ClusterRoleBinding "+b.Name, "*", b.RoleRef)
		}
	}
	return out
}

// apiToken says whether the agent's pod gets the API token automounted
// (the pod's automountServiceAccountToken, else its ServiceAccount's, else
// the API's default, true), and describes a volume of the agent container
// that holds a token for the Kubernetes API, or "".
func apiToken(o *objects, a *container) (auto bool, mounted string) {
	spec := &a.W.Template.Spec
	auto = true
	for _, s := range o.ServiceAccounts {
		if s.Name == spec.ServiceAccountName && s.Namespace == nsOf(o, a.W) && s.AutomountServiceAccountToken != nil {
			auto = *s.AutomountServiceAccountToken
		}
	}
	if spec.AutomountServiceAccountToken != nil {
		auto = *spec.AutomountServiceAccountToken
	}
	for _, m := range a.C.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			if path.Clean(m.MountPath) == apiTokenDir {
				return auto, "volume " + v.Name + " is mounted at " + apiTokenDir
			}
			if v.Projected == nil {
				continue
			}
			for _, s := range v.Projected.Sources {
				if s.ServiceAccountToken != nil && s.ServiceAccountToken.Audience == "" {
					return auto, "volume " + v.Name + " projects a token for the Kubernetes API (no audience)"
				}
			}
		}
	}
	return auto, ""
}

// checkAPITokenVolume checks a volume mounted at apiTokenDir: read-only,
// projected, with a token the API server accepts (its own audience) at
// token and the cluster's CA at ca.crt, as in-cluster config reads them.
func checkAPITokenVolume(a *container, add func(string, ...any)) {
	var m *corev1.VolumeMount
	for i := range a.C.VolumeMounts {
		if path.Clean(a.C.VolumeMounts[i].MountPath) == apiTokenDir {
			m = &a.C.VolumeMounts[i]
		}
	}
	if m == nil {
		return
	}
	if !m.ReadOnly {
		add("%s: the mount at %s must be readOnly", a.Where, apiTokenDir)
	}
	var v *corev1.Volume
	for i := range a.W.Template.Spec.Volumes {
		if a.W.Template.Spec.Volumes[i].Name == m.Name {
			v = &a.W.Template.Spec.Volumes[i]
		}
	}
	if v == nil || v.Projected == nil {
		add("%s: the volume at %s must be projected (a bound serviceAccountToken and ca.crt)", a.Where, apiTokenDir)
		return
	}
	token, ca := false, false
	for _, s := range v.Projected.Sources {
		if t := s.ServiceAccountToken; t != nil && t.Path == "token" {
			token = true
			if t.Audience != "" {
				add("%s: the API token at %s has audience %q, which the Kubernetes API server refuses; leave the audience out (the API server's own)", a.Where, apiTokenDir, t.Audience)
			}
		}
		if c := s.ConfigMap; c != nil && c.Name == "kube-root-ca.crt" &&
			(len(c.Items) == 0 || slices.ContainsFunc(c.Items, func(k corev1.KeyToPath) bool { return k.Key == "ca.crt" && k.Path == "ca.crt" })) {
			ca = true
		}
	}
	if !token {
		add("%s: no serviceAccountToken with path token in the volume at %s", a.Where, apiTokenDir)
	}
	if !ca {
		add("%s: no ca.crt from ConfigMap kube-root-ca.crt in the volume at %s: in-cluster config cannot verify the API server", a.Where, apiTokenDir)
	}
}

// TestAgentLeaseCount: with components/agent-lease-count the agent counts
// the Leases and may do exactly that; without it (the base) it has no API
// access; and the pod is as locked down as the base's.
func TestAgentLeaseCount(t *testing.T) {
	const dir = "examples/agent-lease-count"
	ex, base := render(t, dir), render(t, "base")
	for _, p := range check(ex, binaryFlags()) {
		t.Error(p)
	}

	// The Role and its binding, read directly (check reads them too).
	var role *rbacv1.Role
	for _, r := range ex.Roles {
		if r.Name == "edge-tunnel-agent-leases" {
			role = r
		}
	}
	wantRules := []rbacv1.PolicyRule{{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"list", "watch"}}}
	if role == nil || role.Namespace != "kube-system" || !reflect.DeepEqual(role.Rules, wantRules) {
		t.Errorf("%s: want Role kube-system/edge-tunnel-agent-leases with exactly %+v; got %+v", dir, wantRules, role)
	}
	bound := slices.ContainsFunc(ex.RoleBindings, func(b *rbacv1.RoleBinding) bool {
		return b.Namespace == "kube-system" && b.RoleRef == rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "edge-tunnel-agent-leases"} &&
			reflect.DeepEqual(b.Subjects, []rbacv1.Subject{{Kind: "ServiceAccount", Name: "edge-tunnel-agent", Namespace: "kube-system"}})
	})
	if !bound {
		t.Errorf("%s: no RoleBinding of edge-tunnel-agent-leases to ServiceAccount kube-system/edge-tunnel-agent alone", dir)
	}

	// The DaemonSet: the flag and the token, and nothing else of the pod
	// changed but the one volume and its mount.
	exPod, basePod := ex.DaemonSets[0].Spec.Template.Spec, base.DaemonSets[0].Spec.Template.Spec
	if c := exPod.Containers[0]; !slices.Contains(c.Args, "--count-server-leases") || mountName(&c, apiTokenDir) != "kube-api-access" {
		t.Errorf("%s: agent args %v, mount at %s %q: want --count-server-leases and volume kube-api-access", dir, c.Args, apiTokenDir, mountName(&c, apiTokenDir))
	}
	if c := basePod.Containers[0]; slices.Contains(c.Args, "--count-server-leases") || mountName(&c, apiTokenDir) != "" ||
		basePod.AutomountServiceAccountToken == nil || *basePod.AutomountServiceAccountToken {
		t.Errorf("base: the agent must not count Leases or have an API token (args %v, automount %v)", c.Args, basePod.AutomountServiceAccountToken)
	}
	if slices.ContainsFunc(base.RoleBindings, func(b *rbacv1.RoleBinding) bool { return b.Name == "edge-tunnel-agent-leases" }) {
		t.Error("base: binds edge-tunnel-agent-leases; the agent has no API access by default")
	}
	exC, baseC := exPod.Containers[0], basePod.Containers[0]
	exC.Args, baseC.Args = nil, nil
	exC.VolumeMounts = slices.DeleteFunc(slices.Clone(exC.VolumeMounts), func(m corev1.VolumeMount) bool { return m.Name == "kube-api-access" })
	exPod.Containers, basePod.Containers = []corev1.Container{exC}, []corev1.Container{baseC}
	exPod.Volumes = slices.DeleteFunc(slices.Clone(exPod.Volumes), func(v corev1.Volume) bool { return v.Name == "kube-api-access" })
	if !reflect.DeepEqual(exPod, basePod) {
		t.Errorf("%s: the agent pod differs from the base's in more than --count-server-leases and the kube-api-access volume", dir)
	}
}

// TestAgentLeaseCountChecksCatchBreakage proves checkAgentAPI (and the
// pod security checks on the component's pod) can fail.
func TestAgentLeaseCountChecksCatchBreakage(t *testing.T) {
	agentRole := func(o *objects) *rbacv1.Role {
		i := slices.IndexFunc(o.Roles, func(r *rbacv1.Role) bool { return r.Name == "edge-tunnel-agent-leases" })
		return o.Roles[i]
	}
	apiVolume := func(o *objects) *corev1.ProjectedVolumeSource {
		vs := o.DaemonSets[0].Spec.Template.Spec.Volumes
		return vs[slices.IndexFunc(vs, func(v corev1.Volume) bool { return v.Name == "kube-api-access" })].Projected
	}
	const ds = "DaemonSet kube-system/edge-tunnel-agent"
	for _, tc := range []struct {
		name, dir string
		objs      func(*objects)
		want      string
	}{
		{"Role can get", "examples/agent-lease-count", func(o *objects) { agentRole(o).Rules[0].Verbs = append(agentRole(o).Rules[0].Verbs, "get") },
			ds + ": ServiceAccount edge-tunnel-agent may get leases.coordination.k8s.io in kube-system, more than --count-server-leases needs"},
		{"Role can read ConfigMaps", "examples/agent-lease-count", func(o *objects) {
			agentRole(o).Rules = append(agentRole(o).Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"list"}})
		}, "may list configmaps in kube-system, more than"},
		{"Role by name", "examples/agent-lease-count", func(o *objects) { agentRole(o).Rules[0].ResourceNames = []string{"edge-tunnel-server-a"} },
			"Role edge-tunnel-agent-leases: a rule with resourceNames"},
		{"Role in another namespace", "examples/agent-lease-count", func(o *objects) { agentRole(o).Namespace = "default" },
			"RoleBinding kube-system/edge-tunnel-agent-leases binds ServiceAccount kube-system/edge-tunnel-agent to Role edge-tunnel-agent-leases, which is not in the manifests"},
		{"no RoleBinding", "examples/agent-lease-count", func(o *objects) {
			o.RoleBindings = slices.DeleteFunc(o.RoleBindings, func(b *rbacv1.RoleBinding) bool { return b.Name == "edge-tunnel-agent-leases" })
		}, ds + ": --count-server-leases, but no Role bound to ServiceAccount edge-tunnel-agent grants watch leases.coordination.k8s.io in kube-system"},
		{"no API token", "examples/agent-lease-count", func(o *objects) {
			c := agentContainer(o)
			c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "kube-api-access" })
		}, "--count-server-leases with in-cluster config, but the pod has no API credentials"},
		{"API token for the server's audience", "examples/agent-lease-count", func(o *objects) { apiVolume(o).Sources[0].ServiceAccountToken.Audience = "edge-tunnel" },
			`the API token at /var/run/secrets/kubernetes.io/serviceaccount has audience "edge-tunnel"`},
		{"no CA", "examples/agent-lease-count", func(o *objects) { apiVolume(o).Sources = apiVolume(o).Sources[:1] },
			"no ca.crt from ConfigMap kube-root-ca.crt"},
		{"writable API token mount", "examples/agent-lease-count", func(o *objects) {
			c := agentContainer(o)
			c.VolumeMounts[slices.IndexFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return m.Name == "kube-api-access" })].ReadOnly = false
		}, "the mount at /var/run/secrets/kubernetes.io/serviceaccount must be readOnly"},
		{"another lease namespace than the servers'", "examples/agent-lease-count", func(o *objects) {
			c := agentContainer(o)
			c.Args = append(c.Args, "--lease-namespace=edge")
		}, "--lease-namespace=edge, but the servers keep their Leases in kube-system"},
		{"selector that picks other Leases", "examples/agent-lease-count", func(o *objects) {
			c := agentContainer(o)
			c.Args = append(c.Args, "--lease-label-selector=app.kubernetes.io/component=replica-lease,app.kubernetes.io/name=kube-scheduler")
		}, "does not pick the servers' replica Leases alone"},
		{"component's pod writable", "examples/agent-lease-count", func(o *objects) {
			no := false
			agentContainer(o).SecurityContext.ReadOnlyRootFilesystem = &no
		}, "container edge-tunnel-agent: securityContext.readOnlyRootFilesystem must be true"},
		{"base with the automounted token", "base", func(o *objects) {
			yes := true
			o.DaemonSets[0].Spec.Template.Spec.AutomountServiceAccountToken = &yes
		}, ds + ": the pod gets a Kubernetes API token (automountServiceAccountToken)"},
		{"base with an API token volume", "base", func(o *objects) {
			o.DaemonSets[0].Spec.Template.Spec.Volumes[0].Projected.Sources[0].ServiceAccountToken.Audience = ""
		},
			"volume token projects a token for the Kubernetes API (no audience), but without --count-server-leases"},
		{"base with the component's RBAC", "base", func(o *objects) {
			ex := render(t, "examples/agent-lease-count")
			o.Roles, o.RoleBindings = ex.Roles, ex.RoleBindings
		}, ds + ": ServiceAccount edge-tunnel-agent may list leases.coordination.k8s.io in kube-system, but without --count-server-leases agents have no API access by default"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := render(t, tc.dir)
			tc.objs(o)
			wantProblem(t, check(o, binaryFlags()), tc.want)
		})
	}
}
