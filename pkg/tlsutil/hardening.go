package tlsutil

import (
	"crypto/tls"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/pflag"
)

// Hardening narrows what the TLS endpoints of a command negotiate: the
// lowest protocol version and, for TLS 1.2, the cipher suites. TLS 1.3
// suites cannot be chosen in Go (all of them are always enabled, and all
// are sound), so the suites only matter for TLS 1.2 connections.
type Hardening struct {
	// MinVersion is tls.VersionTLS12 or tls.VersionTLS13; 0 means 1.2.
	MinVersion uint16
	// CipherSuites are TLS 1.2 suites in preference order; nil keeps Go's
	// defaults, which have no insecure suite.
	CipherSuites []uint16
}

// Apply sets h on c, a config from ServerConfig or ClientConfig or a clone
// of one; nil is ignored. Configs derived from c later (grpc's and the
// frontends' clones) keep the settings.
func (h Hardening) Apply(c *tls.Config) {
	if c == nil {
		return
	}
	c.MinVersion = max(h.MinVersion, tls.VersionTLS12)
	if h.CipherSuites != nil {
		c.CipherSuites = slices.Clone(h.CipherSuites)
	}
}

// Version names, as kube-apiserver's --tls-min-version takes them.
const (
	VersionTLS12 = "VersionTLS12"
	VersionTLS13 = "VersionTLS13"
)

// ParseMinVersion reads a --tls-min-version value: VersionTLS12 or
// VersionTLS13. TLS 1.0 and 1.1 are refused, not merely discouraged.
func ParseMinVersion(name string) (uint16, error) {
	switch name {
	case VersionTLS12, "":
		return tls.VersionTLS12, nil
	case VersionTLS13:
		return tls.VersionTLS13, nil
	case "VersionTLS10", "VersionTLS11":
		return 0, fmt.Errorf("--tls-min-version=%s: TLS 1.0 and 1.1 are insecure and not supported; use %s (the default) or %s", name, VersionTLS12, VersionTLS13)
	}
	return 0, fmt.Errorf("--tls-min-version=%q is not a TLS version; use %s (the default) or %s", name, VersionTLS12, VersionTLS13)
}

// ParseCipherSuites reads --tls-cipher-suites: TLS 1.2 suite names as
// tls.CipherSuiteName prints them (kube-apiserver's names, the short
// CHACHA20_POLY1305 ones included). Insecure suites, TLS 1.3 suites and
// unknown names are refused, each error saying which suites to choose from.
func ParseCipherSuites(names []string) ([]uint16, error) {
	if len(names) == 0 {
		return nil, nil
	}
	ids := make([]uint16, 0, len(names))
	for _, name := range names {
		name = strings.TrimSpace(name)
		if id, ok := secureSuites()[name]; ok {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
			continue
		}
		for _, s := range tls.InsecureCipherSuites() {
			if s.Name == name {
				return nil, fmt.Errorf("--tls-cipher-suites: %s is insecure (Go lists it in tls.InsecureCipherSuites) and not supported; choose from %s", name, strings.Join(SecureCipherSuiteNames(), ", "))
			}
		}
		for _, s := range tls.CipherSuites() {
			if s.Name == name {
				return nil, fmt.Errorf("--tls-cipher-suites: %s is a TLS 1.3 suite, which cannot be chosen (TLS 1.3 always offers all of them); list TLS 1.2 suites: %s", name, strings.Join(SecureCipherSuiteNames(), ", "))
			}
		}
		return nil, fmt.Errorf("--tls-cipher-suites: %q is not a TLS 1.2 cipher suite; choose from %s", name, strings.Join(SecureCipherSuiteNames(), ", "))
	}
	return ids, nil
}

// secureSuites maps the names of the secure TLS 1.2 suites to their IDs.
func secureSuites() map[string]uint16 {
	m := map[string]uint16{}
	for _, s := range tls.CipherSuites() {
		if slices.Contains(s.SupportedVersions, tls.VersionTLS12) {
			m[s.Name] = s.ID
		}
	}
	// The names Go used before 1.16, which kube-apiserver still accepts.
	m["TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305"] = tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
	m["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305"] = tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
	return m
}

// SecureCipherSuiteNames lists the suites --tls-cipher-suites accepts,
// under their current names, sorted.
func SecureCipherSuiteNames() []string {
	var names []string
	for _, s := range tls.CipherSuites() {
		if slices.Contains(s.SupportedVersions, tls.VersionTLS12) {
			names = append(names, s.Name)
		}
	}
	slices.Sort(names)
	return names
}

// Flags are the command-line form of Hardening, named as kube-apiserver's.
type Flags struct {
	MinVersion   string
	CipherSuites []string
}

// AddFlags registers --tls-min-version and --tls-cipher-suites; endpoints
// says which connections of the command they apply to.
func (f *Flags) AddFlags(fs *pflag.FlagSet, endpoints string) {
	if f.MinVersion == "" {
		f.MinVersion = VersionTLS12
	}
	fs.StringVar(&f.MinVersion, "tls-min-version", f.MinVersion,
		"Lowest TLS version of "+endpoints+": "+VersionTLS12+" or "+VersionTLS13+". TLS 1.0 and 1.1 are not supported.")
	fs.StringSliceVar(&f.CipherSuites, "tls-cipher-suites", f.CipherSuites,
		"Comma-separated TLS 1.2 cipher suites of "+endpoints+", in preference order, named as Go's tls.CipherSuiteName prints them (as for kube-apiserver). "+
			"Empty means Go's defaults. Insecure suites are refused. TLS 1.3 connections always use TLS 1.3's own suites. Possible values: "+
			strings.Join(SecureCipherSuiteNames(), ", ")+".")
}

// Validate checks both flags; each error names the flag and the values it
// takes.
func (f *Flags) Validate() []error {
	var errs []error
	if _, err := ParseMinVersion(f.MinVersion); err != nil {
		errs = append(errs, err)
	}
	if _, err := ParseCipherSuites(f.CipherSuites); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// Warnings lists flag combinations that work but do nothing.
func (f *Flags) Warnings() []string {
	if f.MinVersion == VersionTLS13 && len(f.CipherSuites) > 0 {
		return []string{"--tls-cipher-suites is set but unused because --tls-min-version=" + VersionTLS13 + ": the suites apply to TLS 1.2 only"}
	}
	return nil
}

// Set reports whether either flag differs from the default.
func (f *Flags) Set() bool {
	return (f.MinVersion != "" && f.MinVersion != VersionTLS12) || len(f.CipherSuites) > 0
}

// Hardening parses the flags; call Validate first for every error at once.
func (f *Flags) Hardening() (Hardening, error) {
	v, err := ParseMinVersion(f.MinVersion)
	if err != nil {
		return Hardening{}, err
	}
	suites, err := ParseCipherSuites(f.CipherSuites)
	if err != nil {
		return Hardening{}, err
	}
	return Hardening{MinVersion: v, CipherSuites: suites}, nil
}
