package manifests

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/edge-tunnel/edge-tunnel/pkg/ports"
)

// imagePrefix is where edge-tunnel's images live; the image's last path
// element is the binary it runs.
const imagePrefix = "ghcr.io/edge-tunnel/"

// portFlags maps the name of a container port to the flag that sets it, per
// binary, and bindFlags the flag of its listen address.
var (
	portFlags = map[string]map[string]string{
		"edge-tunnel-server": {"agent": "agent-port", "health": "health-port", "proxy": "proxy-port", "frontend": "server-port"},
		"edge-tunnel-agent":  {"health": "health-server-port"},
		"edge-tunnel-proxy":  {"proxy": "port"},
	}
	bindFlags = map[string]string{
		"agent-port": "agent-bind-address", "health-port": "health-bind-address", "proxy-port": "proxy-bind-address",
		"server-port": "server-bind-address", "health-server-port": "health-bind-address", "port": "bind-address",
	}
	healthFlag = map[string]string{"edge-tunnel-server": "health-port", "edge-tunnel-agent": "health-server-port"}
)

// workload is a pod template with what owns it.
type workload struct {
	Where    string // "Deployment kube-system/edge-tunnel-server"
	Kind     string
	Replicas int32
	Selector *metav1.LabelSelector
	Template *corev1.PodTemplateSpec
}

// container is an edge-tunnel container with its flags as the binary would
// parse them.
type container struct {
	W      *workload
	C      *corev1.Container
	Bin    string
	Sub    string // the subcommand an init container runs
	Where  string
	values map[string]string // flag -> effective value (last one given, else the default)
}

func (c *container) flag(name string) string { return c.values[name] }

func (c *container) port(name string) int {
	n, _ := strconv.Atoi(c.values[name])
	return n
}

func workloads(o *objects) []*workload {
	var ws []*workload
	for _, d := range o.Deployments {
		r := int32(1)
		if d.Spec.Replicas != nil {
			r = *d.Spec.Replicas
		}
		ws = append(ws, &workload{"Deployment " + d.Namespace + "/" + d.Name, "Deployment", r, d.Spec.Selector, &d.Spec.Template})
	}
	for _, d := range o.DaemonSets {
		ws = append(ws, &workload{"DaemonSet " + d.Namespace + "/" + d.Name, "DaemonSet", 0, d.Spec.Selector, &d.Spec.Template})
	}
	return ws
}

// check returns every broken invariant of one rendered kustomization, each
// saying where and what; flags are the binaries' flag sets.
func check(o *objects, flags map[string]*pflag.FlagSet) []string {
	var p []string
	add := func(format string, args ...any) { p = append(p, o.Dir+": "+fmt.Sprintf(format, args...)) }

	ws := workloads(o)
	var cs, inits []*container
	for _, w := range ws {
		if !matches(w.Selector, w.Template.Labels) {
			add("%s: selector %s does not match the pod template's labels %v", w.Where, selectorString(w.Selector), w.Template.Labels)
		}
		for i := range w.Template.Spec.Containers {
			c := &w.Template.Spec.Containers[i]
			if !strings.HasPrefix(c.Image, imagePrefix) {
				continue
			}
			cs = append(cs, checkContainer(w, c, flags, add))
		}
		for i := range w.Template.Spec.InitContainers {
			c := &w.Template.Spec.InitContainers[i]
			if !strings.HasPrefix(c.Image, imagePrefix) {
				continue
			}
			inits = append(inits, checkInitContainer(w, c, flags, add))
		}
	}
	for _, c := range cs {
		switch c.Bin {
		case "edge-tunnel-server":
			checkServer(o, c, inits, add)
			checkProxyExposure(o, c, add)
			checkPolicyPorts(o, c, add)
		case "edge-tunnel-agent":
			checkAgent(o, c, cs, add)
		}
	}
	checkServices(o, ws, add)
	for _, pdb := range o.PDBs {
		if n := countMatching(ws, pdb.Spec.Selector); n != 1 {
			add("PodDisruptionBudget %s selects %d workloads, want 1", pdb.Name, n)
		}
	}
	checkCertificates(o, ws, add)
	checkTokenAuth(o, cs, add)
	checkAgentAPI(o, cs, add)
	return p
}

// checkContainer checks one edge-tunnel container: its flags exist in the
// binary and parse, its ports and probes are the ones the binary listens
// on, it is locked down, and the files its flags name are mounted.
func checkContainer(w *workload, c *corev1.Container, flags map[string]*pflag.FlagSet, add func(string, ...any)) *container {
	name := strings.TrimPrefix(c.Image, imagePrefix)
	name, tag, tagged := strings.Cut(name, ":")
	if i := strings.Index(name, "@"); i >= 0 {
		name, tagged = name[:i], true
	}
	cc := &container{W: w, C: c, Bin: name, Where: w.Where + ": container " + c.Name, values: map[string]string{}}
	if !tagged || tag == "" {
		add("%s: image %s has no tag or digest: the images component (manifests/images) was not applied after this container was added", cc.Where, c.Image)
	}
	fs, ok := flags[name]
	if !ok {
		add("%s: image %s is not one of edge-tunnel's binaries", cc.Where, c.Image)
		return cc
	}
	if len(c.Command) > 0 {
		add("%s: command is set; the image's entrypoint is the binary, use args", cc.Where)
	}
	parseArgs(cc, fs, c.Args, add)

	// Ports: every declared port is one the binary serves, on the port the
	// flags give; every port the binary serves beyond loopback is declared.
	declared := map[string]int32{}
	for _, cp := range c.Ports {
		declared[cp.Name] = cp.ContainerPort
		fl, ok := portFlags[name][cp.Name]
		if !ok {
			add("%s: port %q (%d) is not a port %s serves (known names: %v)", cc.Where, cp.Name, cp.ContainerPort, name, keys(portFlags[name]))
			continue
		}
		if got := cc.flag(fl); strconv.Itoa(int(cp.ContainerPort)) != got {
			add("%s: port %s is %d, but the binary listens on %s (--%s)", cc.Where, cp.Name, cp.ContainerPort, got, fl)
		}
		loopbackPortDeclared(cc, cp.Name, bindFlags[fl], add)
	}
	for pname, fl := range portFlags[name] {
		if _, ok := declared[pname]; ok || cc.port(fl) == 0 {
			continue
		}
		if b := cc.flag(bindFlags[fl]); b == "127.0.0.1" || b == "::1" || b == "localhost" {
			continue
		}
		add("%s: --%s=%s listens beyond loopback but no container port named %s declares it", cc.Where, fl, cc.flag(fl), pname)
	}

	// Probes on the health endpoint.
	if hf, ok := healthFlag[name]; ok {
		hp := cc.port(hf)
		probe := func(kind string, pr *corev1.Probe, paths ...string) {
			if pr == nil || pr.HTTPGet == nil {
				add("%s: no %s with httpGet on the health port", cc.Where, kind)
				return
			}
			port := pr.HTTPGet.Port
			switch {
			case port.Type == intstr.String && port.StrVal != "health":
				add("%s: %s: port %s is not the health port (the port named health, --%s=%d)", cc.Where, kind, port.StrVal, hf, hp)
			case port.Type == intstr.String && declared["health"] != int32(hp):
				add("%s: %s: port health is %d, the health endpoint listens on %d (--%s)", cc.Where, kind, declared["health"], hp, hf)
			case port.Type == intstr.Int && int(port.IntVal) != hp:
				add("%s: %s: port %d is not the health port %d (--%s)", cc.Where, kind, port.IntVal, hp, hf)
			}
			if !slices.Contains(paths, pr.HTTPGet.Path) {
				add("%s: %s: path %q, want one of %v", cc.Where, kind, pr.HTTPGet.Path, paths)
			}
		}
		if hp == 0 {
			add("%s: --%s=0 turns the health endpoint off; the probes need it", cc.Where, hf)
		} else {
			probe("livenessProbe", c.LivenessProbe, "/livez", "/healthz")
			probe("readinessProbe", c.ReadinessProbe, "/readyz")
		}
	}

	// Locked down: non-root, no capabilities, and able to read its Secrets.
	lockedDown(w, c, cc.Where, nil, add)
	readsSecrets(w, c, cc.Where, add)

	// Files named by flags are mounted; Secret files use the kubernetes.io/tls
	// key names that `edge-tunnel-server certs` and cert-manager write.
	for fl, v := range cc.values {
		if !strings.HasPrefix(v, "/") {
			continue
		}
		vol := mountFor(w, c, v)
		if vol == nil {
			add("%s: --%s=%s is not under any volumeMount (the root file system is read-only and the image holds only the binary)", cc.Where, fl, v)
			continue
		}
		if vol.Secret != nil && len(vol.Secret.Items) == 0 && !slices.Contains([]string{"tls.crt", "tls.key", "ca.crt"}, path.Base(v)) {
			add("%s: --%s=%s: Secret %s files are tls.crt, tls.key and ca.crt", cc.Where, fl, v, vol.Secret.SecretName)
		}
	}
	return cc
}

// parseArgs sets cc.values from args as the binary (or subcommand) whose
// flags are fs would parse them: defaults first, then every --flag=value,
// each checked to exist, not be an ignored upstream flag, and parse.
func parseArgs(cc *container, fs *pflag.FlagSet, args []string, add func(string, ...any)) {
	cmd := fs.Name()
	fs.VisitAll(func(f *pflag.Flag) { cc.values[f.Name] = f.DefValue })
	env := map[string]bool{}
	for _, e := range cc.C.Env {
		env[e.Name] = true
	}
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			add("%s: arg %q is not a --flag (the binaries take no positional arguments)", cc.Where, a)
			continue
		}
		fname, val, hasVal := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		fname = strings.ReplaceAll(fname, "_", "-")
		f := fs.Lookup(fname)
		if f == nil {
			add("%s: %s has no flag --%s (from arg %q)", cc.Where, cmd, fname, a)
			continue
		}
		if f.Deprecated != "" {
			add("%s: --%s is an upstream flag %s ignores: %s", cc.Where, fname, cmd, f.Deprecated)
		}
		if !hasVal {
			if f.NoOptDefVal == "" {
				add("%s: --%s needs a value (write --%s=VALUE)", cc.Where, fname, fname)
				continue
			}
			val = f.NoOptDefVal
		}
		for _, m := range envRef.FindAllStringSubmatch(val, -1) {
			if !env[m[1]] {
				add("%s: --%s uses $(%s), which the container's env does not define", cc.Where, fname, m[1])
			}
		}
		if err := f.Value.Set(val); err != nil {
			add("%s: --%s=%s: %v", cc.Where, fname, val, err)
		}
		cc.values[fname] = val
	}
}

// checkServer checks the server Deployment against the objects around it.
func checkServer(o *objects, c *container, inits []*container, add func(string, ...any)) {
	w, spec := c.W, &c.W.Template.Spec
	leases := c.flag("enable-lease-controller") == "true"
	if count := c.port("server-count"); w.Kind == "Deployment" && leases && count > int(w.Replicas) {
		add("%s: replicas %d but --server-count=%d: with --enable-lease-controller it is the least count agents are told, so they would look for replicas that do not exist; leave it at 1", w.Where, w.Replicas, count)
	} else if w.Kind == "Deployment" && !leases && count != int(w.Replicas) {
		add("%s: replicas %d but --server-count=%s: agents would connect to the wrong number of servers", w.Where, w.Replicas, c.flag("server-count"))
	}
	if leases {
		checkLeaseRBAC(o, c, add)
	}
	if len(spec.TopologySpreadConstraints) == 0 && (spec.Affinity == nil || spec.Affinity.PodAntiAffinity == nil) {
		add("%s: replicas are not spread (no topologySpreadConstraints or podAntiAffinity)", w.Where)
	}
	if countPDBs(o, w) != 1 {
		add("%s: no PodDisruptionBudget selects it", w.Where)
	}
	if !avoidsEdge(spec) {
		add("%s: may be scheduled on edge nodes (want node affinity node-role.kubernetes.io/edge DoesNotExist)", w.Where)
	}
	if u := c.flag("uds-name"); u != "" && !hostPathMount(w, c.C, path.Dir(u)) {
		add("%s: --uds-name=%s is not in a hostPath mount: kube-apiserver on the node could not reach it", c.Where, u)
	} else if u != "" {
		checkSocketDir(c, inits, add)
	}
	// The ConfigMap watch and its RBAC.
	ref := c.flag("ports-configmap")
	if ref == "" || c.flag("ports-config") != "" {
		return
	}
	ns, name, err := ports.ParseRef(ref)
	if err != nil {
		add("%s: --ports-configmap=%s: %v", c.Where, ref, err)
		return
	}
	var cm *corev1.ConfigMap
	for _, m := range o.ConfigMaps {
		if m.Namespace == ns && m.Name == name {
			cm = m
		}
	}
	if cm == nil {
		add("%s: no ConfigMap %s/%s (--ports-configmap)", c.Where, ns, name)
	} else if _, warns := ports.Parse(cm.Data); len(warns) > 0 {
		add("ConfigMap %s/%s: the server would warn: %v", ns, name, warns)
	}
	sa := spec.ServiceAccountName
	if sa == "" || !hasSA(o, w.Template, sa) {
		add("%s: serviceAccountName %q is not a ServiceAccount in the manifests", w.Where, sa)
	}
	if spec.AutomountServiceAccountToken != nil && !*spec.AutomountServiceAccountToken {
		add("%s: automountServiceAccountToken is false, so the ConfigMap watch has no credentials", w.Where)
	}
	granted := false
	for _, rb := range o.RoleBindings {
		if rb.Namespace != ns || rb.RoleRef.Kind != "Role" || !slices.ContainsFunc(rb.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == nsOf(o, w)
		}) {
			continue
		}
		for _, r := range o.Roles {
			if r.Namespace != ns || r.Name != rb.RoleRef.Name {
				continue
			}
			for _, rule := range r.Rules {
				if isLeaseRule(rule) || isAgentPodsRule(rule) {
					continue // checkLeaseRBAC, checkTokenAuth
				}
				if len(rule.ResourceNames) == 0 || slices.Contains(rule.Verbs, "*") || slices.Contains(rule.Resources, "*") {
					add("Role %s/%s: a rule without resourceNames or with *: more than the server needs", ns, r.Name)
				}
				if slices.Contains(rule.Resources, "configmaps") && slices.Contains(rule.ResourceNames, name) &&
					slices.Contains(rule.Verbs, "get") && slices.Contains(rule.Verbs, "list") && slices.Contains(rule.Verbs, "watch") {
					granted = true
				}
			}
		}
	}
	if !granted {
		add("%s: no Role bound to ServiceAccount %s grants get, list, watch on configmaps/%s in %s", w.Where, sa, name, ns)
	}
}

// leaseVerbs are what the replica Leases need (pkg/leases): get, create and
// update for a replica's own, list to count them all, delete for its own at
// shutdown and others' expired ones.
var leaseVerbs = []string{"get", "list", "create", "update", "delete"}

func isLeaseRule(r rbacv1.PolicyRule) bool {
	return slices.Contains(r.APIGroups, "coordination.k8s.io") && slices.Contains(r.Resources, "leases")
}

// checkLeaseRBAC checks that a Role in --lease-namespace bound to the
// server's ServiceAccount grants exactly leaseVerbs on leases.
func checkLeaseRBAC(o *objects, c *container, add func(string, ...any)) {
	w, ns := c.W, c.flag("lease-namespace")
	sa := w.Template.Spec.ServiceAccountName
	granted := map[string]bool{}
	for _, rb := range o.RoleBindings {
		if rb.Namespace != ns || rb.RoleRef.Kind != "Role" || !slices.ContainsFunc(rb.Subjects, func(s rbacv1.Subject) bool {
			return s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == nsOf(o, w)
		}) {
			continue
		}
		for _, r := range o.Roles {
			if r.Namespace != ns || r.Name != rb.RoleRef.Name {
				continue
			}
			for _, rule := range r.Rules {
				if !isLeaseRule(rule) {
					continue
				}
				if len(rule.APIGroups) != 1 || len(rule.Resources) != 1 || len(rule.ResourceNames) != 0 {
					add("Role %s/%s: the leases rule must name coordination.k8s.io and leases alone", ns, r.Name)
				}
				for _, v := range rule.Verbs {
					if !slices.Contains(leaseVerbs, v) {
						add("Role %s/%s: verb %q on leases is more than the server needs (%v)", ns, r.Name, v, leaseVerbs)
					}
					granted[v] = true
				}
			}
		}
	}
	for _, v := range leaseVerbs {
		if !granted[v] {
			add("%s: --enable-lease-controller, but no Role bound to ServiceAccount %s grants get, list, create, update and delete on leases in %s (missing %s)", w.Where, sa, ns, v)
		}
	}
}

// checkAgent checks the agent DaemonSet: edge nodes only, host network,
// identity from the downward API, the server address from one ConfigMap,
// a gradual rollout, and the port the server's Service serves.
func checkAgent(o *objects, c *container, cs []*container, add func(string, ...any)) {
	w, spec := c.W, &c.W.Template.Spec
	if w.Kind != "DaemonSet" {
		add("%s: the agent runs as a DaemonSet, one per edge node", w.Where)
		return
	}
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		add("%s: want hostNetwork: true and dnsPolicy: ClusterFirstWithHostNet", w.Where)
	}
	const edge = "node-role.kubernetes.io/edge"
	if _, ok := spec.NodeSelector[edge]; !ok {
		add("%s: nodeSelector lacks %s: the agent would run on cloud nodes too", w.Where, edge)
	}
	if !slices.ContainsFunc(spec.Tolerations, func(t corev1.Toleration) bool { return t.Key == edge }) {
		add("%s: no toleration for the %s taint", w.Where, edge)
	}
	fields := map[string]string{}
	for _, e := range c.C.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			fields[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	if fields["NODE_NAME"] != "spec.nodeName" || (fields["NODE_IP"] != "status.hostIP" && fields["NODE_IPS"] != "status.hostIPs") {
		add("%s: NODE_NAME (spec.nodeName) and NODE_IP (status.hostIP) or NODE_IPS (status.hostIPs) must come from the downward API; got %v", c.Where, fields)
	}
	ds := o.DaemonSets[slices.IndexFunc(o.DaemonSets, func(d *appsv1.DaemonSet) bool { return &d.Spec.Template == w.Template })]
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type == "OnDelete" || ru == nil || ru.MaxUnavailable == nil || ru.MaxUnavailable.String() == "100%" {
		add("%s: updateStrategy must be RollingUpdate with maxUnavailable below 100%%", w.Where)
	}
	if grace, err := time.ParseDuration(c.flag("drain-grace")); err == nil && spec.TerminationGracePeriodSeconds != nil &&
		time.Duration(*spec.TerminationGracePeriodSeconds)*time.Second <= grace {
		add("%s: terminationGracePeriodSeconds %d must exceed --drain-grace=%s", w.Where, *spec.TerminationGracePeriodSeconds, grace)
	}
	// The server address: $(VAR) from a ConfigMap key that exists.
	host := c.flag("proxy-server-host")
	m := envRef.FindStringSubmatch(host)
	if m == nil || m[0] != host {
		add("%s: --proxy-server-host=%s: want $(VAR) from ConfigMap edge-tunnel-agent-config, so the address is set in one place", c.Where, host)
	} else {
		i := slices.IndexFunc(c.C.Env, func(e corev1.EnvVar) bool { return e.Name == m[1] })
		if i < 0 || c.C.Env[i].ValueFrom == nil || c.C.Env[i].ValueFrom.ConfigMapKeyRef == nil {
			add("%s: $(%s) does not come from a ConfigMap", c.Where, m[1])
		} else if ref := c.C.Env[i].ValueFrom.ConfigMapKeyRef; !hasConfigMapKey(o, ds.Namespace, ref.Name, ref.Key) {
			add("%s: ConfigMap %s/%s with key %s is not in the manifests", c.Where, ds.Namespace, ref.Name, ref.Key)
		}
	}
	// The port: a LoadBalancer Service in front of the servers' agent port.
	for _, s := range o.Services {
		if s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			continue
		}
		for _, sc := range cs {
			if sc.Bin != "edge-tunnel-server" || !matchesMap(s.Spec.Selector, sc.W.Template.Labels) {
				continue
			}
			for _, sp := range s.Spec.Ports {
				if sp.TargetPort.String() == "agent" && strconv.Itoa(int(sp.Port)) != c.flag("proxy-server-port") {
					add("%s: --proxy-server-port=%s, but Service %s serves the agent port on %d", c.Where, c.flag("proxy-server-port"), s.Name, sp.Port)
				}
			}
		}
	}
}

// checkServices: every Service selects exactly one workload and its target
// ports are ports that workload declares, with the same number.
func checkServices(o *objects, ws []*workload, add func(string, ...any)) {
	for _, s := range o.Services {
		var sel []*workload
		for _, w := range ws {
			if len(s.Spec.Selector) > 0 && matchesMap(s.Spec.Selector, w.Template.Labels) {
				sel = append(sel, w)
			}
		}
		if len(sel) != 1 {
			add("Service %s selects %d workloads, want 1", s.Name, len(sel))
			continue
		}
		for _, sp := range s.Spec.Ports {
			found := false
			for _, c := range sel[0].Template.Spec.Containers {
				for _, cp := range c.Ports {
					if (sp.TargetPort.Type == intstr.String && sp.TargetPort.StrVal == cp.Name) ||
						(sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal == cp.ContainerPort) {
						found = true
						if sp.Port != cp.ContainerPort {
							add("Service %s: port %s is %d but the container listens on %d: keep them equal, clients and docs use one number", s.Name, sp.Name, sp.Port, cp.ContainerPort)
						}
					}
				}
			}
			if !found {
				add("Service %s: targetPort %s is not a port of %s", s.Name, sp.TargetPort.String(), sel[0].Where)
			}
		}
	}
}

// checkCertificates: cert-manager's Secrets are the ones the pods mount,
// issued by an Issuer in the same manifests.
func checkCertificates(o *objects, ws []*workload, add func(string, ...any)) {
	// Mounted by components/metrics-server-proxy, in metrics-server's pod
	// (TestCrossReferences checks that).
	secrets := map[string]bool{"edge-tunnel-proxy-client": true}
	for _, is := range o.Issuers {
		if is.Spec.CA != nil {
			secrets[is.Spec.CA.SecretName] = true
		}
	}
	for _, w := range ws {
		for _, v := range w.Template.Spec.Volumes {
			if v.Secret != nil {
				secrets[v.Secret.SecretName] = true
			}
		}
	}
	for _, c := range o.Certificates {
		if !secrets[c.Spec.SecretName] {
			add("Certificate %s: Secret %s is mounted by no pod and used by no Issuer", c.Metadata.Name, c.Spec.SecretName)
		}
		if !slices.ContainsFunc(o.Issuers, func(i *issuer) bool { return i.Metadata.Name == c.Spec.IssuerRef.Name }) {
			add("Certificate %s: issuer %s is not in the manifests", c.Metadata.Name, c.Spec.IssuerRef.Name)
		}
		if c.Spec.SecretName == "edge-tunnel-server-certs" {
			for _, m := range o.ConfigMaps {
				if h := m.Data["server-host"]; m.Name == "edge-tunnel-agent-config" && !slices.Contains(c.Spec.DNSNames, h) {
					add("Certificate %s: dnsNames %v lack %s, the address agents dial (ConfigMap %s)", c.Metadata.Name, c.Spec.DNSNames, h, m.Name)
				}
			}
		}
	}
}
