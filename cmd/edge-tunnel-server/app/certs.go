package app

import (
	"github.com/spf13/cobra"

	"github.com/edge-tunnel/edge-tunnel/internal/cli"
	"github.com/edge-tunnel/edge-tunnel/pkg/certgen"
)

// newCertsCommand returns `edge-tunnel-server certs`, which writes a CA and
// every certificate the manifests mount, as files and optionally as Secret
// manifests, for clusters without cert-manager.
func newCertsCommand() *cobra.Command {
	o := &certgen.Options{Namespace: "kube-system", FrontendHosts: certgen.DefaultFrontendHosts}
	cmd := &cobra.Command{
		Use:   "certs --out-dir DIR --server-hosts NAME[,NAME...]",
		Short: "Write a CA and the certificates of the server, the agents and the TCP frontend",
		Long: `certs makes the certificates edge-tunnel's manifests mount (docs/certificates.md):
a CA (ca.crt, ca.key; or the one given with --ca-cert and --ca-key) and, signed
by it, server.crt/.key for the agent port (names: --server-hosts, what agents
dial), agent.crt/.key for the agents, frontend.crt/.key for the TCP frontend
(names: --frontend-hosts) and frontend-client.crt/.key for its clients
(kube-apiserver's egress, the edge-tunnel-proxy sidecar). Keys are ECDSA P-256;
leaf certificates are valid for a year, the CA for ten.

With --secrets it also writes them as Kubernetes Secrets (type kubernetes.io/tls,
keys tls.crt, tls.key and ca.crt) for kubectl apply. The CA key is never put in
a Secret: keep ca.key to issue new certificates from the same CA later.`,
		Example: `  edge-tunnel-server certs --out-dir ./pki --server-hosts edge-tunnel.example.com --secrets - | kubectl apply -f -
  # a year later: new leaves from the same CA
  edge-tunnel-server certs --out-dir ./pki-2 --ca-cert ./pki/ca.crt --ca-key ./pki/ca.key --server-hosts edge-tunnel.example.com --secrets -`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return certgen.Write(*o, cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.OutDir, "out-dir", o.OutDir, "Directory for the certificate and key files (created if missing). Required.")
	fs.StringSliceVar(&o.ServerHosts, "server-hosts", o.ServerHosts, "DNS names and IP addresses of the agent port's certificate: what agents dial (server-host in ConfigMap edge-tunnel-agent-config). Required.")
	fs.StringSliceVar(&o.FrontendHosts, "frontend-hosts", o.FrontendHosts, "DNS names and IP addresses of the TCP frontend's certificate: what kube-apiserver and the sidecar dial.")
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Namespace of the Secrets written with --secrets.")
	fs.StringVar(&o.CACert, "ca-cert", o.CACert, "Sign with this CA certificate (PEM) instead of making a new CA. Needs --ca-key.")
	fs.StringVar(&o.CAKey, "ca-key", o.CAKey, "Private key of --ca-cert (PEM).")
	fs.StringVar(&o.Secrets, "secrets", o.Secrets, "Also write the Secrets as YAML manifests: - for stdout, or a file path.")
	return cmd
}
