package fcsim

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// JailerArgs is what the fake jailer parsed (and records, as JSON, to the
// file named by FCSIM_JAILER_RECORD).
type JailerArgs struct {
	ID            string   `json:"id"`
	ExecFile      string   `json:"exec_file"`
	UID           int      `json:"uid"`
	GID           int      `json:"gid"`
	ChrootBase    string   `json:"chroot_base_dir"`
	Netns         string   `json:"netns,omitempty"`
	CgroupVersion string   `json:"cgroup_version,omitempty"`
	Cgroups       []string `json:"cgroups,omitempty"`
	ParentCgroup  string   `json:"parent_cgroup,omitempty"`
	Limits        []string `json:"resource_limits,omitempty"`
	Daemonize     bool     `json:"daemonize,omitempty"`
	NewPidNs      bool     `json:"new_pid_ns,omitempty"`
	Extra         []string `json:"extra"`
	// Tree lists the chroot directory's entries as the jailer found them
	// (path relative to the chroot: mode, uid), before it copied the
	// binary in.
	Tree map[string]string `json:"tree"`
}

var (
	jailIDRe   = regexp.MustCompile(`^[a-zA-Z0-9-]{1,64}$`)
	cgroupRe   = regexp.MustCompile(`^[a-z_]+\.[a-z0-9_.]+=.+$`)
	rlimitRe   = regexp.MustCompile(`^(fsize|no-file)=[0-9]+$`)
	jailerVals = map[string]bool{
		"--id": true, "--exec-file": true, "--uid": true, "--gid": true, "--chroot-base-dir": true,
		"--netns": true, "--cgroup-version": true, "--cgroup": true, "--parent-cgroup": true,
		"--resource-limit": true,
	}
)

// ParseJailerArgs checks a jailer command line as Firecracker's jailer
// does (docs/jailer.md): required --id --exec-file --uid --gid; the id
// alphanumeric and hyphens, at most 64 characters; the exec file's name
// containing "firecracker"; cgroups as <file>=<value>; cgroup version 1
// or 2; resource limits fsize/no-file; everything after -- for
// Firecracker.
func ParseJailerArgs(args []string) (*JailerArgs, error) {
	j := &JailerArgs{UID: -1, GID: -1, ChrootBase: "/srv/jailer", Extra: []string{}}
	seen := map[string]bool{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			j.Extra = append(j.Extra, args[i+1:]...)
			break
		}
		switch a {
		case "--daemonize":
			j.Daemonize = true
			continue
		case "--new-pid-ns":
			j.NewPidNs = true
			continue
		}
		if !jailerVals[a] {
			return nil, fmt.Errorf("jailer: unknown argument %q", a)
		}
		if i+1 >= len(args) {
			return nil, fmt.Errorf("jailer: %s needs a value", a)
		}
		v := args[i+1]
		i++
		if seen[a] && a != "--cgroup" && a != "--resource-limit" {
			return nil, fmt.Errorf("jailer: %s given twice", a)
		}
		seen[a] = true
		var err error
		switch a {
		case "--id":
			j.ID = v
		case "--exec-file":
			j.ExecFile = v
		case "--uid":
			j.UID, err = strconv.Atoi(v)
		case "--gid":
			j.GID, err = strconv.Atoi(v)
		case "--chroot-base-dir":
			j.ChrootBase = v
		case "--netns":
			j.Netns = v
		case "--cgroup-version":
			j.CgroupVersion = v
		case "--cgroup":
			j.Cgroups = append(j.Cgroups, v)
		case "--parent-cgroup":
			j.ParentCgroup = v
		case "--resource-limit":
			j.Limits = append(j.Limits, v)
		}
		if err != nil {
			return nil, fmt.Errorf("jailer: %s %q: not a number", a, v)
		}
	}
	switch {
	case j.ID == "" || j.ExecFile == "" || j.UID < 0 || j.GID < 0:
		return nil, fmt.Errorf("jailer: --id, --exec-file, --uid and --gid are required")
	case !jailIDRe.MatchString(j.ID):
		return nil, fmt.Errorf("jailer: invalid id %q (alphanumeric and hyphens, at most 64 characters)", j.ID)
	case !strings.Contains(filepath.Base(j.ExecFile), "firecracker"):
		return nil, fmt.Errorf("jailer: the exec file name %q must contain \"firecracker\"", filepath.Base(j.ExecFile))
	case !filepath.IsAbs(j.ChrootBase):
		return nil, fmt.Errorf("jailer: --chroot-base-dir %q is not absolute", j.ChrootBase)
	case j.CgroupVersion != "" && j.CgroupVersion != "1" && j.CgroupVersion != "2":
		return nil, fmt.Errorf("jailer: --cgroup-version %q (1 or 2)", j.CgroupVersion)
	}
	for _, c := range j.Cgroups {
		if !cgroupRe.MatchString(c) {
			return nil, fmt.Errorf("jailer: --cgroup %q is not <controller>.<file>=<value>", c)
		}
	}
	for _, l := range j.Limits {
		if !rlimitRe.MatchString(l) {
			return nil, fmt.Errorf("jailer: --resource-limit %q is not fsize=N or no-file=N", l)
		}
	}
	st, err := os.Stat(j.ExecFile)
	if err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("jailer: exec file %s is not an executable file", j.ExecFile)
	}
	if j.Netns != "" {
		if _, err := os.Stat(j.Netns); err != nil {
			return nil, fmt.Errorf("jailer: netns %s: %w", j.Netns, err)
		}
	}
	return j, nil
}

// ChrootDir is <chroot_base>/<exec_file_name>/<id>/root.
func (j *JailerArgs) ChrootDir() string {
	return filepath.Join(j.ChrootBase, filepath.Base(j.ExecFile), j.ID, "root")
}

// jailerMain is the fake jailer: it validates its arguments, records them
// with the tree it was given, copies the exec file into the chroot, enters
// a new mount namespace and the chroot, joins the network namespace,
// changes ownership of the chroot to uid:gid, drops to uid:gid and execs
// the copied binary with --id, --start-time-us, --start-time-cpu-us and
// the arguments after --. Unlike the real jailer it creates no cgroup
// (it only checks the --cgroup arguments' form), makes no device nodes,
// and keeps the FCSIM_* environment variables (the real one clears the
// environment) so that the simulator behind it can be configured.
func jailerMain(args, environ []string, env func(string) string, stderr io.Writer) int {
	fail := func(err error) int {
		fmt.Fprintln(stderr, err)
		return 1
	}
	j, err := ParseJailerArgs(args[1:])
	if err != nil {
		return fail(err)
	}
	if msg := env(EnvJailerFail); msg != "" {
		return fail(fmt.Errorf("jailer: %s", msg))
	}
	root := j.ChrootDir()
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fail(err)
	}
	j.Tree = map[string]string{}
	_ = filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		uid := -1
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid = int(st.Uid)
		}
		j.Tree[rel] = fmt.Sprintf("%s uid=%d", fi.Mode().Type().String(), uid)
		return nil
	})
	if rec := env(EnvJailerRecord); rec != "" {
		b, _ := json.Marshal(j)
		f, err := os.OpenFile(rec, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return fail(err)
		}
		_, err = f.Write(append(b, '\n'))
		_ = f.Close()
		if err != nil {
			return fail(err)
		}
	}
	name := filepath.Base(j.ExecFile)
	if err := copyFile(j.ExecFile, filepath.Join(root, name)); err != nil {
		return fail(fmt.Errorf("jailer: copy the exec file: %w", err))
	}
	start := time.Now()
	runtime.LockOSThread() // namespaces and the exec below stay on this thread
	if j.Netns != "" {
		fd, err := unix.Open(j.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fail(fmt.Errorf("jailer: open netns: %w", err))
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fail(fmt.Errorf("jailer: join netns %s: %w", j.Netns, err))
		}
		_ = unix.Close(fd)
	}
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fail(fmt.Errorf("jailer: unshare mount namespace: %w", err))
	}
	if err := unix.Mount("", "/", "", unix.MS_PRIVATE|unix.MS_REC, ""); err != nil {
		return fail(fmt.Errorf("jailer: make mounts private: %w", err))
	}
	if err := unix.Chown(root, j.UID, j.GID); err != nil {
		return fail(err)
	}
	if err := unix.Chroot(root); err != nil {
		return fail(fmt.Errorf("jailer: chroot: %w", err))
	}
	if err := unix.Chdir("/"); err != nil {
		return fail(err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		return fail(err)
	}
	if err := syscall.Setgid(j.GID); err != nil {
		return fail(err)
	}
	if err := syscall.Setuid(j.UID); err != nil {
		return fail(err)
	}
	us := strconv.FormatInt(start.UnixMicro(), 10)
	argv := append([]string{"/" + name, "--id=" + j.ID, "--start-time-us=" + us, "--start-time-cpu-us=0"}, j.Extra...)
	var envv []string
	for _, kv := range environ {
		if strings.HasPrefix(kv, "FCSIM_") {
			envv = append(envv, kv)
		}
	}
	return fail(fmt.Errorf("jailer: exec %s: %w", name, syscall.Exec("/"+name, argv, envv)))
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
