package manifests

import (
	"path"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Lookups over the rendered objects that the checks share.

func nsOf(o *objects, w *workload) string {
	for _, d := range o.Deployments {
		if &d.Spec.Template == w.Template {
			return d.Namespace
		}
	}
	for _, d := range o.DaemonSets {
		if &d.Spec.Template == w.Template {
			return d.Namespace
		}
	}
	return ""
}

func hasSA(o *objects, _ *corev1.PodTemplateSpec, name string) bool {
	return slices.ContainsFunc(o.ServiceAccounts, func(s *corev1.ServiceAccount) bool { return s.Name == name })
}

func hasConfigMapKey(o *objects, ns, name, key string) bool {
	return slices.ContainsFunc(o.ConfigMaps, func(m *corev1.ConfigMap) bool {
		_, ok := m.Data[key]
		return m.Namespace == ns && m.Name == name && ok
	})
}

func countPDBs(o *objects, w *workload) int {
	n := 0
	for _, p := range o.PDBs {
		if matches(p.Spec.Selector, w.Template.Labels) {
			n++
		}
	}
	return n
}

func countMatching(ws []*workload, sel *metav1.LabelSelector) int {
	n := 0
	for _, w := range ws {
		if matches(sel, w.Template.Labels) {
			n++
		}
	}
	return n
}

func avoidsEdge(spec *corev1.PodSpec) bool {
	if spec.Affinity == nil || spec.Affinity.NodeAffinity == nil || spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return false
	}
	terms := spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	for _, t := range terms {
		if !slices.ContainsFunc(t.MatchExpressions, func(e corev1.NodeSelectorRequirement) bool {
			return e.Key == "node-role.kubernetes.io/edge" && e.Operator == corev1.NodeSelectorOpDoesNotExist
		}) {
			return false
		}
	}
	return len(terms) > 0
}

// mountFor returns the volume mounted where file lies, or nil.
func mountFor(w *workload, c *corev1.Container, file string) *corev1.Volume {
	best := ""
	var vol *corev1.Volume
	for _, m := range c.VolumeMounts {
		if strings.HasPrefix(file, strings.TrimSuffix(m.MountPath, "/")+"/") && len(m.MountPath) > len(best) {
			for i := range w.Template.Spec.Volumes {
				if w.Template.Spec.Volumes[i].Name == m.Name {
					best, vol = m.MountPath, &w.Template.Spec.Volumes[i]
				}
			}
		}
	}
	return vol
}

// mountName is the name of the volume c mounts at dir, or "".
func mountName(c *corev1.Container, dir string) string {
	for _, m := range c.VolumeMounts {
		if path.Clean(m.MountPath) == path.Clean(dir) {
			return m.Name
		}
	}
	return ""
}

func hostPathMount(w *workload, c *corev1.Container, dir string) bool {
	for _, m := range c.VolumeMounts {
		if path.Clean(m.MountPath) != path.Clean(dir) {
			continue
		}
		for _, v := range w.Template.Spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil {
				return true
			}
		}
	}
	return false
}

func matches(sel *metav1.LabelSelector, labels map[string]string) bool {
	if sel == nil || len(sel.MatchLabels) == 0 || len(sel.MatchExpressions) > 0 {
		return false
	}
	return matchesMap(sel.MatchLabels, labels)
}

func matchesMap(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

func selectorString(sel *metav1.LabelSelector) string {
	if sel == nil {
		return "<none>"
	}
	var s []string
	for k, v := range sel.MatchLabels {
		s = append(s, k+"="+v)
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}

func keys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// wantProblem fails t unless one of problems (what check reported about a
// broken rendering) contains want.
func wantProblem(t *testing.T, problems []string, want string) {
	t.Helper()
	for _, p := range problems {
		if strings.Contains(p, want) {
			return
		}
	}
	t.Errorf("no problem reported contains %q; reported:\n%s", want, strings.Join(problems, "\n"))
}
