package manifests

import (
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
)

// The pod security rules every container of the manifests must keep.

// lockedDown checks a container's securityContext (with the pod's where
// the container leaves a field unset): no privilege escalation, a read-only
// root file system, not privileged, every capability dropped and none added
// but the given ones, RuntimeDefault seccomp, and resource requests. With
// rootCaps == nil it must also run as non-root: runAsNonRoot true and no
// runAsUser 0. Only an init container that needs root for one job (chown)
// passes rootCaps, the capabilities that job needs.
func lockedDown(w *workload, c *corev1.Container, where string, rootCaps []string, add func(string, ...any)) {
	pod := w.Template.Spec.SecurityContext
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		add("%s: securityContext.allowPrivilegeEscalation must be false", where)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		add("%s: securityContext.readOnlyRootFilesystem must be true", where)
	}
	if sc.Privileged != nil && *sc.Privileged {
		add("%s: must not be privileged", where)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		add("%s: securityContext.capabilities must drop ALL", where)
	}
	if sc.Capabilities != nil {
		for _, cp := range sc.Capabilities.Add {
			if !slices.Contains(rootCaps, strings.TrimPrefix(string(cp), "CAP_")) {
				add("%s: securityContext.capabilities adds %s; it may add only %v", where, cp, rootCaps)
			}
		}
	}
	if rootCaps == nil {
		nonRoot, user := sc.RunAsNonRoot, sc.RunAsUser
		if nonRoot == nil {
			nonRoot = pod.RunAsNonRoot
		}
		if user == nil {
			user = pod.RunAsUser
		}
		if nonRoot == nil || !*nonRoot || (user != nil && *user == 0) {
			add("%s: must run as non-root (runAsNonRoot: true, runAsUser not 0); only the socket-dir init container runs as root", where)
		}
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil {
		seccomp = pod.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		add("%s: seccompProfile must be RuntimeDefault (pod or container)", where)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		add("%s: resources.requests must set cpu and memory", where)
	}
}

// readsSecrets checks that a non-root container can read the Secret volumes
// it mounts: the kubelet writes their files owned by root, so they must be
// readable by others, or by the group with the pod's fsGroup set (which
// makes the files that group's).
func readsSecrets(w *workload, c *corev1.Container, where string, add func(string, ...any)) {
	spec := &w.Template.Spec
	fsGroup := spec.SecurityContext != nil && spec.SecurityContext.FSGroup != nil
	for _, m := range c.VolumeMounts {
		for _, v := range spec.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			mode := int32(0o644)
			if v.Secret.DefaultMode != nil {
				mode = *v.Secret.DefaultMode
			}
			if mode&0o004 == 0 && !(fsGroup && mode&0o040 != 0) {
				add("%s: cannot read Secret %s (volume %s): defaultMode %04o gives a non-root user no read permission; set the pod's fsGroup and defaultMode 0440", where, v.Secret.SecretName, v.Name, mode)
			}
		}
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// initSubcommands are the subcommands an init container may run, with the
// only capabilities each may add; they run as root for that one job.
var initSubcommands = map[string][]string{
	// chown(2) of the socket's hostPath directory, which the kubelet makes
	// root-owned; socket-dir orders its calls so that FOWNER is not needed.
	"socket-dir": {"CHOWN"},
}

// checkInitContainer checks an edge-tunnel init container: it runs one of
// initSubcommands with flags that subcommand has, locked down but for the
// capabilities that subcommand needs. flags holds subcommands' flag sets
// under "BINARY SUBCOMMAND".
func checkInitContainer(w *workload, c *corev1.Container, flags map[string]*pflag.FlagSet, add func(string, ...any)) *container {
	name, _, _ := strings.Cut(strings.TrimPrefix(c.Image, imagePrefix), ":")
	name, _, _ = strings.Cut(name, "@")
	cc := &container{W: w, C: c, Bin: name, Where: w.Where + ": init container " + c.Name, values: map[string]string{}}
	if len(c.Command) > 0 || len(c.Args) == 0 {
		add("%s: want args with a subcommand first (one of %v) and no command", cc.Where, keys(initSubcommands))
		return cc
	}
	cc.Sub = c.Args[0]
	caps, ok := initSubcommands[cc.Sub]
	fs := flags[name+" "+cc.Sub]
	if !ok || fs == nil {
		add("%s: %s %s is not a subcommand an init container runs (known: %v)", cc.Where, name, cc.Sub, keys(initSubcommands))
		return cc
	}
	parseArgs(cc, fs, c.Args[1:], add)
	lockedDown(w, c, cc.Where, caps, add)
	if p := cc.flag("path"); cc.Sub == "socket-dir" && !hostPathMount(w, c, p) {
		add("%s: --path=%s is not a hostPath mount of this container", cc.Where, p)
	}
	return cc
}

// runAsUser is the user a container runs as: its own runAsUser, the pod's,
// or the images' USER (65532, Dockerfile).
func runAsUser(c *container) int64 {
	if sc := c.C.SecurityContext; sc != nil && sc.RunAsUser != nil {
		return *sc.RunAsUser
	}
	if sc := c.W.Template.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
		return *sc.RunAsUser
	}
	return 65532
}

// checkSocketDir checks that a non-root server can create its socket: an
// init container runs socket-dir on the socket's directory, mounted from the
// same volume, for the server's user.
func checkSocketDir(c *container, inits []*container, add func(string, ...any)) {
	dir := path.Dir(c.flag("uds-name"))
	vol := mountName(c.C, dir)
	user := runAsUser(c)
	if user == 0 {
		return // lockedDown reports a root server
	}
	for _, ic := range inits {
		if ic.W != c.W || ic.Sub != "socket-dir" {
			continue
		}
		if p := path.Clean(ic.flag("path")); p != dir || mountName(ic.C, p) != vol {
			add("%s: --path=%s is not the directory of the server's socket (%s, volume %s)", ic.Where, ic.flag("path"), dir, vol)
		}
		if uid := ic.flag("uid"); uid != strconv.FormatInt(user, 10) {
			add("%s: --uid=%s is not the server's runAsUser %d, which must own %s to create its socket there", ic.Where, uid, user, dir)
		}
		return
	}
	add("%s: runs as user %d with --uds-name=%s in a hostPath directory, which the kubelet creates root-owned, but no init container runs socket-dir to give it that directory", c.Where, user, c.flag("uds-name"))
}
