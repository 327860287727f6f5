package controlplane_test

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/edge-tunnel/edge-tunnel/e2e/controlplane"
	"github.com/edge-tunnel/edge-tunnel/pkg/certgen"
)

// serverSA and agentUser are who edge-tunnel-server and edge-tunnel-agent
// are in the cluster.
const (
	serverSA  = "system:serviceaccount:kube-system:edge-tunnel-server"
	agentUser = "system:serviceaccount:kube-system:edge-tunnel-agent"
)

// TestManifests puts manifests/ in front of a real kube-apiserver: a
// server-side dry run of every kustomization (base, examples with every
// component, grafana), then a real apply of the base and of the Secrets
// `edge-tunnel-server certs` writes, and the server's RBAC checked with
// kubectl auth can-i as its ServiceAccount, for what it needs and for what
// it must not have.
func TestManifests(t *testing.T) {
	setup(t)
	c := controlplane.NewCluster(t, tools, controlplane.Options{Nodes: 1})
	_, k := c.StartAPIServer(t, controlplane.EgressModes[0])

	// cert-manager's kinds (stand-in CRDs, see the file) and the namespace
	// the Prometheus example uses.
	k.MustRun(t, "apply", "-f", filepath.Join("testdata", "cert-manager-crds.yaml"))
	k.MustRun(t, "wait", "--for=condition=Established", "--timeout=30s",
		"crd/issuers.cert-manager.io", "crd/certificates.cert-manager.io")
	k.Apply(t, "apiVersion: v1\nkind: Namespace\nmetadata: {name: monitoring}\n")

	roots := kustomizations(t, filepath.Join("..", "..", "manifests"))
	t.Logf("kustomizations: %v", roots)
	for _, dir := range roots {
		t.Run("dry-run/"+filepath.Base(dir), func(t *testing.T) {
			r := k.Run(controlplane.RunOptions{}, "apply", "--dry-run=server", "-k", dir)
			if r.Err != nil || r.ExitCode != 0 {
				t.Fatalf("%s", r)
			}
			t.Logf("%s", strings.TrimSpace(r.Stdout))
		})
	}

	base := filepath.Join("..", "..", "manifests", "base")
	k.MustRun(t, "apply", "-k", base)
	for _, obj := range []string{
		"deployment/edge-tunnel-server", "poddisruptionbudget/edge-tunnel-server", "daemonset/edge-tunnel-agent",
		"service/edge-tunnel-server", "service/edge-tunnel-server-agents", "configmap/edge-tunnel-server-cfg",
		"configmap/edge-tunnel-agent-config", "serviceaccount/edge-tunnel-server", "serviceaccount/edge-tunnel-agent",
		"role/edge-tunnel-server", "rolebinding/edge-tunnel-server",
		"role/edge-tunnel-server-agent-pods", "rolebinding/edge-tunnel-server-agent-pods",
		"clusterrole/edge-tunnel-server-agent-identity", "clusterrolebinding/edge-tunnel-server-agent-identity",
	} {
		k.MustRun(t, "get", "-n", "kube-system", obj)
	}
	// What is in the cluster is what the manifests say: nothing defaulted
	// or mutated into a difference a later apply would fight. (kubectl apply
	// reports the PodDisruptionBudget "configured" every time, because its
	// selector is patched with $patch: replace; diff shows there is no change.)
	if d := k.Run(controlplane.RunOptions{}, "diff", "-k", base); d.Err != nil || d.ExitCode != 0 {
		t.Errorf("kubectl diff after apply shows differences (exit 1) or failed:\n%s", d)
	}

	t.Run("certs-secrets", func(t *testing.T) {
		var secrets bytes.Buffer
		o := certgen.Options{OutDir: t.TempDir(), ServerHosts: []string{"edge-tunnel.example.com"},
			FrontendHosts: certgen.DefaultFrontendHosts, Namespace: "kube-system", Secrets: "-"}
		if err := certgen.Write(o, &secrets); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"apply", "--dry-run=server", "-f", "-"}, {"apply", "-f", "-"}} {
			r := k.Run(controlplane.RunOptions{Stdin: secrets.String()}, args...)
			if r.Err != nil || r.ExitCode != 0 {
				t.Fatalf("%s", r)
			}
		}
		for _, cert := range certgen.Certs {
			r := k.MustRun(t, "get", "secret", "-n", "kube-system", cert.Secret, "-o", "jsonpath={.type} {.data.ca\\.crt}")
			if !strings.HasPrefix(r.Stdout, "kubernetes.io/tls ") || len(r.Stdout) < 100 {
				t.Errorf("Secret %s: %q", cert.Secret, r.Stdout)
			}
		}
	})

	t.Run("rbac", func(t *testing.T) {
		canI := func(sa string, want bool, args ...string) { t.Helper(); canI(t, k, sa, want, args...) }
		// What the server calls: get, list and watch of its one ConfigMap.
		for _, verb := range []string{"get", "list", "watch"} {
			canI(serverSA, true, verb, "configmaps/edge-tunnel-server-cfg")
		}
		// The replica Leases (--enable-lease-controller): its own and the
		// others', in kube-system.
		for _, verb := range []string{"get", "list", "create", "update", "delete"} {
			canI(serverSA, true, verb, "leases.coordination.k8s.io")
		}
		canI(serverSA, true, "update", "leases.coordination.k8s.io/edge-tunnel-server-7d9c6-x2k4p")
		// Agent identity by ServiceAccount token (--agent-identity=token):
		// TokenReviews, the Node an agent claims, the agents' Pods.
		canI(serverSA, true, "create", "tokenreviews.authentication.k8s.io")
		canI(serverSA, true, "get", "nodes/edge-1")
		canI(serverSA, true, "get", "pods/edge-tunnel-agent-x2k4p")
		// Nothing more.
		for _, args := range [][]string{
			{"list", "nodes"},
			{"watch", "nodes"},
			{"update", "nodes/edge-1"},
			{"get", "pods", "--namespace", "default"},
			{"watch", "pods"},
			{"create", "tokenrequests.authentication.k8s.io"},
			{"create", "serviceaccounts/edge-tunnel-agent/token"},
			{"watch", "leases.coordination.k8s.io"},
			{"patch", "leases.coordination.k8s.io"},
			{"deletecollection", "leases.coordination.k8s.io"},
			{"get", "leases.coordination.k8s.io", "--namespace", "default"},
			{"create", "leases.coordination.k8s.io", "--namespace", "kube-node-lease"},
			{"list", "secrets"},
			{"get", "secrets/edge-tunnel-server-certs"},
			{"get", "configmaps/edge-tunnel-agent-config"},
			{"list", "configmaps"},
			{"update", "configmaps/edge-tunnel-server-cfg"},
			{"delete", "configmaps/edge-tunnel-server-cfg"},
			{"create", "configmaps"},
			{"list", "pods"},
			{"get", "configmaps/edge-tunnel-server-cfg", "--namespace", "default"},
		} {
			canI(serverSA, false, args...)
		}
		// The agents have no API access at all (no token is even mounted),
		// not even to the replica Leases unless components/agent-lease-count
		// is applied (below).
		canI(agentUser, false, "get", "configmaps/edge-tunnel-server-cfg")
		for _, verb := range []string{"list", "watch"} {
			canI(agentUser, false, verb, "leases.coordination.k8s.io")
		}
	})

	// Agents that count the Leases themselves (--count-server-leases):
	// the example applied for real over the base may list and watch Leases
	// in kube-system, and nothing else.
	t.Run("agent-lease-count", func(t *testing.T) {
		canI := func(sa string, want bool, args ...string) { t.Helper(); canI(t, k, sa, want, args...) }
		ex := filepath.Join("..", "..", "manifests", "examples", "agent-lease-count")
		k.MustRun(t, "apply", "-k", ex)
		for _, obj := range []string{"role/edge-tunnel-agent-leases", "rolebinding/edge-tunnel-agent-leases"} {
			k.MustRun(t, "get", "-n", "kube-system", obj)
		}
		if d := k.Run(controlplane.RunOptions{}, "diff", "-k", ex); d.Err != nil || d.ExitCode != 0 {
			t.Errorf("kubectl diff after apply shows differences (exit 1) or failed:\n%s", d)
		}
		r := k.MustRun(t, "get", "-n", "kube-system", "daemonset/edge-tunnel-agent", "-o",
			"jsonpath={.spec.template.spec.containers[0].args} {.spec.template.spec.containers[0].volumeMounts[*].mountPath}")
		for _, want := range []string{"--count-server-leases", "/var/run/secrets/kubernetes.io/serviceaccount"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("the applied DaemonSet lacks %s: %s", want, r.Stdout)
			}
		}
		for _, verb := range []string{"list", "watch"} {
			canI(agentUser, true, verb, "leases.coordination.k8s.io")
		}
		for _, args := range [][]string{
			{"get", "leases.coordination.k8s.io"},
			{"get", "leases.coordination.k8s.io/edge-tunnel-server-7d9c6-x2k4p"},
			{"create", "leases.coordination.k8s.io"},
			{"update", "leases.coordination.k8s.io/edge-tunnel-server-7d9c6-x2k4p"},
			{"patch", "leases.coordination.k8s.io/edge-tunnel-server-7d9c6-x2k4p"},
			{"delete", "leases.coordination.k8s.io/edge-tunnel-server-7d9c6-x2k4p"},
			{"deletecollection", "leases.coordination.k8s.io"},
			{"list", "leases.coordination.k8s.io", "--namespace", "default"},
			{"watch", "leases.coordination.k8s.io", "--namespace", "kube-node-lease"},
			{"list", "configmaps"},
			{"get", "configmaps/edge-tunnel-agent-config"},
			{"list", "secrets"},
			{"get", "secrets/edge-tunnel-agent-certs"},
			{"list", "nodes"},
			{"get", "nodes/edge-1"},
			{"list", "pods"},
			{"create", "serviceaccounts/edge-tunnel-agent/token"},
		} {
			canI(agentUser, false, args...)
		}
		// The server's own rights are untouched by the component.
		canI(serverSA, true, "list", "leases.coordination.k8s.io")
		canI(serverSA, false, "watch", "leases.coordination.k8s.io")
	})
}

// canI checks with kubectl auth can-i, as sa in kube-system unless args
// name another namespace, that sa may (want) or may not do args.
func canI(t *testing.T, k *controlplane.Kubectl, sa string, want bool, args ...string) {
	t.Helper()
	r := k.Run(controlplane.RunOptions{}, append([]string{"auth", "can-i", "--as", sa, "-n", "kube-system"}, args...)...)
	got := strings.TrimSpace(r.Stdout)
	if r.Err != nil || (want && (got != "yes" || r.ExitCode != 0)) || (!want && (got != "no" || r.ExitCode != 1)) {
		t.Errorf("%s may %v: want %v; %s", sa, args, want, r)
	}
}

// kustomizations returns every directory under root that kubectl apply -k
// takes on its own: a kustomization.yaml that is not a Component, and not
// inside another such directory (base/server is part of base).
func kustomizations(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte("\nkind: Component")) {
			dirs = append(dirs, filepath.Dir(p))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("finding kustomizations under %s: %v", root, err)
	}
	sort.Strings(dirs)
	var out []string
	for _, d := range dirs {
		if len(out) > 0 && strings.HasPrefix(d, out[len(out)-1]+string(filepath.Separator)) {
			continue
		}
		out = append(out, d)
	}
	if len(out) < 3 {
		t.Fatalf("only %v under %s", out, root)
	}
	return out
}
