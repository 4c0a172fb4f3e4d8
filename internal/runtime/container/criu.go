package container

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/wrenn-dev/wrenn/internal/rootfs"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/snapshot"
	"golang.org/x/sys/unix"
)

// Memory snapshots through CRIU (driven by `runc checkpoint` and `runc
// restore`, which talk to criu over its RPC interface).
//
// A memory snapshot is a second header in the snapshot store, named after
// the disk header plus memSuffix, holding a tar of the CRIU image
// directory. It is published before the disk header, whose metadata names
// it: the disk header stays the single commit point of a pause, so a
// memory image is never visible as part of a snapshot without its disk.
//
// The capsule's network namespace and its envd.log (envd's stdout and
// stderr, opened on the host) are outside what CRIU dumps: the namespace is
// external (runc passes it as such), and the log is declared an external
// file on dump and handed back with inherit-fd on restore. Per-run criu
// options go in a config file named by CRIU_CONFIG_FILE, the only channel
// runc leaves for options it does not know:
//   - network-lock nftables: this host has no iptables binaries;
//   - tcp-close: TCP connections are not dumped and come back closed, as
//     envd expects of every pre-snapshot connection.
const (
	memSuffix     = ".criu"
	metaMemory    = "wrenn.memory_image"
	metaCRIUKeys  = "wrenn.criu_inherit"
	kindCRIU      = "capsule-criu-images-tar"
	criuImagesDir = "criu-images"
	criuWorkDir   = "criu-work"
	// maxCRIUEntry bounds one file of an image archive on extraction.
	maxCRIUEntry = 64 << 30
)

// criuCheck runs `criu check` with the configured binary and environment.
// It returns the binary's absolute path when the check passes.
func criuCheck(ctx context.Context, path string, env []string) (string, error) {
	if path == "" {
		path = "criu"
	}
	bin, err := exec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("criu not found: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check")
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return bin, fmt.Errorf("%s check: %w: %s", bin, err, lastLine(out))
	}
	return bin, nil
}

// criuJoinsUserns reports whether the criu at bin restores into a user
// namespace given with `join-ns user:<path>` by cloning the root task
// inside it: stock CRIU (4.2.1) makes a new user namespace with the
// dumped mapping instead, which then cannot enter the capsule's network
// namespace. scripts/criu.sh builds CRIU with that patch
// (scripts/criu-patches), which also adds the "join_userns_root" feature
// this asks `criu check` about; stock CRIU answers "unknown feature".
func criuJoinsUserns(ctx context.Context, bin string, env []string) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "check", "--feature", "join_userns_root")
	cmd.Env = append(os.Environ(), env...)
	return cmd.Run() == nil
}

func lastLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// runcCRIU runs a runc checkpoint/restore command with the driver's criu
// and a per-call criu config file. Output goes to logFile (runc's and
// criu's own error lines); on failure the error carries the tail of criu's
// log from workDir.
func (d *Driver) runcCRIU(ctx context.Context, conf []string, workDir string, stdio *os.File, args ...string) error {
	if err := os.MkdirAll(workDir, 0o700); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	confPath := filepath.Join(workDir, "criu.conf")
	if err := os.WriteFile(confPath, []byte(strings.Join(conf, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.CRIUTimeout)
	defer cancel()
	full := append([]string{"--root", d.runcRoot, "--criu", d.criuPath}, args...)
	cmd := exec.CommandContext(ctx, d.cfg.RuncPath, full...)
	cmd.Env = append(append(os.Environ(), "CRIU_CONFIG_FILE="+confPath), d.cfg.CRIUEnv...)
	// criu starts its own session, so killing runc's process group misses
	// it: a hung criu (a damaged image can leave its restorer spinning) is
	// killed with every other descendant of runc, not left holding the
	// capsule under ptrace.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killTree(cmd.Process.Pid) }
	cmd.WaitDelay = 5 * time.Second
	var out strings.Builder
	if stdio != nil {
		cmd.Stdout, cmd.Stderr = stdio, stdio
	} else {
		cmd.Stdout, cmd.Stderr = &out, &out
	}
	if err := runBounded(ctx, cmd, 10*time.Second); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		err = fmt.Errorf("runc %s: %w: %s%s", args[0], err, strings.TrimSpace(out.String()), criuLogTail(workDir))
		// criu mounts a cgroup yard under its work directory; a killed
		// criu leaves it behind.
		if uerr := unmountUnder(workDir); uerr != nil {
			err = errors.Join(err, uerr)
		}
		return err
	}
	return nil
}

// runBounded runs cmd (whose Cancel kills its process group) and returns
// at most grace after ctx is done, even if the killed processes do not go
// away: a process stuck in the kernel cannot be killed, and a restore or
// checkpoint must not hold its caller past its deadline because of it.
// Such a process is left to be reaped in the background and its state
// goes into the error, so the cause can be found.
func runBounded(ctx context.Context, cmd *exec.Cmd, grace time.Duration) error {
	if err := cmd.Start(); err != nil {
		return err
	}
	pid := cmd.Process.Pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%w; process group %d still there %v after the kill: %s", ctx.Err(), pid, grace, processGroupState(pid))
	}
}

// killTree SIGKILLs pid's process group and every descendant of pid,
// whatever session or group it moved to. Children are found through
// /proc before anything is killed, so none is orphaned first.
func killTree(pid int) error {
	children := map[int][]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return err
	}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp := parentPID(p); pp > 0 {
			children[pp] = append(children[pp], p)
		}
	}
	var tree []int
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		for _, c := range children[queue[0]] {
			tree = append(tree, c)
			queue = append(queue, c)
		}
	}
	err = syscall.Kill(-pid, syscall.SIGKILL)
	for _, p := range tree {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	return err
}

// parentPID reads a process's parent from /proc (0 if it is gone).
func parentPID(pid int) int {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// "pid (comm) state ppid ...": comm may hold spaces and parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	pp, _ := strconv.Atoi(f[1])
	return pp
}

// processGroupState describes the processes of group pgid: pid, state,
// kernel wait channel and command, for an error message.
func processGroupState(pgid int) string {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		read := func(name string) string {
			b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), name))
			return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
		}
		stat := read("stat")
		// Field 3 (after the parenthesised command) is the state.
		state := "?"
		if i := strings.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
			state = stat[i+2 : i+3]
		}
		if state == "Z" {
			continue // exited, only not reaped yet
		}
		out = append(out, fmt.Sprintf("pid %d state %s wchan %s cmd %q", pid, state, read("wchan"), read("cmdline")))
	}
	if len(out) == 0 {
		return "no process left in the group"
	}
	return strings.Join(out, "; ")
}

// unmountUnder detaches every mount at or below dir, deepest first, and
// fails unless none is left.
func unmountUnder(dir string) error {
	mounts, err := rootfs.MountsUnder(dir)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	for i := len(mounts) - 1; i >= 0; i-- {
		_ = syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	if left, err := rootfs.MountsUnder(dir); err != nil || len(left) > 0 {
		return fmt.Errorf("container: mounts left under %s: %v (%w)", dir, left, err)
	}
	return nil
}

// removeSameFS removes dir and what it holds without crossing into another
// file system (a mount point is never descended into).
func removeSameFS(dir string) error {
	var root syscall.Stat_t
	if err := syscall.Lstat(dir, &root); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil
		}
		return fmt.Errorf("container: %w", err)
	}
	var walk func(path string) error
	walk = func(path string) error {
		var st syscall.Stat_t
		if err := syscall.Lstat(path, &st); err != nil {
			return fmt.Errorf("container: %w", err)
		}
		if st.Dev != root.Dev {
			return fmt.Errorf("container: %s is on another file system", path)
		}
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			entries, err := os.ReadDir(path)
			if err != nil {
				return fmt.Errorf("container: %w", err)
			}
			for _, e := range entries {
				if err := walk(filepath.Join(path, e.Name())); err != nil {
					return err
				}
			}
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("container: %w", err)
		}
		return nil
	}
	return walk(dir)
}

// criuLogTail returns the first error lines of criu's dump or restore log.
func criuLogTail(workDir string) string {
	var lines []string
	for _, name := range []string{"dump.log", "restore.log"} {
		f, err := os.Open(filepath.Join(workDir, name))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() && len(lines) < 5 {
			if l := sc.Text(); strings.Contains(l, "Error") && !strings.Contains(l, "RLIMIT_NOFILE") {
				lines = append(lines, strings.TrimSpace(l))
			}
		}
		_ = f.Close()
	}
	if len(lines) == 0 {
		return ""
	}
	return " (criu: " + strings.Join(lines, "; ") + ")"
}

// baseCRIUConf are the options of every dump and restore (see the comment
// at the top of this file).
var baseCRIUConf = []string{"network-lock nftables", "tcp-close"}

// hostFileKeys returns CRIU's external-file keys ("file[mnt_id:inode]") of
// envd's standard output and error, which are files on the host (the
// capsule's envd.log) that CRIU cannot find in the capsule's mounts.
func hostFileKeys(pid int) ([]string, error) {
	var keys []string
	for _, fd := range []int{1, 2} {
		st, err := os.Stat(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
		if err != nil {
			return nil, fmt.Errorf("envd fd %d: %w", fd, err)
		}
		if !st.Mode().IsRegular() {
			continue
		}
		sys, ok := st.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("envd fd %d: no inode", fd)
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
		if err != nil {
			return nil, fmt.Errorf("envd fd %d: %w", fd, err)
		}
		mnt := -1
		for l := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "mnt_id:"); ok {
				mnt, err = strconv.Atoi(strings.TrimSpace(v))
				if err != nil {
					return nil, fmt.Errorf("envd fd %d: mnt_id: %w", fd, err)
				}
			}
		}
		if mnt < 0 {
			return nil, fmt.Errorf("envd fd %d: no mnt_id in fdinfo", fd)
		}
		key := fmt.Sprintf("file[%x:%x]", mnt, sys.Ino)
		if len(keys) == 0 || keys[len(keys)-1] != key {
			keys = append(keys, key)
		}
	}
	return keys, nil
}

// checkpoint dumps a running or paused capsule's processes with CRIU into
// <capsule>/criu-images. On success the processes are gone (runc deletes
// the container) and rec is stopped; on failure the capsule is as it was,
// running (a paused one is thawed first: CRIU freezes it itself), and the
// image directory is removed. It returns the image directory and the
// external-file keys restore must hand back.
func (d *Driver) checkpoint(ctx context.Context, rec *record) (string, []string, error) {
	if d.rt.runsc {
		images, err := d.runscCheckpoint(ctx, rec)
		return images, nil, err
	}
	// The capsule is frozen (cgroup freezer) before criu starts: criu
	// polls a freeze it starts itself every 100 ms, so a freeze that takes
	// a millisecond cost a pause 100 ms (criu's "freezing" stat); on a
	// frozen cgroup criu seizes the tasks at once. A paused capsule is
	// frozen already.
	cg := d.cgroupPath(rec.Key)
	if rec.State == runtime.StateRunning {
		if err := d.cg.freeze(cg, true); err != nil {
			_ = d.cg.freeze(cg, false)
			return "", nil, err
		}
	}
	// On failure criu leaves the cgroup frozen again: the capsule goes
	// back to running, as before the attempt.
	thaw := func() {
		if err := d.cg.freeze(cg, false); err != nil {
			d.log.Warn("thaw after a failed checkpoint", "id", rec.ID, "err", err)
		}
		rec.State = runtime.StateRunning
	}
	p := d.paths(rec.Key)
	images := d.dumpDir(rec)
	work := filepath.Join(p.Dir, criuWorkDir)
	for _, dir := range []string{images, work} {
		if err := os.RemoveAll(dir); err != nil {
			thaw()
			return "", nil, fmt.Errorf("container: %w", err)
		}
	}
	keys, err := hostFileKeys(rec.PID)
	if err != nil {
		thaw()
		return "", nil, err
	}
	conf := append([]string(nil), baseCRIUConf...)
	for _, k := range keys {
		conf = append(conf, "external "+k)
	}
	if err := os.MkdirAll(images, 0o700); err != nil {
		thaw()
		return "", nil, fmt.Errorf("container: %w", err)
	}
	args := []string{"checkpoint", "--image-path", images, "--work-path", work}
	// Per Config.CRIUPageServer the pages stream into the snapshot store
	// while CRIU dumps them (snapshot.CRIUPageServer): no pages file is
	// written and read back.
	var ps *snapshot.CRIUPageServer
	var parent string
	if rec.Parent != "" {
		parent = rec.Parent + memSuffix
	}
	if mode := d.cfg.CRIUPageServer; mode == "on" || (mode != "off" && d.streamDump(cg, images)) {
		ps, err = d.snaps.StartCRIUPageServer(ctx, snapshot.CRIUPauseOptions{Parent: parent})
		if err != nil {
			d.log.Warn("criu page server not started, dumping pages to files", "id", rec.ID, "err", err)
			ps = nil
		} else {
			args = append(args, "--page-server", ps.Addr())
		}
	}
	err = d.runcCRIU(ctx, conf, work, nil, append(args, rec.Key)...)
	if err != nil && ps != nil {
		ps.Abort()
		if serr := ps.Failed(); serr != nil {
			// The store side failed (e.g. a layout it cannot hold), not
			// the dump: CRIU resumed the tasks, dump again to files.
			d.log.Warn("criu page server failed, dumping again to files", "id", rec.ID, "err", serr)
			ps = nil
			_ = os.RemoveAll(images)
			_ = unmountUnder(work)
			_ = os.RemoveAll(work)
			if merr := os.MkdirAll(images, 0o700); merr == nil {
				if ferr := d.cg.freeze(cg, true); ferr == nil {
					err = d.runcCRIU(ctx, conf, work, nil, "checkpoint", "--image-path", images, "--work-path", work, rec.Key)
				}
			}
		}
	}
	if err != nil {
		_ = os.RemoveAll(images)
		_ = os.RemoveAll(work)
		thaw()
		return "", nil, err
	}
	if ps != nil {
		d.dumps.Store(images, ps)
	}
	if st, err := readCRIUStats("stats-dump", work, images); err == nil {
		d.log.Info("criu dump", "id", rec.ID, "freezing", st.Freezing, "frozen", st.Frozen,
			"memdump", st.MemDump, "memwrite", st.MemWrite, "pages_scanned", st.PagesScanned, "pages_written", st.PagesWritten)
	}
	_ = os.RemoveAll(work)
	rec.State = runtime.StateStopped
	rec.PID = 0
	return images, keys, nil
}

// streamAbove is the memory use from which an automatic pause streams its
// pages: measured here, a 2 GiB capsule paused in half the time streamed
// (its 2 GiB of tmpfs files beside the capsule were slow to write, and
// the store's pass came on top), while at 256 MiB and 1 GiB the files
// path was ahead in four of six comparisons (docs/PERFORMANCE.md).
const streamAbove = 1536 << 20

// streamDump says whether a pause with Config.CRIUPageServer "" streams:
// when the dump cannot go to the scratch tmpfs (it would go to disk and
// the memory be written twice), or the capsule uses streamAbove or more.
func (d *Driver) streamDump(cg, images string) bool {
	if d.scratch == "" || !strings.HasPrefix(images, d.scratch+string(filepath.Separator)) {
		return true
	}
	_, mem, _, _, err := d.cg.usage(cg)
	return err == nil && mem >= streamAbove
}

// SetCRIUPageServer sets Config.CRIUPageServer ("", "on", "off"), for
// tests and benchmarks that compare the modes in one run. Not to be called
// while a pause runs.
func (d *Driver) SetCRIUPageServer(mode string) { d.cfg.CRIUPageServer = mode }

// dropDump removes a pause's image directory and drops what the store
// received of its pages if nothing published them.
func (d *Driver) dropDump(images string) {
	if v, ok := d.dumps.LoadAndDelete(images); ok {
		v.(*snapshot.CRIUPageServer).Abort()
	}
	_ = os.RemoveAll(images)
}

// setupScratch resolves Config.CRIUScratch (see there) and empties the
// directory: what is in it is from a pause a crash interrupted.
func (d *Driver) setupScratch() error {
	dir := d.cfg.CRIUScratch
	switch dir {
	case "off":
		return nil
	case "":
		var fs unix.Statfs_t
		if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
			return nil
		}
		sum := sha256.Sum256([]byte(d.cfg.StateDir))
		dir = filepath.Join("/dev/shm", "wrenn-criu-"+hex.EncodeToString(sum[:6]))
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("container: criu scratch: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("container: criu scratch: %w", err)
	}
	d.scratch = dir
	return nil
}

// CRIUScratchDir is the directory pause-to-disk dumps go to before the
// snapshot store takes them ("" when they go to the capsule's directory).
func (d *Driver) CRIUScratchDir() string { return d.scratch }

// dumpDir is where CRIU dumps rec's images for a pause to disk: the
// scratch directory when there is one and the host has the memory to
// spare (twice the capsule's limit plus 256 MiB available), else the
// capsule's directory.
func (d *Driver) dumpDir(rec *record) string {
	if d.scratch != "" {
		need := 2*int64(rec.Spec.MemoryMB)<<20 + 256<<20
		if avail := memAvailable(); avail > need {
			return filepath.Join(d.scratch, rec.Key)
		}
	}
	return filepath.Join(d.paths(rec.Key).Dir, criuImagesDir)
}

// memAvailable is MemAvailable from /proc/meminfo in bytes (0 if unknown).
func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "MemAvailable:"); ok {
			f := strings.Fields(v)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

// tarDir writes the regular files of dir (CRIU's image directory is flat)
// into a tar archive at dst.
func tarDir(dir, dst string) (err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("container: %w", cerr)
		}
	}()
	tw := tar.NewWriter(out)
	for _, e := range entries {
		if !e.Type().IsRegular() {
			return fmt.Errorf("container: criu image %s is not a regular file", e.Name())
		}
		if err := addFile(tw, filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return out.Sync()
}

func addFile(tw *tar.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	hdr := &tar.Header{Name: filepath.Base(path), Mode: 0o600, Size: st.Size(), Typeflag: tar.TypeReg, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	if _, err := io.Copy(tw, f); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	return nil
}

// untarDir extracts an archive written by tarDir into dir, refusing
// anything but plain file names.
func untarDir(src, dir string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer f.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("container: %w", err)
	}
	tr := tar.NewReader(f)
	n := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("container: criu images: %w", err)
		}
		name := hdr.Name
		if hdr.Typeflag != tar.TypeReg || name == "" || name != filepath.Base(name) || name == "." || name == ".." || hdr.Size > maxCRIUEntry {
			return fmt.Errorf("container: criu images: bad entry %q", name)
		}
		if err := writeEntry(filepath.Join(dir, name), tr, hdr.Size); err != nil {
			return err
		}
		n++
	}
	if n == 0 {
		return errors.New("container: criu images: empty archive")
	}
	return nil
}

func writeEntry(path string, r io.Reader, size int64) (err error) {
	out, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("container: %w", cerr)
		}
	}()
	if _, err := io.CopyN(out, r, size); err != nil {
		return fmt.Errorf("container: criu images: %w", err)
	}
	return nil
}

// publishMemory publishes the image directory as name+memSuffix and
// returns the header name and the stored bytes. CRIU's page images go
// through the snapshot store by virtual address (snapshot.PauseCRIU),
// diffed against the memory image the capsule was restored from (the
// parent disk snapshot's companion), so a re-pause stores only the pages
// that changed. runsc's checkpoint, and a CRIU directory the VA layout
// cannot hold (snapshot.ErrCRIULayout), are archived whole with tar.
func (d *Driver) publishMemory(ctx context.Context, rec *record, name, images string, keys []string, now time.Time) (string, int64, error) {
	md := snapshotMetadata(rec, now)
	md[metaKind] = kindCRIU
	md[metaCRIUKeys] = strings.Join(keys, ",")
	memName := name + memSuffix
	if v, ok := d.dumps.LoadAndDelete(images); ok {
		// The pages are in the store already; the directory has the
		// other images.
		hdr, st, err := v.(*snapshot.CRIUPageServer).Finish(ctx, memName, images, md)
		if err != nil {
			return "", 0, fmt.Errorf("publish memory image: %w", err)
		}
		d.log.Info("capsule memory streamed by virtual address", "id", rec.ID,
			"page_bytes", st.PageBytes, "stored_bytes", st.StoredBytes, "merged", st.Merged,
			"process", st.Process, "publish", st.Publish, "generation", hdr.Generation)
		return memName, st.StoredBytes, nil
	}
	if !d.rt.runsc {
		var parent string
		if rec.Parent != "" {
			parent = rec.Parent + memSuffix
		}
		hdr, st, err := d.snaps.PauseCRIU(ctx, memName, images, snapshot.CRIUPauseOptions{Parent: parent, Metadata: md})
		if err == nil {
			d.log.Info("capsule memory stored by virtual address", "id", rec.ID, "parent", parent,
				"page_bytes", st.PageBytes, "stored_bytes", st.StoredBytes, "merged", st.Merged,
				"process", st.Process, "publish", st.Publish, "generation", hdr.Generation)
			return memName, st.StoredBytes, nil
		}
		if !errors.Is(err, snapshot.ErrCRIULayout) {
			return "", 0, fmt.Errorf("publish memory image: %w", err)
		}
		d.log.Info("criu images stored as an archive", "id", rec.ID, "why", err)
	}
	archive := images + ".tar"
	defer os.Remove(archive)
	if err := tarDir(images, archive); err != nil {
		return "", 0, err
	}
	if d.rt.runsc {
		md[metaKind], md[metaRunscBinary] = kindRunsc, d.rt.sha
	}
	hdr, err := d.snaps.Pause(ctx, memName, archive, snapshot.PauseOptions{Metadata: md})
	if err != nil {
		return "", 0, fmt.Errorf("publish memory image: %w", err)
	}
	return memName, storedBytes(hdr), nil
}

// fetchMemory materialises a memory image into <capsule dir>/criu-images
// and returns the directory and the external-file keys of the dump.
func (d *Driver) fetchMemory(ctx context.Context, capsuleDir, memName, capsuleID string) (string, []string, error) {
	r, err := d.snaps.Open(ctx, memName)
	if err != nil {
		return "", nil, fmt.Errorf("open memory image %s: %w", memName, err)
	}
	defer r.Close()
	md := r.Metadata()
	if d.rt.runsc && md[metaCapsuleID] == capsuleID {
		if err := d.checkRunscImage(md); err != nil {
			return "", nil, fmt.Errorf("memory image %s: %w", memName, err)
		}
	} else if md[metaKind] != kindCRIU || md[metaCapsuleID] != capsuleID {
		return "", nil, fmt.Errorf("memory image %s: kind %q of capsule %q, want %q of %q", memName, md[metaKind], md[metaCapsuleID], kindCRIU, capsuleID)
	}
	var keys []string
	if s := md[metaCRIUKeys]; s != "" {
		keys = strings.Split(s, ",")
	}
	images := filepath.Join(capsuleDir, criuImagesDir)
	if snapshot.IsCRIUVA(r) {
		images = d.restoreDir(capsuleDir, r)
		// Only the dumped pages are read, in the order CRIU wants them.
		start := time.Now()
		if err := snapshot.WriteCRIUImages(ctx, r, images); err != nil {
			_ = os.RemoveAll(images)
			return "", nil, fmt.Errorf("memory image %s: %w", memName, err)
		}
		d.log.Info("criu images fetched", "id", capsuleID, "bytes", imagesSize(images), "took", time.Since(start))
		return images, keys, nil
	}
	archive := filepath.Join(capsuleDir, criuImagesDir+".tar")
	defer os.Remove(archive)
	if err := r.WriteFile(ctx, archive); err != nil {
		return "", nil, fmt.Errorf("memory image %s: %w", memName, err)
	}
	if err := untarDir(archive, images); err != nil {
		_ = os.RemoveAll(images)
		return "", nil, err
	}
	return images, keys, nil
}

// restoreDir is where a VA memory image is unpacked for `runc restore`:
// the scratch tmpfs when there is one and the host has twice the image's
// stored bytes (plus 256 MiB) available — CRIU then reads its pages from
// memory, and the unpacking does not write them to disk — else the
// capsule's directory. The scratch directory is made traversable (not
// listable) so the restored tasks, which open some images themselves as
// capsule root, reach their own directory; every dump and restore
// directory in it is private to root or to its capsule's ids.
func (d *Driver) restoreDir(capsuleDir string, r *snapshot.Reader) string {
	local := filepath.Join(capsuleDir, criuImagesDir)
	if d.scratch == "" {
		return local
	}
	var stored int64
	for _, b := range r.Header().Builds {
		stored += b.DataLen
	}
	if memAvailable() < 2*stored+256<<20 {
		return local
	}
	if err := os.Chmod(d.scratch, 0o711); err != nil {
		return local
	}
	return filepath.Join(d.scratch, filepath.Base(capsuleDir)+".restore")
}

// restoreMemory restores a built (not started) capsule's processes from
// the CRIU images in images with `runc restore`. envd's standard output
// and error become the new capsule's envd.log. On failure nothing of the
// attempt is left running: the runc container is deleted and the capsule's
// cgroup emptied, so the caller can boot it instead.
func (d *Driver) restoreMemory(ctx context.Context, rec *record, images string, keys []string) error {
	if d.rt.runsc {
		return d.runscRestore(ctx, rec, images)
	}
	p := d.paths(rec.Key)
	work := filepath.Join(p.Dir, criuWorkDir)
	defer os.RemoveAll(work)
	defer os.RemoveAll(images)
	logf, err := os.OpenFile(filepath.Join(p.Dir, "envd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("container: %w", err)
	}
	defer logf.Close()
	if rec.IDBase != 0 {
		// criu reopens the inherited fd through /proc/self/fd from the
		// restored task, which runs as capsule root (see chownTree).
		if err := logf.Chown(int(rec.IDBase), int(rec.IDBase)); err != nil {
			return fmt.Errorf("container: %w", err)
		}
	}
	conf := append([]string(nil), baseCRIUConf...)
	for _, k := range keys {
		// criu inherits runc's stdio: fd 2 is the new envd.log.
		conf = append(conf, "inherit-fd fd[2]:"+k)
	}
	if err := d.makeRestoreMountpoints(rec); err != nil {
		return err
	}
	if err := chownTree(images, rec.IDBase); err != nil {
		return err
	}
	if u := usernsPathOf(p.Dir); u != "" {
		// The restored tasks join the user namespace this driver made for
		// the capsule (new id range, owner of its network namespace):
		// scripts/criu-patches makes criu clone the root task inside it
		// instead of making one with the dumped mapping.
		conf = append(conf, "join-ns user:"+u)
	}
	pidFile := filepath.Join(p.Dir, "pid")
	_ = os.Remove(pidFile)
	// A damaged image can leave criu spinning instead of failing: bound
	// the attempt by the image's size, not only by CRIUTimeout, so a
	// resume falls back to a boot within about a minute.
	rctx, cancel := context.WithTimeout(ctx, restoreBudget(imagesSize(images)))
	defer cancel()
	err = d.runcCRIU(rctx, conf, work, logf, "restore", "--detach", "--image-path", images,
		"--work-path", work, "--bundle", p.Dir, "--pid-file", pidFile, rec.Key)
	if err == nil {
		var b []byte
		if b, err = os.ReadFile(pidFile); err == nil {
			rec.PID, err = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if kerr := d.cg.remove(d.cgroupPath(rec.Key)); kerr != nil {
			d.log.Warn("empty cgroup after a failed memory restore", "id", rec.ID, "err", kerr)
		}
		// A runc killed mid-restore leaves the capsule's rootfs
		// bind-mounted at <runc state>/criu-root. It must go before
		// anything removes the state directory (runc delete does
		// RemoveAll, which would delete the capsule's files through the
		// mount); it also pins the overlay and the loop device.
		state := filepath.Join(d.runcRoot, rec.Key)
		if uerr := unmountUnder(state); uerr != nil {
			d.log.Error("unmount after a failed memory restore; capsule files at risk, not deleting runc state", "id", rec.ID, "err", uerr)
			return errors.Join(err, uerr)
		}
		_ = d.runcDelete(cctx, rec.Key)
		if rerr := removeSameFS(state); rerr != nil {
			d.log.Warn("remove runc state after a failed memory restore", "id", rec.ID, "err", rerr)
		}
		// criu locks the capsule's network with an nftables table while it
		// restores and may leave it behind when it fails: the capsule then
		// boots with its traffic dropped.
		if nerr := unlockNetwork(cctx, rec.Net.Netns); nerr != nil {
			d.log.Warn("remove criu network lock after a failed memory restore", "id", rec.ID, "err", nerr)
		}
		rec.PID = 0
		return err
	}
	// The dump was taken of a frozen cgroup; the restored tasks run.
	if err := d.cg.freeze(d.cgroupPath(rec.Key), false); err != nil {
		d.log.Warn("thaw after a memory restore", "id", rec.ID, "err", err)
	}
	if st, err := readCRIUStats("stats-restore", work, images); err == nil {
		d.log.Info("criu restore", "id", rec.ID, "forking", st.Forking, "restore", st.Restore, "pages_restored", st.PagesRestored)
	}
	rec.State = runtime.StateRunning
	rec.StartedAt = time.Now().UTC()
	return nil
}

// restoreBudget is how long a memory restore of an image of size bytes
// may take: a minute, plus a second per 50 MB (a slow disk reads a large
// image at that rate). CRIUTimeout still applies when shorter.
func restoreBudget(size int64) time.Duration {
	return time.Minute + time.Duration(size/(50<<20))*time.Second
}

// imagesSize is the total size of the files in dir (0 if unreadable).
func imagesSize(dir string) int64 {
	var n int64
	_ = filepath.WalkDir(dir, func(_ string, de os.DirEntry, err error) error {
		if err == nil && de.Type().IsRegular() {
			if fi, err := de.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

// unlockNetwork deletes the nftables tables criu names "CRIU-<id>" in the
// network namespace at netnsPath.
func unlockNetwork(ctx context.Context, netnsPath string) error {
	if netnsPath == "" {
		return nil
	}
	nft := func(args ...string) ([]byte, error) {
		full := append([]string{"--net=" + netnsPath, "nft"}, args...)
		out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
		if err != nil {
			return out, fmt.Errorf("nft %s in %s: %w: %s", strings.Join(args, " "), netnsPath, err, strings.TrimSpace(string(out)))
		}
		return out, nil
	}
	out, err := nft("list", "tables")
	if err != nil {
		return err
	}
	var errs []error
	for l := range strings.SplitSeq(string(out), "\n") {
		// "table <family> <name>"
		f := strings.Fields(l)
		if len(f) == 3 && f[0] == "table" && strings.HasPrefix(f[2], "CRIU-") {
			if _, err := nft("delete", "table", f[1], f[2]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// memoryImageOf returns the memory image a snapshot's disk header names
// ("" if the snapshot kept files only).
func memoryImageOf(snap runtime.SnapshotInfo, r *snapshot.Reader) string {
	if len(snap.Keys) > 1 {
		return snap.Keys[1]
	}
	return r.Metadata()[metaMemory]
}
