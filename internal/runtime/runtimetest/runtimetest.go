// Package runtimetest is the conformance suite every runtime driver passes:
// Run(t, newDriver) drives a fresh driver through the life cycle, errors,
// limits and the optional capabilities it implements (Pauser, Snapshotter,
// WarmPooler, TemplateExporter). It talks to capsules only through the Driver interface, envd's
// HTTP /health at the capsule's IP:49983, and an optional Exec hook the
// driver's own test supplies for in-capsule commands.
package runtimetest

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// ExecFunc runs a command inside a running capsule and returns its output.
type ExecFunc func(ctx context.Context, d runtime.Driver, id string, args ...string) (string, error)

type options struct {
	template  string
	exec      ExecFunc
	helper    string
	hostState func() (string, error)
	ownKernel bool
	// oomKillsCapsule: a capsule over its memory limit is killed whole
	// (WithOOMKillsCapsule).
	oomKillsCapsule bool
}

// Option adjusts the suite.
type Option func(*options)

// WithTemplate names the template capsules are created from (default "minimal").
// It must contain a POSIX shell and coreutils-like tools (busybox is enough).
func WithTemplate(name string) Option { return func(o *options) { o.template = name } }

// WithExec enables the checks that look inside a capsule.
func WithExec(f ExecFunc) Option { return func(o *options) { o.exec = f } }

// WithOOMKillsCapsule tells RunHostile that the runtime kills a capsule
// whole when it exceeds its memory limit instead of one of its processes
// (gVisor: the host's OOM killer ends the sandbox; there is no OOM killer
// inside). The suite then fills the memory last and checks that the
// capsule is reported stopped and the neighbour is unaffected.
func WithOOMKillsCapsule() Option { return func(o *options) { o.oomKillsCapsule = true } }

// Run runs the suite. newDriver returns a ready (recovered) driver whose
// capsules are cleaned up when the test ends.
func Run(t *testing.T, newDriver func(t *testing.T) runtime.Driver, opts ...Option) {
	o := options{template: "minimal"}
	for _, f := range opts {
		f(&o)
	}
	s := &suite{o: o, newDriver: newDriver}
	t.Run("Lifecycle", s.lifecycle)
	t.Run("Errors", s.errors)
	t.Run("StopStart", s.stopStart)
	t.Run("Stats", s.stats)
	t.Run("Concurrent", s.concurrent)
	t.Run("InsideView", s.insideView)
	t.Run("Pause", s.pause)
	t.Run("Snapshot", s.snapshot)
	t.Run("WarmPool", s.warmPool)
	t.Run("ExportTemplate", s.exportTemplate)
}

type suite struct {
	o         options
	newDriver func(t *testing.T) runtime.Driver
}

var client = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// healthy asks envd's /health once, with a short deadline.
func healthy(ctx context.Context, info runtime.Info, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+info.EnvdAddr()+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode/100 == 2
}

// WaitHealthy polls envd's /health until it answers or the test times out.
func WaitHealthy(t testing.TB, info runtime.Info) {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	testutil.Eventually(t, testutil.Long, func() bool { return healthy(ctx, info, 500*time.Millisecond) },
		fmt.Sprintf("envd of %s at %s answers /health", info.ID, info.EnvdAddr()))
}

func (s *suite) spec(id string) runtime.Spec {
	return runtime.Spec{ID: id, Template: s.o.template}
}

func (s *suite) start(t *testing.T, d runtime.Driver, spec runtime.Spec) runtime.Info {
	t.Helper()
	ctx := testutil.Context(t, testutil.Long)
	if _, err := d.Create(ctx, spec); err != nil {
		t.Fatalf("Create(%s): %v", spec.ID, err)
	}
	info, err := d.Start(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Start(%s): %v", spec.ID, err)
	}
	WaitHealthy(t, info)
	return info
}

func (s *suite) lifecycle(t *testing.T) {
	d := s.newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	info, err := d.Create(ctx, runtime.Spec{ID: "cl-life", Template: s.o.template, Labels: map[string]string{"team": "t1"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if got, want := info.State, runtime.StateCreated; got != want {
		t.Errorf("state after Create = %s, want %s", got, want)
	}
	if !info.IP.IsValid() {
		t.Errorf("Create gave no IP")
	}
	if info.VCPUs <= 0 || info.MemoryMB <= 0 || info.DiskSizeMB <= 0 {
		t.Errorf("defaults not applied: %+v", info)
	}
	info, err = d.Start(ctx, "cl-life")
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got, want := info.State, runtime.StateRunning; got != want {
		t.Errorf("state after Start = %s, want %s", got, want)
	}
	WaitHealthy(t, info)
	got, err := d.Inspect(ctx, "cl-life")
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if got.ID != "cl-life" || got.Template != s.o.template || got.State != runtime.StateRunning || got.Labels["team"] != "t1" {
		t.Errorf("Inspect = %+v", got)
	}
	list, err := d.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(list) != 1 || list[0].ID != "cl-life" {
		t.Errorf("List = %+v, want just cl-life", list)
	}
	if err := d.Destroy(ctx, "cl-life"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
	if _, err := d.Inspect(ctx, "cl-life"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("Inspect after Destroy: err = %v, want ErrNotFound", err)
	}
	if healthy(ctx, info, 300*time.Millisecond) {
		t.Errorf("envd still answers after Destroy")
	}
	// The ID is free again.
	s.start(t, d, s.spec("cl-life"))
	if err := d.Destroy(ctx, "cl-life"); err != nil {
		t.Fatalf("Destroy (2): %v", err)
	}
}

func (s *suite) errors(t *testing.T) {
	d := s.newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	if _, err := d.Create(ctx, s.spec("cl-dup")); err != nil {
		t.Fatalf("Create: %v", err)
	}
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"create duplicate", func() error { _, err := d.Create(ctx, s.spec("cl-dup")); return err }, runtime.ErrExists},
		{"create bad id", func() error { _, err := d.Create(ctx, s.spec("../etc")); return err }, runtime.ErrInvalidSpec},
		{"create empty id", func() error { _, err := d.Create(ctx, s.spec("")); return err }, runtime.ErrInvalidSpec},
		{"create unknown template", func() error {
			_, err := d.Create(ctx, runtime.Spec{ID: "cl-nt", Template: "no-such-template"})
			return err
		}, runtime.ErrNoTemplate},
		{"start unknown", func() error { _, err := d.Start(ctx, "cl-none"); return err }, runtime.ErrNotFound},
		{"stop unknown", func() error { return d.Stop(ctx, "cl-none", time.Second) }, runtime.ErrNotFound},
		{"destroy unknown", func() error { return d.Destroy(ctx, "cl-none") }, runtime.ErrNotFound},
		{"inspect unknown", func() error { _, err := d.Inspect(ctx, "cl-none"); return err }, runtime.ErrNotFound},
		{"stats unknown", func() error { _, err := d.Stats(ctx, "cl-none"); return err }, runtime.ErrNotFound},
		{"stats not running", func() error { _, err := d.Stats(ctx, "cl-dup"); return err }, runtime.ErrInvalidState},
	}
	if p, ok := d.(runtime.Pauser); ok {
		tests = append(tests,
			struct {
				name string
				call func() error
				want error
			}{"pause not running", func() error { return p.Pause(ctx, "cl-dup") }, runtime.ErrInvalidState},
			struct {
				name string
				call func() error
				want error
			}{"resume not paused", func() error { return p.Resume(ctx, "cl-dup") }, runtime.ErrInvalidState},
		)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
	// A failed create leaves nothing: the ID of a failed create is free.
	if _, err := d.Inspect(ctx, "cl-nt"); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("failed Create left a capsule: %v", err)
	}
	if err := d.Destroy(ctx, "cl-dup"); err != nil {
		t.Errorf("Destroy: %v", err)
	}
}

func (s *suite) stopStart(t *testing.T) {
	d := s.newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	info := s.start(t, d, s.spec("cl-stop"))
	if err := d.Stop(ctx, "cl-stop", 5*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	got, err := d.Inspect(ctx, "cl-stop")
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if got.State != runtime.StateStopped {
		t.Errorf("state after Stop = %s, want stopped", got.State)
	}
	if healthy(ctx, info, 300*time.Millisecond) {
		t.Errorf("envd answers after Stop")
	}
	info, err = d.Start(ctx, "cl-stop")
	if err != nil {
		t.Fatalf("Start again: %v", err)
	}
	WaitHealthy(t, info)
}

func (s *suite) stats(t *testing.T) {
	d := s.newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	spec := s.spec("cl-stats")
	spec.MemoryMB = 96
	spec.DiskSizeMB = 128
	s.start(t, d, spec)
	st, err := d.Stats(ctx, "cl-stats")
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if st.MemoryBytes == 0 || st.PIDs == 0 || st.CPUUsage <= 0 {
		t.Errorf("Stats show an idle-less capsule: %+v", st)
	}
	if got, want := st.MemoryLimitBytes, uint64(96)<<20; got != want {
		t.Errorf("memory limit = %d, want %d", got, want)
	}
	if st.DiskTotalBytes < 100<<20 || st.DiskTotalBytes > 128<<20 {
		t.Errorf("disk total = %d, want about 128 MiB", st.DiskTotalBytes)
	}
}

func (s *suite) concurrent(t *testing.T) {
	d := s.newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	const n = 4
	infos := make([]runtime.Info, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("cl-par-%d", i)
			if _, err := d.Create(ctx, s.spec(id)); err != nil {
				errs[i] = err
				return
			}
			infos[i], errs[i] = d.Start(ctx, id)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("capsule %d: %v", i, errs[i])
		}
		if seen[infos[i].IP.String()] {
			t.Errorf("IP %s given twice", infos[i].IP)
		}
		seen[infos[i].IP.String()] = true
		WaitHealthy(t, infos[i])
	}
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = d.Destroy(ctx, infos[i].ID)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Destroy %d: %v", i, err)
		}
	}
}

func (s *suite) insideView(t *testing.T) {
	if s.o.exec == nil {
		t.Skip("driver test gave no Exec hook")
	}
	d := s.newDriver(t)
	ctx := testutil.Context(t, testutil.Long)
	s.start(t, d, s.spec("cl-view"))
	out, err := s.o.exec(ctx, d, "cl-view", "hostname")
	if err != nil {
		t.Fatalf("exec hostname: %v: %s", err, out)
	}
	if got, want := strings.TrimSpace(out), "cl-view"; got != want {
		t.Errorf("hostname = %q, want %q", got, want)
	}
	out, err = s.o.exec(ctx, d, "cl-view", "sh", "-c", "echo hello > /root/f && cat /root/f")
	if err != nil || strings.TrimSpace(out) != "hello" {
		t.Errorf("write in capsule: %v: %q", err, out)
	}
}

func (s *suite) pause(t *testing.T) {
	d := s.newDriver(t)
	p, ok := d.(runtime.Pauser)
	if !ok {
		t.Skip("driver is not a Pauser")
	}
	ctx := testutil.Context(t, testutil.Long)
	info := s.start(t, d, s.spec("cl-pause"))
	if err := p.Pause(ctx, "cl-pause"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if got, _ := d.Inspect(ctx, "cl-pause"); got.State != runtime.StatePaused {
		t.Errorf("state = %s, want paused", got.State)
	}
	if healthy(ctx, info, 300*time.Millisecond) {
		t.Errorf("a paused capsule answered /health")
	}
	if err := p.Resume(ctx, "cl-pause"); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	if got, _ := d.Inspect(ctx, "cl-pause"); got.State != runtime.StateRunning {
		t.Errorf("state = %s, want running", got.State)
	}
	WaitHealthy(t, info)
	// Destroying a paused capsule works too.
	if err := p.Pause(ctx, "cl-pause"); err != nil {
		t.Fatalf("Pause: %v", err)
	}
	if err := d.Destroy(ctx, "cl-pause"); err != nil {
		t.Fatalf("Destroy paused: %v", err)
	}
}

func (s *suite) snapshot(t *testing.T) {
	d := s.newDriver(t)
	sn, ok := d.(runtime.Snapshotter)
	if !ok {
		t.Skip("driver is not a Snapshotter")
	}
	ctx := testutil.Context(t, testutil.Long)
	info := s.start(t, d, s.spec("cl-snap"))
	if s.o.exec != nil {
		if out, err := s.o.exec(ctx, d, "cl-snap", "sh", "-c", "echo kept > /root/keep && rm /etc/group"); err != nil {
			t.Fatalf("exec: %v: %s", err, out)
		}
	}
	snap, err := sn.Snapshot(ctx, "cl-snap")
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if snap.CapsuleID != "cl-snap" || snap.Template != s.o.template || len(snap.Keys) == 0 {
		t.Errorf("SnapshotInfo = %+v", snap)
	}
	if got, _ := d.Inspect(ctx, "cl-snap"); got.State != runtime.StateSnapshotted {
		t.Errorf("state = %s, want snapshotted", got.State)
	}
	if healthy(ctx, info, 300*time.Millisecond) {
		t.Errorf("a snapshotted capsule answered /health")
	}
	got, err := sn.Restore(ctx, snap)
	if err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if got.ID != "cl-snap" || got.State != runtime.StateRunning || got.Template != s.o.template {
		t.Errorf("restored = %+v", got)
	}
	if got.MemoryKept != sn.MemorySnapshots() {
		t.Errorf("MemoryKept = %v, driver says memory snapshots = %v", got.MemoryKept, sn.MemorySnapshots())
	}
	WaitHealthy(t, got)
	if s.o.exec != nil {
		out, err := s.o.exec(ctx, d, "cl-snap", "cat", "/root/keep")
		if err != nil || strings.TrimSpace(out) != "kept" {
			t.Errorf("file after restore: %v: %q", err, out)
		}
		if out, err := s.o.exec(ctx, d, "cl-snap", "test", "-e", "/etc/group"); err == nil {
			t.Errorf("deleted file came back after restore: %s", out)
		}
	}
	// A live capsule cannot be restored over.
	if _, err := sn.Restore(ctx, snap); !errors.Is(err, runtime.ErrExists) {
		t.Errorf("Restore over a running capsule: err = %v, want ErrExists", err)
	}
}

func (s *suite) warmPool(t *testing.T) {
	d := s.newDriver(t)
	wp, ok := d.(runtime.WarmPooler)
	if !ok {
		t.Skip("driver is not a WarmPooler")
	}
	ctx := testutil.Context(t, testutil.Long)
	if _, err := wp.Take(ctx, s.spec("cl-warm0")); !errors.Is(err, runtime.ErrPoolEmpty) {
		t.Errorf("Take from no pool: err = %v, want ErrPoolEmpty", err)
	}
	wp.SetWarmPool(s.o.template, 2)
	var info runtime.Info
	testutil.Eventually(t, testutil.Long, func() bool {
		var err error
		info, err = wp.Take(ctx, s.spec("cl-warm"))
		return err == nil
	}, "warm pool gives a capsule")
	if info.ID != "cl-warm" || info.State != runtime.StateRunning {
		t.Errorf("Take = %+v", info)
	}
	if !healthy(ctx, info, 2*time.Second) {
		t.Errorf("taken capsule does not answer /health at once")
	}
	if s.o.exec != nil {
		out, err := s.o.exec(ctx, d, "cl-warm", "hostname")
		if err != nil || strings.TrimSpace(out) != "cl-warm" {
			t.Errorf("hostname of taken capsule: %v: %q", err, out)
		}
	}
	if _, err := wp.Take(ctx, runtime.Spec{ID: "cl-warm", Template: s.o.template}); !errors.Is(err, runtime.ErrExists) && !errors.Is(err, runtime.ErrPoolEmpty) {
		t.Errorf("Take with a used ID: err = %v, want ErrExists", err)
	}
	big := s.spec("cl-big")
	big.MemoryMB = 4096
	if _, err := wp.Take(ctx, big); !errors.Is(err, runtime.ErrPoolMismatch) {
		t.Errorf("Take with other limits: err = %v, want ErrPoolMismatch", err)
	}
	list, err := d.List(ctx)
	if err != nil || len(list) != 1 {
		t.Errorf("List shows pool capsules: %v %+v", err, list)
	}
	wp.SetWarmPool(s.o.template, 0)
	if err := d.Destroy(ctx, "cl-warm"); err != nil {
		t.Errorf("Destroy: %v", err)
	}
}

func (s *suite) exportTemplate(t *testing.T) {
	d := s.newDriver(t)
	ex, ok := d.(runtime.TemplateExporter)
	if !ok {
		t.Skip("driver is not a TemplateExporter")
	}
	ctx := testutil.Context(t, testutil.Long)
	dst := filepath.Join(t.TempDir(), "export.tar")
	if err := ex.ExportTemplate(ctx, "cl-nope", dst); !errors.Is(err, runtime.ErrNotFound) {
		t.Errorf("ExportTemplate of an unknown capsule: err = %v, want ErrNotFound", err)
	}
	s.start(t, d, s.spec("cl-export"))
	if s.o.exec != nil {
		if out, err := s.o.exec(ctx, d, "cl-export", "sh", "-c", "echo exported > /root/mark && echo gone > /run/tmpfs-file"); err != nil {
			t.Fatalf("exec: %v: %s", err, out)
		}
	}
	// The way the agent uses it: frozen when the driver can pause.
	p, canPause := d.(runtime.Pauser)
	if canPause {
		if err := p.Pause(ctx, "cl-export"); err != nil {
			t.Fatalf("Pause: %v", err)
		}
	}
	if err := ex.ExportTemplate(ctx, "cl-export", dst); err != nil {
		t.Fatalf("ExportTemplate: %v", err)
	}
	if canPause {
		if err := p.Resume(ctx, "cl-export"); err != nil {
			t.Fatalf("Resume: %v", err)
		}
	}
	files := readTar(t, dst)
	if _, ok := files["bin/sh"]; !ok {
		t.Errorf("archive lacks the template's bin/sh (%d entries)", len(files))
	}
	// Mount points may be there as empty directories, never their content.
	for name := range files {
		if strings.HasPrefix(name, "proc/") || strings.HasPrefix(name, "sys/") || strings.HasPrefix(name, "dev/") {
			t.Errorf("archive holds %s from a mounted file system", name)
			break
		}
	}
	if s.o.exec != nil {
		if got := files["root/mark"]; got != "exported\n" {
			t.Errorf("root/mark in the archive = %q, want the file the capsule wrote", got)
		}
		if _, ok := files["run/tmpfs-file"]; ok {
			t.Errorf("archive holds a file of a tmpfs mounted in the capsule")
		}
	}
	// The capsule runs on; a stopped one cannot be exported.
	if got, _ := d.Inspect(ctx, "cl-export"); got.State != runtime.StateRunning {
		t.Errorf("state after export = %s, want running", got.State)
	}
	if err := d.Stop(ctx, "cl-export", 5*time.Second); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := ex.ExportTemplate(ctx, "cl-export", dst); !errors.Is(err, runtime.ErrInvalidState) {
		t.Errorf("ExportTemplate of a stopped capsule: err = %v, want ErrInvalidState", err)
	}
	if err := d.Destroy(ctx, "cl-export"); err != nil {
		t.Fatalf("Destroy: %v", err)
	}
}

// readTar returns the regular files (name without "./" → content) and the
// other entries (name without "./" and a trailing "/" → "") of a tar
// archive.
func readTar(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/"), "/")
		if h.Typeflag != tar.TypeReg || h.Size > 1<<20 {
			out[name] = ""
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		out[name] = string(b)
	}
}
