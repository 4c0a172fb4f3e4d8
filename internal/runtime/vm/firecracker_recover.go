package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// processes lists this backend's Firecracker processes (for the driver's
// recovery): their command line names api.sock and an --id, and their
// root (jailed) or working directory (not jailed) is that id's VM
// directory of this backend.
func (f *Firecracker) processes() []vmProc {
	procs, _ := os.ReadDir("/proc")
	var out []vmProc
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil || !bytes.Contains(b, []byte("--api-sock\x00"+fcAPISock+"\x00")) {
			continue
		}
		id := fcArgID(strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"))
		if id == "" {
			continue
		}
		link := "cwd"
		if f.Jailer != nil {
			link = "root"
		}
		dir, err := os.Readlink("/proc/" + p.Name() + "/" + link)
		if err != nil || filepath.Clean(dir) != filepath.Clean(f.workDir(MachineSpec{Dir: id})) {
			continue
		}
		out = append(out, vmProc{pid: pid, key: id})
	}
	return out
}

func fcArgID(args []string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--id="); ok {
			return v
		}
		if a == "--id" && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// remove kills the VM of key (if it runs) and removes its directory or
// jail: the driver's destroy of a capsule no Machine holds.
func (f *Firecracker) remove(key string) error {
	var errs []error
	for _, p := range f.processes() {
		if p.key != key {
			continue
		}
		_ = syscall.Kill(p.pid, syscall.SIGKILL)
		gone := false
		for range 200 {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.pid)); err != nil {
				gone = true
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		if !gone {
			errs = append(errs, fmt.Errorf("firecracker: process %d does not exit", p.pid))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return f.cleanup(f.workDir(MachineSpec{Dir: key}), key)
}
