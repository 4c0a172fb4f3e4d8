package vm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/network"
	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// Recover implements runtime.Driver: it re-adopts every capsule whose
// state file and resources are intact (a running or paused one only if
// its VM process still answers), and removes the rest and every VM
// process, namespace, rule and RAM file of this driver that no adopted
// capsule owns.
func (d *Driver) Recover(ctx context.Context) ([]runtime.Info, error) {
	entries, err := os.ReadDir(d.capsDir)
	if err != nil {
		return nil, err
	}
	var out []runtime.Info
	keep := map[string]bool{}
	var errs []error
	for _, e := range entries {
		key := e.Name()
		rec, err := d.readRecord(key)
		if err == nil {
			err = d.adopt(ctx, rec)
		}
		if err != nil {
			d.log.Warn("capsule not recovered; removing it", "key", key, "err", err)
			errs = append(errs, d.remove(ctx, key, rec))
			continue
		}
		keep[key] = true
		c, _ := d.get(rec.ID)
		out = append(out, d.info(&c.rec))
		c.mu.Unlock()
	}
	// VM processes of this driver (their control socket is in its
	// SocketDir) that no kept capsule owns.
	for _, p := range d.vmProcesses() {
		if !keep[p.key] {
			errs = append(errs, killVM(p.pid, d.dir(p.key)))
		}
	}
	// RAM files of capsules without a VM.
	mems, _ := os.ReadDir(d.cfg.MemDir)
	for _, m := range mems {
		key := strings.TrimSuffix(m.Name(), ".mem")
		c := d.byKey(key)
		if c == nil || c.m == nil {
			errs = append(errs, removeMissingOK(filepath.Join(d.cfg.MemDir, m.Name())))
		}
	}
	var orphans []string
	ns, _ := d.net.Namespaces()
	prefix := d.cfg.Network.NetnsPrefix
	if prefix == "" {
		prefix = network.NetnsPrefix
	}
	for _, n := range ns {
		orphans = append(orphans, strings.TrimPrefix(n, prefix))
	}
	if err := d.net.Sweep(func(k string) bool { return keep[k] }, orphans); err != nil {
		errs = append(errs, err)
	}
	return out, errors.Join(errs...)
}

func (d *Driver) byKey(key string) *capsule {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.caps {
		if c.rec.Key == key {
			return c
		}
	}
	return nil
}

func (d *Driver) readRecord(key string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(d.dir(key), "state.json"))
	if err != nil {
		return nil, err
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	if rec.Key != key || !runtime.ValidID(rec.ID) {
		return nil, fmt.Errorf("state.json of %s names %q/%q", key, rec.Key, rec.ID)
	}
	return &rec, nil
}

// adopt takes rec over if its resources are intact.
func (d *Driver) adopt(ctx context.Context, rec *record) error {
	c := &capsule{rec: *rec}
	if rec.Pool {
		return errors.New("a warm-pool microVM of an earlier driver")
	}
	switch rec.State {
	case runtime.StateSnapshotted:
		c.rec.Net = network.Allocation{}
	case runtime.StateCreated, runtime.StateStopped, runtime.StateRunning, runtime.StatePaused:
		if _, err := os.Stat(rec.Net.Netns); err != nil {
			return fmt.Errorf("network namespace: %w", err)
		}
		if _, err := os.Stat(d.diskPath(rec.Key)); err != nil {
			return fmt.Errorf("disk: %w", err)
		}
		if err := d.net.Adopt(rec.Net); err != nil {
			return err
		}
		if rec.State == runtime.StateRunning || rec.State == runtime.StatePaused {
			m, err := d.vmm.Attach(ctx, d.machineSpec(rec), rec.PID)
			if err != nil {
				_ = d.net.Teardown(rec.Net)
				return err
			}
			c.m = m
			if run, err := m.Running(ctx); err == nil {
				c.rec.State = runtime.StatePaused
				if run {
					c.rec.State = runtime.StateRunning
				}
			}
		}
	default:
		return fmt.Errorf("unknown state %q", rec.State)
	}
	if err := d.reserve(rec.ID, c); err != nil {
		if c.m != nil {
			_ = c.m.Close()
		}
		return err
	}
	return nil
}

// remove deletes every trace of the capsule with key (rec may be nil).
func (d *Driver) remove(ctx context.Context, key string, rec *record) error {
	var errs []error
	if rec != nil && rec.PID != 0 {
		errs = append(errs, killVM(rec.PID, d.dir(key)))
	}
	for _, p := range d.vmProcesses() {
		if p.key == key {
			errs = append(errs, killVM(p.pid, d.dir(key)))
		}
	}
	a := network.Allocation{Key: key, Index: -1, Netns: d.net.NetnsPath(key)}
	if rec != nil && rec.Net.Key == key {
		a = rec.Net
	}
	errs = append(errs, d.net.Teardown(a))
	if fc, ok := d.vmm.(*Firecracker); ok {
		errs = append(errs, fc.remove(key))
	}
	errs = append(errs, removeMissingOK(d.memPath(key)), os.RemoveAll(d.dir(key)))
	_ = ctx
	return errors.Join(errs...)
}

type vmProc struct {
	pid int
	key string
}

// vmProcesses lists the VMM processes whose control socket is in this
// driver's SocketDir.
func (d *Driver) vmProcesses() []vmProc {
	var sockDir string
	if fc, ok := d.vmm.(*Firecracker); ok {
		return fc.processes()
	}
	if q, ok := d.vmm.(*QEMU); ok {
		sockDir = q.SocketDir
	} else {
		return nil
	}
	marker := []byte("unix:" + filepath.Clean(sockDir) + "/")
	procs, _ := os.ReadDir("/proc")
	var out []vmProc
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err != nil {
			continue
		}
		i := bytes.Index(b, marker)
		if i < 0 {
			continue
		}
		rest := b[i+len(marker):]
		j := bytes.Index(rest, []byte(".qmp"))
		if j <= 0 {
			continue
		}
		out = append(out, vmProc{pid: pid, key: string(rest[:j])})
	}
	return out
}
