// Package manifests holds no code, only the tests of the kustomize tree next
// to them: every kustomization is rendered with kustomize's own Go API (what
// `kubectl apply -k` runs) and checked against the binaries' real flags, so
// that a renamed flag, a moved port or a probe on the wrong port fails here
// instead of in a cluster. The same tree is applied to a real kube-apiserver
// by the control-plane end-to-end tests (e2e/controlplane).
package manifests

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	agentapp "github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-agent/app"
	proxyapp "github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-proxy/app"
	serverapp "github.com/edge-tunnel/edge-tunnel/cmd/edge-tunnel-server/app"
)

// roots are the kustomizations an operator applies (kubectl apply -k DIR):
// every kustomization.yaml under manifests/ that is not a Component and not
// only a part of another one (base/server is a resource of base).
// Components cannot be rendered on their own; every one of them is used by
// an example (TestEveryComponentHasAnExample).
func roots(t *testing.T) []string {
	t.Helper()
	var dirs []string
	parts := map[string]bool{}
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "kustomization.yaml" {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var k struct {
			Kind      string   `json:"kind"`
			Resources []string `json:"resources"`
		}
		if err := yaml.Unmarshal(b, &k); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if k.Kind != "Component" {
			dirs = append(dirs, filepath.Dir(p))
		}
		for _, r := range k.Resources {
			parts[filepath.Join(filepath.Dir(p), r)] = true
		}
		return nil
	})
	if err != nil || len(dirs) < 2 {
		t.Fatalf("finding the kustomizations: %v (found %v)", err, dirs)
	}
	var out []string
	for _, d := range dirs {
		if !parts[d] || d == "base" {
			out = append(out, d)
		}
	}
	return out
}

// objects is one rendered kustomization, decoded into the API types. Kinds
// the checks do not know stay in Other as generic maps.
type objects struct {
	Dir             string
	Deployments     []*appsv1.Deployment
	DaemonSets      []*appsv1.DaemonSet
	Services        []*corev1.Service
	ConfigMaps      []*corev1.ConfigMap
	ServiceAccounts []*corev1.ServiceAccount
	Roles           []*rbacv1.Role
	RoleBindings    []*rbacv1.RoleBinding
	ClusterRoles    []*rbacv1.ClusterRole
	ClusterBindings []*rbacv1.ClusterRoleBinding
	PDBs            []*policyv1.PodDisruptionBudget
	NetworkPolicies []*networkingv1.NetworkPolicy
	Certificates    []*certificate
	Issuers         []*issuer
	Other           []map[string]any
}

// certificate and issuer are the cert-manager fields the checks read.
type certificate struct {
	Metadata struct{ Name, Namespace string }
	Spec     struct {
		SecretName string                      `json:"secretName"`
		IsCA       bool                        `json:"isCA"`
		DNSNames   []string                    `json:"dnsNames"`
		Usages     []string                    `json:"usages"`
		IssuerRef  struct{ Kind, Name string } `json:"issuerRef"`
	}
}

type issuer struct {
	Metadata struct{ Name, Namespace string }
	Spec     struct {
		SelfSigned *struct{} `json:"selfSigned"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca"`
	}
}

// render builds dir like kubectl apply -k does and decodes every object;
// objects of the core kinds are decoded strictly, so a misspelt field fails.
func render(t *testing.T, dir string) *objects {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	objs := &objects{Dir: dir}
	for _, r := range rm.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatalf("%s: %s: %v", dir, r.CurId(), err)
		}
		strict := func(into any) any {
			if err := yaml.UnmarshalStrict(y, into); err != nil {
				t.Errorf("%s: %s %s: %v", dir, r.GetKind(), r.GetName(), err)
			}
			return into
		}
		loose := func(into any) any {
			if err := yaml.Unmarshal(y, into); err != nil {
				t.Errorf("%s: %s %s: %v", dir, r.GetKind(), r.GetName(), err)
			}
			return into
		}
		switch r.GetKind() {
		case "Deployment":
			objs.Deployments = append(objs.Deployments, strict(&appsv1.Deployment{}).(*appsv1.Deployment))
		case "DaemonSet":
			objs.DaemonSets = append(objs.DaemonSets, strict(&appsv1.DaemonSet{}).(*appsv1.DaemonSet))
		case "Service":
			objs.Services = append(objs.Services, strict(&corev1.Service{}).(*corev1.Service))
		case "ConfigMap":
			objs.ConfigMaps = append(objs.ConfigMaps, strict(&corev1.ConfigMap{}).(*corev1.ConfigMap))
		case "ServiceAccount":
			objs.ServiceAccounts = append(objs.ServiceAccounts, strict(&corev1.ServiceAccount{}).(*corev1.ServiceAccount))
		case "Role":
			objs.Roles = append(objs.Roles, strict(&rbacv1.Role{}).(*rbacv1.Role))
		case "RoleBinding":
			objs.RoleBindings = append(objs.RoleBindings, strict(&rbacv1.RoleBinding{}).(*rbacv1.RoleBinding))
		case "ClusterRole":
			objs.ClusterRoles = append(objs.ClusterRoles, strict(&rbacv1.ClusterRole{}).(*rbacv1.ClusterRole))
		case "ClusterRoleBinding":
			objs.ClusterBindings = append(objs.ClusterBindings, strict(&rbacv1.ClusterRoleBinding{}).(*rbacv1.ClusterRoleBinding))
		case "PodDisruptionBudget":
			objs.PDBs = append(objs.PDBs, strict(&policyv1.PodDisruptionBudget{}).(*policyv1.PodDisruptionBudget))
		case "NetworkPolicy":
			objs.NetworkPolicies = append(objs.NetworkPolicies, strict(&networkingv1.NetworkPolicy{}).(*networkingv1.NetworkPolicy))
		case "Certificate":
			objs.Certificates = append(objs.Certificates, loose(&certificate{}).(*certificate))
		case "Issuer":
			objs.Issuers = append(objs.Issuers, loose(&issuer{}).(*issuer))
		default:
			objs.Other = append(objs.Other, *loose(&map[string]any{}).(*map[string]any))
		}
	}
	return objs
}

// binaryFlags returns a fresh flag set of each edge-tunnel binary, keyed by
// the binary (and image) name: the real commands' flags, defaults included.
// Subcommands' flag sets are keyed "BINARY SUBCOMMAND" (init containers
// run them).
func binaryFlags() map[string]*pflag.FlagSet {
	fs := map[string]*pflag.FlagSet{}
	for _, cmd := range []*cobra.Command{serverapp.NewCommand(), agentapp.NewCommand(), proxyapp.NewCommand()} {
		fs[cmd.Name()] = cmd.Flags()
		for _, sub := range cmd.Commands() {
			fs[cmd.Name()+" "+sub.Name()] = sub.Flags()
		}
	}
	return fs
}

// TestManifests renders every kustomization and checks the invariants.
func TestManifests(t *testing.T) {
	for _, dir := range roots(t) {
		t.Run(dir, func(t *testing.T) {
			objs := render(t, dir)
			for _, p := range check(objs, binaryFlags()) {
				t.Error(p)
			}
		})
	}
}

// TestChecksCatchBreakage proves the checks can fail: the rendered base is
// broken in the ways a refactoring breaks manifests, and each must be
// reported. The first case is a flag renamed in the binary.
func TestChecksCatchBreakage(t *testing.T) {
	cases := []struct {
		name  string
		flags func(map[string]*pflag.FlagSet)
		objs  func(*objects)
		want  string
	}{{
		name: "flag renamed in the server binary",
		flags: func(f map[string]*pflag.FlagSet) {
			f["edge-tunnel-server"] = renamed(f["edge-tunnel-server"], "health-port", "healthz-port")
		},
		want: "edge-tunnel-server has no flag --health-port",
	}, {
		name: "flag misspelt in the manifest",
		objs: func(o *objects) {
			replaceArg(&agentContainer(o).Args, "--proxy-server-port=", "--proxy-srever-port=8091")
		},
		want: "edge-tunnel-agent has no flag --proxy-srever-port",
	}, {
		name: "health port default moved in the agent binary",
		flags: func(f map[string]*pflag.FlagSet) {
			f["edge-tunnel-agent"].Lookup("health-server-port").DefValue = "9999"
			f["edge-tunnel-agent"].Lookup("health-server-port").Value.Set("9999")
		},
		objs: func(o *objects) { removeArg(agentContainer(o), "--health-server-port=") },
		want: "port health is 8093, but the binary listens on 9999",
	}, {
		name: "probe on the wrong port",
		objs: func(o *objects) {
			c := &o.Deployments[0].Spec.Template.Spec.Containers[0]
			c.ReadinessProbe.HTTPGet.Port.StrVal = "agent"
		},
		want: "readinessProbe: port agent is not the health port",
	}, {
		name: "selector does not match the template",
		objs: func(o *objects) {
			o.DaemonSets[0].Spec.Template.Labels = map[string]string{"app": "other"}
		},
		want: "selector app.kubernetes.io/name=edge-tunnel-agent does not match the pod template's labels",
	}, {
		name: "root without a reason",
		objs: func(o *objects) {
			no := false
			o.DaemonSets[0].Spec.Template.Spec.SecurityContext.RunAsNonRoot = &no
		},
		want: "must run as non-root",
	}, {
		name: "agent dials a port the server does not serve",
		objs: func(o *objects) {
			replaceArg(&agentContainer(o).Args, "--proxy-server-port=", "--proxy-server-port=9091")
		},
		want: "--proxy-server-port=9091, but Service edge-tunnel-server-agents serves the agent port on 8091",
	}, {
		name: "lease RBAC missing",
		objs: func(o *objects) {
			r := o.Roles[0]
			r.Rules = slices.DeleteFunc(r.Rules, isLeaseRule)
		},
		want: "no Role bound to ServiceAccount edge-tunnel-server grants get, list, create, update and delete on leases in kube-system",
	}, {
		name: "lease RBAC too wide",
		objs: func(o *objects) {
			for i := range o.Roles[0].Rules {
				if isLeaseRule(o.Roles[0].Rules[i]) {
					o.Roles[0].Rules[i].Verbs = append(o.Roles[0].Rules[i].Verbs, "deletecollection")
				}
			}
		},
		want: `verb "deletecollection" on leases is more than the server needs`,
	}, {
		name: "server count above the replicas with Leases",
		objs: func(o *objects) {
			c := &o.Deployments[0].Spec.Template.Spec.Containers[0]
			c.Args = append(c.Args, "--server-count=3")
		},
		want: "replicas 2 but --server-count=3: with --enable-lease-controller it is the least count",
	}, {
		name: "server back to root",
		objs: func(o *objects) {
			root := int64(0)
			serverContainer(o).SecurityContext.RunAsUser = &root
		},
		want: "container edge-tunnel-server: must run as non-root (runAsNonRoot: true, runAsUser not 0)",
	}, {
		name: "server with a capability",
		objs: func(o *objects) {
			serverContainer(o).SecurityContext.Capabilities.Add = []corev1.Capability{"NET_BIND_SERVICE"}
		},
		want: "container edge-tunnel-server: securityContext.capabilities adds NET_BIND_SERVICE; it may add only []",
	}, {
		name: "server's root file system writable",
		objs: func(o *objects) {
			no := false
			serverContainer(o).SecurityContext.ReadOnlyRootFilesystem = &no
		},
		want: "container edge-tunnel-server: securityContext.readOnlyRootFilesystem must be true",
	}, {
		name: "init container with a capability socket-dir does not need",
		objs: func(o *objects) {
			sc := socketDirContainer(o).SecurityContext
			sc.Capabilities.Add = append(sc.Capabilities.Add, "FOWNER")
		},
		want: "init container socket-dir: securityContext.capabilities adds FOWNER; it may add only [CHOWN]",
	}, {
		name: "init container with a writable root file system",
		objs: func(o *objects) {
			no := false
			socketDirContainer(o).SecurityContext.ReadOnlyRootFilesystem = &no
		},
		want: "init container socket-dir: securityContext.readOnlyRootFilesystem must be true",
	}, {
		name: "no socket-dir init container",
		objs: func(o *objects) { o.Deployments[0].Spec.Template.Spec.InitContainers = nil },
		want: "runs as user 65532 with --uds-name=/etc/kubernetes/konnectivity-server/konnectivity-server.socket in a hostPath directory",
	}, {
		name: "socket-dir for another user",
		objs: func(o *objects) { replaceArg(&socketDirContainer(o).Args, "--uid=", "--uid=1000") },
		want: "--uid=1000 is not the server's runAsUser 65532",
	}, {
		name: "socket-dir on another directory",
		objs: func(o *objects) {
			replaceArg(&socketDirContainer(o).Args, "--path=", "--path=/etc/kubernetes/pki")
		},
		want: "--path=/etc/kubernetes/pki is not a hostPath mount of this container",
	}, {
		name: "socket-dir flag renamed in the binary",
		flags: func(f map[string]*pflag.FlagSet) {
			f["edge-tunnel-server socket-dir"] = renamed(f["edge-tunnel-server socket-dir"], "uid", "user")
		},
		want: "socket-dir has no flag --uid",
	}, {
		name: "Secret unreadable by the server's user",
		objs: func(o *objects) {
			for _, v := range o.Deployments[0].Spec.Template.Spec.Volumes {
				if v.Secret != nil {
					m := int32(0o400)
					v.Secret.DefaultMode = &m
				}
			}
		},
		want: "cannot read Secret edge-tunnel-server-certs (volume certs): defaultMode 0400",
	}}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, "base")
			flags := binaryFlags()
			if tc.flags != nil {
				tc.flags(flags)
			}
			if tc.objs != nil {
				tc.objs(objs)
			}
			wantProblem(t, check(objs, flags), tc.want)
		})
	}
}

// TestEveryComponentHasAnExample keeps the render checks complete: a
// component is rendered only through a kustomization that uses it.
func TestEveryComponentHasAnExample(t *testing.T) {
	comps, err := filepath.Glob("components/*/kustomization.yaml")
	if err != nil || len(comps) == 0 {
		t.Fatalf("no components/*/kustomization.yaml (err %v)", err)
	}
	used := map[string]bool{}
	for _, dir := range roots(t) {
		b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k struct {
			Components []string `json:"components"`
		}
		if err := yaml.Unmarshal(b, &k); err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for _, c := range k.Components {
			used[filepath.Clean(filepath.Join(dir, c))] = true
		}
	}
	var missing []string
	for _, c := range comps {
		if !used[filepath.Dir(c)] {
			missing = append(missing, filepath.Dir(c))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("components no example uses (add one under examples/ so that it is rendered and applied in the tests): %v", missing)
	}
}

// renamed returns a copy of fs where flag old is called new, as a rename in
// the binary would leave it.
func renamed(fs *pflag.FlagSet, old, new string) *pflag.FlagSet {
	out := pflag.NewFlagSet(fs.Name(), pflag.ContinueOnError)
	fs.VisitAll(func(f *pflag.Flag) {
		c := *f
		if c.Name == old {
			c.Name = new
		}
		out.AddFlag(&c)
	})
	return out
}

func serverContainer(o *objects) *corev1.Container {
	return &o.Deployments[0].Spec.Template.Spec.Containers[0]
}

func socketDirContainer(o *objects) *corev1.Container {
	return &o.Deployments[0].Spec.Template.Spec.InitContainers[0]
}

func agentContainer(o *objects) *corev1.Container {
	return &o.DaemonSets[0].Spec.Template.Spec.Containers[0]
}

func replaceArg(args *[]string, prefix, with string) {
	for i, a := range *args {
		if strings.HasPrefix(a, prefix) {
			(*args)[i] = with
		}
	}
}

func removeArg(c *corev1.Container, prefix string) {
	var kept []string
	for _, a := range c.Args {
		if !strings.HasPrefix(a, prefix) {
			kept = append(kept, a)
		}
	}
	c.Args = kept
}
