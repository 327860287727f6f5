package app

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edge-tunnel/edge-tunnel/internal/cli"
)

// nonroot is the user and group of the distroless image's nonroot user, which
// the images run as (Dockerfile).
const nonroot = 65532

// socketDir is what `edge-tunnel-server socket-dir` makes of a directory.
type socketDir struct {
	Path     string
	UID, GID int
	Mode     string // octal, as given
}

// newSocketDirCommand returns `edge-tunnel-server socket-dir`. It exists so
// that the server itself never needs root: the kubelet creates a hostPath
// directory root-owned 0755, where only root may create the socket that
// kube-apiserver on the same node connects to. An init container runs this
// once as root with no capability but CHOWN, and hands the directory to the
// server's user.
func newSocketDirCommand() *cobra.Command {
	o := &socketDir{UID: nonroot, GID: nonroot, Mode: "0750"}
	cmd := &cobra.Command{
		Use:   "socket-dir --path DIR [--uid UID --gid GID --mode MODE]",
		Short: "Hand the UNIX socket's directory to the server's user, for a non-root server",
		Long: `socket-dir makes DIR (the directory of --uds-name) a directory owned by
--uid:--gid with mode --mode, creating it if it is missing, so that a server
running as that user can create its socket there. Run it before the server as
an init container: it needs root with the CHOWN capability and nothing else
(manifests/base/server/deployment.yaml). Run again, it leaves DIR as it
is asked to be and says whether it was so already. A socket an earlier
server left in DIR is handed over too, so that a server running as another
user can replace it.

kube-apiserver running as root reaches the socket whatever the directory's
mode; one running as another user needs --gid to be its group (and the
directory and socket modes to let the group in).`,
		Example: `  edge-tunnel-server socket-dir --path /etc/kubernetes/konnectivity-server --uid 65532 --gid 65532 --mode 0750`,
		Args:    cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.Run(cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.Path, "path", o.Path, "Directory of the server's UNIX socket (the directory of its --uds-name), as mounted in this container. Required.")
	fs.IntVar(&o.UID, "uid", o.UID, "User that owns the directory afterwards: the server container's runAsUser.")
	fs.IntVar(&o.GID, "gid", o.GID, "Group that owns the directory afterwards: the server container's runAsGroup, or kube-apiserver's group when it does not run as root.")
	fs.StringVar(&o.Mode, "mode", o.Mode, "File mode of the directory, in octal. The owner needs write and search permission (0300) to create the socket; others must not have write permission.")
	return cmd
}

// Run checks the flags, then makes the directory as asked and says what it
// did on out.
func (o *socketDir) Run(out io.Writer) error {
	perm, errs := o.validate()
	if len(errs) > 0 {
		return fmt.Errorf("invalid flags:\n%w", errors.Join(errs...))
	}
	changed, err := prepareSocketDir(filepath.Clean(o.Path), o.UID, o.GID, perm)
	if err != nil {
		return err
	}
	what := "already as asked, unchanged"
	if changed {
		what = "changed"
	}
	fmt.Fprintf(out, "socket directory %s: owner %d:%d, mode %04o (%s)\n", o.Path, o.UID, o.GID, perm, what)
	return nil
}

// validate reports every bad flag and returns the mode.
func (o *socketDir) validate() (fs.FileMode, []error) {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Path == "" {
		add("--path is required: the directory of the server's --uds-name, as mounted in this container")
	}
	// 4294967295 is -1 to chown(2): "leave it as it is".
	if o.UID < 0 || o.UID >= 1<<32-1 {
		add("--uid %d: not a user ID; give a number from 0 to 4294967294 (the server container's runAsUser, 65532 in edge-tunnel's image)", o.UID)
	}
	if o.GID < 0 || o.GID >= 1<<32-1 {
		add("--gid %d: not a group ID; give a number from 0 to 4294967294 (the server container's runAsGroup, 65532 in edge-tunnel's image)", o.GID)
	}
	m, err := strconv.ParseUint(o.Mode, 8, 32)
	perm := fs.FileMode(m)
	switch {
	case err != nil:
		add("--mode %q: not an octal file mode; give permission bits such as 0750", o.Mode)
	case m > 0o777:
		add("--mode %s: only the permission bits (0000 to 0777) may be set, not setuid, setgid or sticky", o.Mode)
	case perm&0o300 != 0o300:
		add("--mode %s: the owner (--uid) needs write and search permission (0300) to create the socket; give e.g. 0750", o.Mode)
	case perm&0o002 != 0:
		add("--mode %s: everybody on the node could replace the socket; drop others' write permission, e.g. 0750", o.Mode)
	}
	return perm, errs
}

// prepareSocketDir creates dir if it is missing and gives it owner uid:gid
// and mode perm, plus the sockets directly in it to uid:gid. It reports
// whether that changed anything.
//
// It works as the directory's owner, so that CHOWN is the only capability
// root needs: without DAC_READ_SEARCH it could not list a directory that
// 65532 owns with mode 0750, and without FOWNER not chmod it. So it takes the
// directory over (chown to itself), opens it for itself (owner rwx), hands
// over the sockets in it, then sets the mode and hands the directory on.
// This runs before the server starts, so nobody sees the passing states.
// Symbolic links are refused rather than followed: a root process must not
// be led to chown something else.
func prepareSocketDir(dir string, uid, gid int, perm fs.FileMode) (changed bool, err error) {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, perm); err != nil {
			return false, fmt.Errorf("creating the socket directory %s: %w", dir, err)
		}
		changed = true
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return changed, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		return changed, fmt.Errorf("socket directory %s is a symbolic link; give the directory itself (the mount path of the hostPath volume)", dir)
	case !fi.IsDir():
		return changed, fmt.Errorf("socket directory %s exists and is not a directory; remove it on the node or choose another path", dir)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return changed, fmt.Errorf("socket directory %s: no owner information on this platform", dir)
	}
	const modeBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky
	curUID, curGID, curMode := int(st.Uid), int(st.Gid), fi.Mode()&modeBits
	if curUID != uid || curGID != gid || curMode != perm {
		changed = true
	}

	if me := os.Geteuid(); curUID != me {
		if err := os.Lchown(dir, me, -1); err != nil {
			return changed, fmt.Errorf("socket directory %s: taking it over: %w (run as root with the CHOWN capability, or as its owner)", dir, err)
		}
		curUID = me
	}
	if open := perm | 0o700; curMode != open {
		if err := os.Chmod(dir, open); err != nil {
			return changed, fmt.Errorf("socket directory %s: setting mode %04o: %w", dir, open, err)
		}
		curMode = open
	}
	handed, err := handOverSockets(dir, uid, gid)
	if handed {
		changed = true
	}
	if err != nil {
		return changed, err
	}
	if curMode != perm {
		if err := os.Chmod(dir, perm); err != nil {
			return changed, fmt.Errorf("socket directory %s: setting mode %04o: %w", dir, perm, err)
		}
	}
	if curUID != uid || curGID != gid {
		if err := os.Lchown(dir, uid, gid); err != nil {
			return changed, fmt.Errorf("socket directory %s: changing its owner to %d:%d: %w (run as root with the CHOWN capability)", dir, uid, gid, err)
		}
	}
	return changed, nil
}

// handOverSockets gives the sockets directly in dir to uid:gid: one that an
// earlier server running as another user left behind (after a crash, or
// from before the server ran as uid) could be neither checked nor replaced.
func handOverSockets(dir string, uid, gid int) (handed bool, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, fmt.Errorf("socket directory %s: listing it for old sockets: %w", dir, err)
	}
	for _, e := range entries {
		if e.Type()&fs.ModeSocket == 0 {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue // removed meanwhile
		}
		if err != nil {
			return handed, fmt.Errorf("old socket %s: %w", p, err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid && int(st.Gid) == gid {
			continue
		}
		if err := os.Lchown(p, uid, gid); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return handed, fmt.Errorf("old socket %s: changing its owner to %d:%d: %w", p, uid, gid, err)
		}
		handed = true
	}
	return handed, nil
}
