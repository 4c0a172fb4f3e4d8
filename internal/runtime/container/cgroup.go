package container

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroups knows where a capsule's cgroup lives on this host: cgroup v2
// (unified) or v1 (one hierarchy per controller). Debian 12 hosts in hybrid
// mode mount v1 controllers under /sys/fs/cgroup/<controller> and a v2
// hierarchy with no useful controller at /sys/fs/cgroup/unified; runc treats
// them as v1 and also places the container in the unified hierarchy.
type cgroups struct {
	root string // /sys/fs/cgroup
	v2   bool
}

func detectCgroups(root string) (cgroups, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return cgroups{}, fmt.Errorf("cgroups: statfs %s: %w", root, err)
	}
	return cgroups{root: root, v2: st.Type == unix.CGROUP2_SUPER_MAGIC}, nil
}

// dirs lists every directory a capsule's cgroup (path relative to the
// hierarchy root, e.g. "/wrenn/abc") may occupy.
func (c cgroups) dirs(path string) []string {
	if c.v2 {
		return []string{filepath.Join(c.root, path)}
	}
	var out []string
	entries, _ := os.ReadDir(c.root)
	for _, e := range entries {
		if e.IsDir() {
			out = append(out, filepath.Join(c.root, e.Name(), path))
		}
	}
	return out
}

func (c cgroups) file(controller, path, name string) string {
	if c.v2 {
		return filepath.Join(c.root, path, name)
	}
	return filepath.Join(c.root, controller, path, name)
}

// freeze freezes (or thaws) every process of the cgroup and waits until the
// kernel reports the new state.
func (c cgroups) freeze(path string, frozen bool) error {
	var file, want, wantState string
	if c.v2 {
		file = c.file("", path, "cgroup.freeze")
		want, wantState = "0", "frozen 0"
		if frozen {
			want, wantState = "1", "frozen 1"
		}
	} else {
		file = c.file("freezer", path, "freezer.state")
		want, wantState = "THAWED", "THAWED"
		if frozen {
			want, wantState = "FROZEN", "FROZEN"
		}
	}
	if err := os.WriteFile(file, []byte(want), 0o644); err != nil {
		return fmt.Errorf("cgroups: write %s: %w", file, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := c.frozenState(path)
		if err != nil {
			return err
		}
		if got == wantState {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroups: %s stuck in %q", path, got)
		}
		if !c.v2 && frozen && got == "FREEZING" {
			// v1: re-writing FROZEN retries the freeze of late-forked tasks.
			_ = os.WriteFile(file, []byte(want), 0o644)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// frozenState returns "FROZEN"/"FREEZING"/"THAWED" (v1) or "frozen 0|1" (v2).
func (c cgroups) frozenState(path string) (string, error) {
	if c.v2 {
		b, err := os.ReadFile(c.file("", path, "cgroup.events"))
		if err != nil {
			return "", fmt.Errorf("cgroups: %w", err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "frozen ") {
				return l, nil
			}
		}
		return "", errors.New("cgroups: no frozen key in cgroup.events")
	}
	b, err := os.ReadFile(c.file("freezer", path, "freezer.state"))
	if err != nil {
		return "", fmt.Errorf("cgroups: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

func readUint(file string) (uint64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return 0, nil
	}
	return strconv.ParseUint(s, 10, 64)
}

func readKey(file, key string) (uint64, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, " "); ok && k == key {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("cgroups: %s: no key %s", file, key)
}

// usage returns CPU time, memory use, memory limit and task count.
func (c cgroups) usage(path string) (cpu time.Duration, mem, limit, pids uint64, err error) {
	if c.v2 {
		usec, err1 := readKey(c.file("", path, "cpu.stat"), "usage_usec")
		mem, err2 := readUint(c.file("", path, "memory.current"))
		limit, err3 := readUint(c.file("", path, "memory.max"))
		pids, err4 := readUint(c.file("", path, "pids.current"))
		return time.Duration(usec) * time.Microsecond, mem, limit, pids, errors.Join(err1, err2, err3, err4)
	}
	ns, err1 := readUint(c.file("cpuacct", path, "cpuacct.usage"))
	mem, err2 := readUint(c.file("memory", path, "memory.usage_in_bytes"))
	limit, err3 := readUint(c.file("memory", path, "memory.limit_in_bytes"))
	pids, err4 := readUint(c.file("pids", path, "pids.current"))
	return time.Duration(ns), mem, limit, pids, errors.Join(err1, err2, err3, err4)
}

// remove kills whatever is left in the cgroup and removes its directories
// (deepest first). Missing directories are fine.
func (c cgroups) remove(path string) error {
	var errs []error
	for _, d := range c.dirs(path) {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		// Children first (runc may have made sub-cgroups on some hosts).
		var sub []string
		_ = filepath.WalkDir(d, func(p string, de os.DirEntry, err error) error {
			if err == nil && de.IsDir() {
				sub = append(sub, p)
			}
			return nil
		})
		for i := len(sub) - 1; i >= 0; i-- {
			if err := rmCgroup(sub[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func rmCgroup(dir string) error {
	for i := 0; ; i++ {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || i > 200 {
			return fmt.Errorf("cgroups: rmdir %s: %w", dir, err)
		}
		// Still has tasks: thaw (a frozen task cannot die) and kill them.
		_ = os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644)
		_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0o644)
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}
