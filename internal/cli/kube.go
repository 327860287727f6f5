package cli

import (
	"errors"
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// ErrNoInCluster wraps the reason a pod's in-cluster API config is
// unusable (no ServiceAccount token mounted, say), which a command may
// treat as "no API access" rather than as a failure.
var ErrNoInCluster = errors.New("running in a pod, but its in-cluster API config is unusable")

// KubeClient is how edge-tunnel's commands reach the Kubernetes API: with
// kubeconfig when given, else with the pod's in-cluster config when
// running in a pod ($KUBERNETES_SERVICE_HOST set, as the kubelet does),
// else not at all (nil, nil). userAgent names the command in the API
// server's logs and audit.
func KubeClient(kubeconfig, userAgent string, getenv func(string) string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		if rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
	case getenv("KUBERNETES_SERVICE_HOST") != "":
		if rc, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoInCluster, err)
		}
	default:
		return nil, nil
	}
	rc = rest.CopyConfig(rc)
	rc.UserAgent = userAgent
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("a Kubernetes client (--kubeconfig %q): %w", kubeconfig, err)
	}
	return client, nil
}
