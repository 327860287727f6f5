package options

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLeaseFlags(t *testing.T) {
	o, out := parse(t, "--lease-label-selector=k8s-app=konnectivity-server", "--lease-gc-interval=10s")
	if o.EnableLeases || o.LeaseDuration != 15*time.Second || o.LeaseRenewalInterval != 5*time.Second || o.LeaseNamespace != "kube-system" {
		t.Errorf("lease defaults: enabled %v, duration %v, renewal %v, namespace %q", o.EnableLeases, o.LeaseDuration, o.LeaseRenewalInterval, o.LeaseNamespace)
	}
	for _, want := range []string{"--lease-label-selector has been deprecated, ignored", "--lease-gc-interval has been deprecated, ignored"} {
		if !strings.Contains(out, want) {
			t.Errorf("parse output lacks %q:\n%s", want, out)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--lease-duration=1500ms"}, "--lease-duration=1.5s: give whole seconds"},
		{[]string{"--lease-duration=0s"}, "--lease-duration=0s: give whole seconds, at least 1s"},
		{[]string{"--lease-renewal-interval=15s"}, "--lease-renewal-interval=15s: must be positive and shorter than --lease-duration=15s"},
		{[]string{"--lease-renewal-interval=0s"}, "--lease-renewal-interval=0s: must be positive"},
		{[]string{"--lease-namespace=Kube_System"}, `--lease-namespace="Kube_System": not a namespace name`},
	} {
		o, _ := parse(t, append(append(baseArgs(t), "--enable-lease-controller"), tc.args...)...)
		errs := o.Validate()
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("%v: Validate = %v, want one error saying %q", tc.args, errs, tc.want)
		}
		// Without --enable-lease-controller the lease flags are not used.
		o, _ = parse(t, append(baseArgs(t), tc.args...)...)
		if errs := o.Validate(); len(errs) != 0 {
			t.Errorf("%v without --enable-lease-controller: Validate = %v", tc.args, errs)
		}
	}
}

func TestLeaseConfig(t *testing.T) {
	o, _ := parse(t, append(baseArgs(t), "--enable-lease-controller")...)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatal(errors.Join(errs...))
	}
	_, err := o.Config()
	if err == nil || !strings.Contains(err.Error(), "--enable-lease-controller keeps Leases through the Kubernetes API, but the server has no API access") {
		t.Errorf("Config without API access = %v", err)
	}

	api := newFakeAPIServer(t)
	o, _ = parse(t, append(baseArgs(t), "--enable-lease-controller", "--kubeconfig="+writeKubeconfig(t, api.Server),
		"--lease-duration=30s", "--lease-renewal-interval=10s", "--lease-namespace=edge", "--server-count=2")...)
	if errs := o.Validate(); len(errs) != 0 {
		t.Fatal(errors.Join(errs...))
	}
	cfg, err := o.Config()
	if err != nil {
		t.Fatal(err)
	}
	l := cfg.Leases
	if l == nil || l.Client == nil || l.Namespace != "edge" || l.Duration != 30*time.Second || l.RenewInterval != 10*time.Second || cfg.ServerCount != 2 {
		t.Errorf("Leases = %+v, ServerCount %d", l, cfg.ServerCount)
	}

	o, _ = parse(t, baseArgs(t)...)
	if cfg, err := o.Config(); err != nil || cfg.Leases != nil {
		t.Errorf("without --enable-lease-controller: Leases = %+v, err %v", cfg.Leases, err)
	}
}

// TestLeasesUseTheKubeconfig: --kubeconfig is not reported unused when only
// the Leases need it.
func TestLeasesUseTheKubeconfig(t *testing.T) {
	args := []string{"--uds-name=/s", "--server-port=0", "--cluster-cert=c", "--cluster-key=k", "--kubeconfig=/k", "--ports-configmap=", "--agent-identity=none"}
	o, _ := parse(t, args...)
	if got := strings.Join(o.Warnings(), "\n"); !strings.Contains(got, "--kubeconfig is set but unused") {
		t.Errorf("without Leases, warnings lack the unused kubeconfig:\n%s", got)
	}
	o, _ = parse(t, append(args, "--enable-lease-controller")...)
	if got := strings.Join(o.Warnings(), "\n"); strings.Contains(got, "--kubeconfig is set but unused") {
		t.Errorf("with Leases, --kubeconfig is reported unused:\n%s", got)
	}
}
