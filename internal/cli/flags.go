package cli

import (
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
)

// AddLoggingFlags adds klog's flags for c (-v, --vmodule, --logging-format
// and the rest of component-base's logging flags) to fs, and upstream's
// --logtostderr and --alsologtostderr, accepted so that old manifests still
// parse, marked deprecated and ignored.
func AddLoggingFlags(fs *pflag.FlagSet, c *logsapi.LoggingConfiguration) {
	logsapi.AddFlags(c, fs)
	fs.Bool("logtostderr", true, "")
	fs.MarkDeprecated("logtostderr", "ignored: edge-tunnel always logs to stderr.")
	fs.Bool("alsologtostderr", false, "")
	fs.MarkDeprecated("alsologtostderr", "ignored: edge-tunnel always logs to stderr.")
}

// AddDeprecatedProfilingFlags adds upstream's --enable-profiling and
// --enable-contention-profiling, accepted, marked deprecated and ignored:
// edge-tunnel always serves pprof on its admin endpoint, whose port flag is
// adminPortFlag (without dashes).
func AddDeprecatedProfilingFlags(fs *pflag.FlagSet, adminPortFlag string) {
	fs.Bool("enable-profiling", false, "")
	fs.MarkDeprecated("enable-profiling", fmt.Sprintf("ignored: pprof is always served on --admin-bind-address:--%s (loopback by default); set --%s=0 to turn it off.", adminPortFlag, adminPortFlag))
	fs.Bool("enable-contention-profiling", false, "")
	fs.MarkDeprecated("enable-contention-profiling", "ignored: the admin endpoint serves the standard pprof profiles; block and mutex profiling are not switched on.")
}

// CheckPort reports a port outside 1..65535, naming flag (with its dashes).
// With zeroOK, 0 is allowed and means the listener is disabled.
func CheckPort(flag string, port int, zeroOK bool) error {
	switch {
	case port == 0 && zeroOK:
		return nil
	case port == 0:
		return fmt.Errorf("%s=0: this port cannot be disabled; give a port in 1..65535", flag)
	case (port < 0 || port > 65535) && zeroOK:
		return fmt.Errorf("%s=%d: not a port; give 1..65535, or 0 to disable it", flag, port)
	case port < 0 || port > 65535:
		return fmt.Errorf("%s=%d: not a port; give 1..65535", flag, port)
	}
	return nil
}

// JoinHostPort gives host:port, or "" when port is 0 (the listener is
// disabled). An empty host means all interfaces.
func JoinHostPort(host string, port int) string {
	if port == 0 {
		return ""
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}
