package manifests

import (
	"net"
	"net/url"
	"os"
	"path"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// TestCrossReferences checks what ties separate files together: the
// kube-apiserver files name the socket and the frontend the server serves,
// the sidecar dials the frontend's Service, and proxy URLs name the proxy's
// Service and port.
func TestCrossReferences(t *testing.T) {
	flags := binaryFlags()
	containerOf := func(o *objects, bin string) *container {
		t.Helper()
		for _, w := range workloads(o) {
			for i := range w.Template.Spec.Containers {
				c := &w.Template.Spec.Containers[i]
				if strings.HasPrefix(c.Image, imagePrefix+bin+":") {
					return checkContainer(w, c, flags, func(string, ...any) {})
				}
			}
		}
		t.Fatalf("%s: no %s container", o.Dir, bin)
		return nil
	}
	serviceURL := func(o *objects, portName string) (host string, port int32) {
		t.Helper()
		for _, s := range o.Services {
			if s.Spec.Type != corev1.ServiceTypeClusterIP && s.Spec.Type != "" {
				continue
			}
			for _, p := range s.Spec.Ports {
				if p.Name == portName {
					return s.Name + "." + s.Namespace + ".svc", p.Port
				}
			}
		}
		t.Fatalf("%s: no ClusterIP Service with a port named %s", o.Dir, portName)
		return "", 0
	}

	base := render(t, "base")
	srv := containerOf(base, "edge-tunnel-server")
	uds := srv.flag("uds-name")
	for _, f := range []string{"apiserver/egress-selector-grpc.yaml", "apiserver/egress-selector-http-connect.yaml"} {
		if got, _ := egressTransport(t, f); got != uds {
			t.Errorf("%s: udsName %q, but the server listens on --uds-name=%s", f, got, uds)
		}
	}
	patch := readYAML[corev1.Pod](t, "apiserver/kubeadm-patches/kube-apiserver+strategic.yaml")
	mounted := false
	for _, m := range patch.Spec.Containers[0].VolumeMounts {
		for _, v := range patch.Spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == path.Dir(uds) && m.MountPath == path.Dir(uds) {
				mounted = true
			}
		}
	}
	if !mounted {
		t.Errorf("the kubeadm patch does not mount %s (the directory of --uds-name) from the host", path.Dir(uds))
	}

	// The proxy: the server's --proxy-port behind the ClusterIP Service,
	// as the Prometheus example names it.
	proxyHost, proxyPort := serviceURL(base, "proxy")
	if strconv.Itoa(int(proxyPort)) != srv.flag("proxy-port") {
		t.Errorf("Service port proxy %d, server --proxy-port=%s", proxyPort, srv.flag("proxy-port"))
	}
	var scrape struct {
		ScrapeConfigs []struct {
			JobName  string `json:"job_name"`
			ProxyURL string `json:"proxy_url"`
		} `json:"scrape_configs"`
	}
	b, err := os.ReadFile("components/prometheus-scrape/scrape-configs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &scrape); err != nil {
		t.Fatalf("scrape-configs.yaml: %v", err)
	}
	if len(scrape.ScrapeConfigs) == 0 {
		t.Error("scrape-configs.yaml has no scrape_configs")
	}
	for _, j := range scrape.ScrapeConfigs {
		if want := "http://" + net.JoinHostPort(proxyHost, strconv.Itoa(int(proxyPort))); j.ProxyURL != want {
			t.Errorf("scrape job %s: proxy_url %q, want %q", j.JobName, j.ProxyURL, want)
		}
	}

	// The TCP frontend, dialed by kube-apiserver (mTLS file) and the sidecar.
	tcp := render(t, "examples/tcp-frontend")
	fsrv := containerOf(tcp, "edge-tunnel-server")
	feHost, fePort := serviceURL(tcp, "frontend")
	if strconv.Itoa(int(fePort)) != fsrv.flag("server-port") {
		t.Errorf("Service port frontend %d, server --server-port=%s", fePort, fsrv.flag("server-port"))
	}
	_, mtlsURL := egressTransport(t, "apiserver/egress-selector-http-connect-mtls.yaml")
	u, err := url.Parse(mtlsURL)
	if err != nil || u.Scheme != "https" || u.Host != net.JoinHostPort(feHost, strconv.Itoa(int(fePort))) {
		t.Errorf("egress-selector-http-connect-mtls.yaml: url %q, want https://%s:%d (err %v)", mtlsURL, feHost, fePort, err)
	}

	ms := render(t, "examples/metrics-server")
	side := containerOf(ms, "edge-tunnel-proxy")
	if side.flag("server-host") != feHost || side.flag("server-port") != strconv.Itoa(int(fePort)) {
		t.Errorf("sidecar dials %s:%s, the frontend Service is %s:%d", side.flag("server-host"), side.flag("server-port"), feHost, fePort)
	}
	if b := side.flag("bind-address"); b != "127.0.0.1" {
		t.Errorf("sidecar --bind-address=%s: keep it on loopback, it does not authenticate its clients", b)
	}
	want := "http://" + net.JoinHostPort(side.flag("bind-address"), side.flag("port"))
	found := false
	for _, c := range side.W.Template.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == "HTTPS_PROXY" {
				found = true
				if e.Value != want {
					t.Errorf("container %s: HTTPS_PROXY=%s, the sidecar listens on %s", c.Name, e.Value, want)
				}
			}
		}
	}
	if !found {
		t.Error("metrics-server example: no container has HTTPS_PROXY")
	}
	if v := mountFor(side.W, side.C, side.flag("client-cert")); v == nil || v.Secret == nil || v.Secret.SecretName != "edge-tunnel-proxy-client" {
		t.Errorf("the sidecar's client certificate is not from Secret edge-tunnel-proxy-client (what cert-manager and `edge-tunnel-server certs` make)")
	}
}

// egressConfig is kube-apiserver's EgressSelectorConfiguration, the fields
// these files use (decoded strictly: a misspelt field fails).
type egressConfig struct {
	APIVersion       string `json:"apiVersion"`
	Kind             string `json:"kind"`
	EgressSelections []struct {
		Name       string `json:"name"`
		Connection struct {
			ProxyProtocol string              `json:"proxyProtocol"`
			Transport     *egressTransportCfg `json:"transport"`
		} `json:"connection"`
	} `json:"egressSelections"`
}

type egressTransportCfg struct {
	UDS *struct {
		UDSName string `json:"udsName"`
	} `json:"uds"`
	TCP *struct {
		URL       string `json:"url"`
		TLSConfig struct {
			CABundle   string `json:"caBundle"`
			ClientCert string `json:"clientCert"`
			ClientKey  string `json:"clientKey"`
		} `json:"tlsConfig"`
	} `json:"tcp"`
}

// egressTransport reads the one egress selection of an
// EgressSelectorConfiguration file and returns its UNIX socket path or TCP URL.
func egressTransport(t *testing.T, file string) (udsName, tcpURL string) {
	t.Helper()
	cfg := readYAML[egressConfig](t, file)
	if cfg.Kind != "EgressSelectorConfiguration" || cfg.APIVersion != "apiserver.k8s.io/v1beta1" || len(cfg.EgressSelections) != 1 {
		t.Fatalf("%s: want one egress selection in an apiserver.k8s.io/v1beta1 EgressSelectorConfiguration", file)
	}
	sel := cfg.EgressSelections[0]
	tr := sel.Connection.Transport
	if sel.Name != "cluster" || (sel.Connection.ProxyProtocol != "GRPC" && sel.Connection.ProxyProtocol != "HTTPConnect") || tr == nil || (tr.UDS == nil) == (tr.TCP == nil) {
		t.Fatalf("%s: want selection cluster with proxyProtocol GRPC or HTTPConnect and one transport (uds or tcp)", file)
	}
	if tr.UDS != nil {
		return tr.UDS.UDSName, ""
	}
	c := tr.TCP.TLSConfig
	if c.CABundle == "" || c.ClientCert == "" || c.ClientKey == "" {
		t.Errorf("%s: the TCP frontend needs mutual TLS: set caBundle, clientCert and clientKey", file)
	}
	return "", tr.TCP.URL
}

// readYAML decodes file strictly, so a misspelt field fails.
func readYAML[T any](t *testing.T, file string) T {
	t.Helper()
	var v T
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}
