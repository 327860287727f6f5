package controlplane

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Tools are the programs of the control plane, built from the modules
// under e2e/tools (never from edge-tunnel's own go.mod) or found on the
// machine.
type Tools struct {
	KubeAPIServer  string
	Kubectl        string
	KubeletStandin string
	MetricsServer  string
	Prometheus     string
	Etcd           string
	// KubernetesVersion is the k8s.io/kubernetes version of e2e/tools/k8s.
	KubernetesVersion string
}

// CacheDir is where built tools are kept between runs:
// $E2E_CACHE, else $HOME/.cache/edge-tunnel-e2e.
func CacheDir() (string, error) {
	if d := os.Getenv("E2E_CACHE"); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no E2E_CACHE and no home directory for the tool cache: %w", err)
	}
	return filepath.Join(home, ".cache", "edge-tunnel-e2e"), nil
}

// BuildTools builds what is missing from the cache and returns the paths.
// Each cached directory's name carries the versions and a hash of the
// inputs (go.mod, go.sum and, for the kubelet stand-in, its source), so a
// version bump or an edit builds anew and a stale binary is never used.
// Cold, kube-apiserver takes about 5 minutes on 2 cores and Prometheus
// about 3; progress goes to stderr.
func BuildTools(repoRoot string) (Tools, error) {
	cache, err := CacheDir()
	if err != nil {
		return Tools{}, err
	}
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return Tools{}, fmt.Errorf("etcd not found on PATH: install the Debian package etcd-server (hack/e2e.sh does)")
	}
	k8sDir := filepath.Join(repoRoot, "e2e", "tools", "k8s")
	msDir := filepath.Join(repoRoot, "e2e", "tools", "metrics-server")
	promDir := filepath.Join(repoRoot, "e2e", "tools", "prometheus")
	k8sVersion, err := moduleVersion(k8sDir, "k8s.io/kubernetes")
	if err != nil {
		return Tools{}, err
	}
	msVersion, err := moduleVersion(msDir, "sigs.k8s.io/metrics-server")
	if err != nil {
		return Tools{}, err
	}
	k8sHash, err := hashFiles(filepath.Join(k8sDir, "go.mod"), filepath.Join(k8sDir, "go.sum"))
	if err != nil {
		return Tools{}, err
	}
	standinHash, err := hashFiles(filepath.Join(k8sDir, "go.mod"), filepath.Join(k8sDir, "go.sum"), filepath.Join(k8sDir, "kubelet-standin", "main.go"))
	if err != nil {
		return Tools{}, err
	}
	msHash, err := hashFiles(filepath.Join(msDir, "go.mod"), filepath.Join(msDir, "go.sum"))
	if err != nil {
		return Tools{}, err
	}
	promVersion, err := moduleVersion(promDir, "github.com/prometheus/prometheus")
	if err != nil {
		return Tools{}, err
	}
	promHash, err := hashFiles(filepath.Join(promDir, "go.mod"), filepath.Join(promDir, "go.sum"))
	if err != nil {
		return Tools{}, err
	}
	// Module v0.315.0 is Prometheus 3.15.0; --version prints it.
	promLDFlags := "-X github.com/prometheus/common/version.Version=" + prometheusRelease(promVersion)
	k8sLDFlags := strings.Join([]string{
		"-X k8s.io/component-base/version.gitVersion=" + k8sVersion,
		"-X k8s.io/component-base/version.gitMajor=" + major(k8sVersion),
		"-X k8s.io/component-base/version.gitMinor=" + minor(k8sVersion),
		"-X k8s.io/component-base/version.gitTreeState=clean",
		"-X k8s.io/client-go/pkg/version.gitVersion=" + k8sVersion,
	}, " ")
	t := Tools{
		KubeAPIServer:     filepath.Join(cache, "kubernetes-"+k8sVersion+"-"+k8sHash, "kube-apiserver"),
		Kubectl:           filepath.Join(cache, "kubernetes-"+k8sVersion+"-"+k8sHash, "kubectl"),
		KubeletStandin:    filepath.Join(cache, "kubelet-standin-"+standinHash, "kubelet-standin"),
		MetricsServer:     filepath.Join(cache, "metrics-server-"+msVersion+"-"+msHash, "metrics-server"),
		Prometheus:        filepath.Join(cache, "prometheus-"+promVersion+"-"+prometheusTags+"-"+promHash, "prometheus"),
		Etcd:              etcd,
		KubernetesVersion: k8sVersion,
	}
	steps := []struct {
		out, dir, pkg, tags, ldflags, note string
	}{
		{t.KubeAPIServer, k8sDir, "k8s.io/kubernetes/cmd/kube-apiserver", "", k8sLDFlags, "about 5 minutes on 2 cores with an empty Go build cache"},
		{t.Kubectl, k8sDir, "k8s.io/kubernetes/cmd/kubectl", "", k8sLDFlags, "about 30 seconds after kube-apiserver"},
		{t.KubeletStandin, k8sDir, "./kubelet-standin", "", "", "seconds after kube-apiserver"},
		{t.MetricsServer, msDir, "sigs.k8s.io/metrics-server/cmd/metrics-server", "", "", "about 2 minutes with an empty Go build cache"},
		{t.Prometheus, promDir, "github.com/prometheus/prometheus/cmd/prometheus", prometheusTags, promLDFlags, "about 3 minutes with an empty Go build cache"},
	}
	for _, s := range steps {
		if _, err := os.Stat(s.out); err == nil {
			continue
		}
		if err := goBuild(s.out, s.dir, s.pkg, s.tags, s.ldflags, s.note); err != nil {
			return Tools{}, err
		}
	}
	return t, nil
}

// goBuild builds pkg in module dir to out, through a temporary file so an
// interrupted build never leaves a half-written binary in the cache.
func goBuild(out, dir, pkg, tags, ldflags, note string) error {
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return fmt.Errorf("make tool cache directory: %w", err)
	}
	tmp := out + ".tmp"
	args := []string{"build", "-trimpath", "-o", tmp}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	if ldflags != "" {
		args = append(args, "-ldflags", ldflags)
	}
	args = append(args, pkg)
	fmt.Fprintf(os.Stderr, "controlplane: building %s into %s (%s)\n", pkg, filepath.Dir(out), note)
	start := time.Now()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Run(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), dir, err, log.String())
	}
	if err := os.Rename(tmp, out); err != nil {
		return fmt.Errorf("move %s into the cache: %w", tmp, err)
	}
	fmt.Fprintf(os.Stderr, "controlplane: built %s in %s\n", filepath.Base(out), time.Since(start).Round(time.Second))
	return nil
}

// moduleVersion is the version of module mod that the module in dir
// requires.
func moduleVersion(dir, mod string) (string, error) {
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Version}}", mod)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go list -m %s (in %s): %w: %s", mod, dir, err, out)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		return "", fmt.Errorf("go list -m %s (in %s) printed no version", mod, dir)
	}
	return v, nil
}

func hashFiles(paths ...string) (string, error) {
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", fmt.Errorf("hash build inputs: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(p), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12], nil
}

// prometheusTags are Prometheus' build tags, part of its cache directory's
// name. remove_all_sd leaves out every service-discovery plugin but file
// and http (the tests use static targets), and with them the cloud SDKs
// and client-go, which makes the cold build much shorter. Without the
// builtinassets tag the web UI is not embedded; the HTTP API the tests use
// is all there.
const prometheusTags = "remove_all_sd"

// prometheusRelease turns the module version of Prometheus 3 (v0.3MM.P)
// into its release (3.MM.P); another form is returned as it is.
func prometheusRelease(v string) string {
	rest, ok := strings.CutPrefix(v, "v0.3")
	if !ok || len(rest) < 3 || rest[2] != '.' {
		return v
	}
	return "3." + strings.TrimPrefix(rest[:2], "0") + rest[2:]
}

// major and minor split "v1.35.4" for component-base's version fields.
func major(v string) string { return versionField(v, 0) }
func minor(v string) string { return versionField(v, 1) }

func versionField(v string, i int) string {
	parts := strings.Split(strings.TrimPrefix(v, "v"), ".")
	if i < len(parts) {
		return parts[i]
	}
	return ""
}
