package builds

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Labels set on a build capsule.
const (
	// LabelBuild holds the build's id.
	LabelBuild = "wrenn.build"
	// LabelTeam holds the build's team id.
	LabelTeam = "team_id"
)

// BuildOfCapsule returns the build a capsule runs for, from its labels.
func BuildOfCapsule(labels map[string]string) (buildID, teamID string, ok bool) {
	buildID, teamID = labels[LabelBuild], labels[LabelTeam]
	return buildID, teamID, buildID != "" && teamID != ""
}

// MsgInterrupted is the error of a build whose control plane stopped.
var MsgInterrupted = errInterrupted.Error()

// Agents hands out host agent clients (internal/api/agents.Pool).
type Agents interface {
	Client(h store.Host) hostagentv1connect.HostAgentServiceClient
}

// Placer picks a host for a capsule (internal/scheduler.Scheduler).
type Placer interface {
	Pick(ctx context.Context, team store.Team, req scheduler.Request) (store.Host, error)
	// Release forgets a placement whose capsule is gone.
	Release(hostID, capsuleID string)
}

// Config configures a Runner. Zero durations take the defaults.
type Config struct {
	Store     store.Store
	Agents    Agents
	Scheduler Placer
	// Capsules starts and destroys the build capsules (as internal
	// capsules); nil builds one from Store, Agents and Scheduler.
	Capsules *capsules.Service
	Logger   *slog.Logger
	// PollInterval is how often a running step re-reads its build to
	// notice a cancel (default 1 s).
	PollInterval time.Duration
	// StaleMargin is added to a build's timeout before a running build
	// whose updated_at has not moved is declared interrupted (default 2 min).
	StaleMargin time.Duration
	// MaxConcurrent bounds the builds this runner executes at once
	// (default 2).
	MaxConcurrent int
}

// Runner executes queued builds. Run it on any number of replicas.
type Runner struct {
	cfg  Config
	log  *slog.Logger
	sem  chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	mine map[string]bool // builds this runner is executing
}

// New returns a runner.
func New(cfg Config) *Runner {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.StaleMargin <= 0 {
		cfg.StaleMargin = 2 * time.Minute
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 2
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Capsules == nil {
		cfg.Capsules = capsules.New(capsules.Config{Store: cfg.Store, Agents: cfg.Agents, Scheduler: cfg.Scheduler, Logger: cfg.Logger})
	}
	return &Runner{
		cfg: cfg, log: cfg.Logger.With("component", "builds"),
		sem: make(chan struct{}, cfg.MaxConcurrent), mine: map[string]bool{},
	}
}

// Run runs a pass now and then every interval until ctx ends, then waits
// for the builds it started: they are cancelled by ctx, recorded as
// interrupted and their capsules destroyed.
func (r *Runner) Run(ctx context.Context, interval time.Duration) {
	defer r.wg.Wait()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := r.Pass(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("build pass failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Wait waits for the builds started by Pass.
func (r *Runner) Wait() { r.wg.Wait() }

// Pass fails stale running builds, then claims pending builds (oldest
// first) up to the free concurrency and starts each in a goroutine bound
// to ctx.
func (r *Runner) Pass(ctx context.Context) error {
	all, err := r.cfg.Store.AdminListBuilds(ctx)
	if err != nil {
		return fmt.Errorf("builds: list: %w", err)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].CreatedAt.Before(all[j].CreatedAt) })
	var errs []error
	for _, b := range all {
		if b.Status == store.BuildRunning {
			if err := r.sweepStale(ctx, b); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, b := range all {
		if b.Status != store.BuildPending {
			continue
		}
		select {
		case r.sem <- struct{}{}:
		default:
			return errors.Join(errs...) // every slot busy; the next pass continues
		}
		ok, err := r.cfg.Store.UpdateBuildStatus(ctx, b.TeamID, b.ID, []store.BuildStatus{store.BuildPending}, store.BuildRunning, "claimed by a build runner", "")
		if err != nil || !ok {
			<-r.sem
			if err != nil {
				errs = append(errs, fmt.Errorf("builds: claim %s: %w", b.ID, err))
			}
			continue // another replica claimed it, or it was cancelled
		}
		r.mu.Lock()
		r.mine[b.ID] = true
		r.mu.Unlock()
		r.wg.Go(func() {
			defer func() {
				r.mu.Lock()
				delete(r.mine, b.ID)
				r.mu.Unlock()
				<-r.sem
			}()
			r.execute(ctx, b)
		})
	}
	return errors.Join(errs...)
}

// sweepStale fails a running build nobody has touched for longer than its
// timeout plus the margin (its control plane died) and destroys any capsule
// left for it.
func (r *Runner) sweepStale(ctx context.Context, b store.Build) error {
	r.mu.Lock()
	mine := r.mine[b.ID]
	r.mu.Unlock()
	if mine {
		return nil
	}
	timeout := time.Duration(DefaultTimeoutSec) * time.Second
	if s, err := ParseSpec(b.Spec); err == nil {
		timeout = time.Duration(*s.TimeoutSec) * time.Second
	}
	if time.Since(b.UpdatedAt) < timeout+r.cfg.StaleMargin {
		return nil
	}
	ok, err := r.cfg.Store.UpdateBuildStatus(ctx, b.TeamID, b.ID, []store.BuildStatus{store.BuildRunning}, store.BuildFailed, MsgInterrupted, "")
	if err != nil {
		return fmt.Errorf("builds: fail stale %s: %w", b.ID, err)
	}
	if !ok {
		return nil
	}
	r.log.Warn("build interrupted: its control plane stopped", "build_id", b.ID, "team_id", b.TeamID, "updated_at", b.UpdatedAt)
	hosts, err := r.cfg.Store.ListHosts(ctx)
	if err != nil {
		return fmt.Errorf("builds: list hosts: %w", err)
	}
	for _, h := range hosts {
		if h.Status == store.HostUnavailable {
			continue // the reconciler destroys it when the host comes back
		}
		r.cfg.Capsules.DestroyInternal(ctx, h, b.ID)
	}
	return nil
}

// outcome is how a build ended.
type outcome struct {
	status     store.BuildStatus
	msg        string
	templateID string
}

func failed(format string, args ...any) outcome {
	return outcome{status: store.BuildFailed, msg: fmt.Sprintf(format, args...)}
}

// errStopped: the build left running behind the runner's back (cancelled,
// or failed by a stale sweep); the runner just cleans up.
var errStopped = errors.New("build is no longer running")

// execute runs one claimed build to its end and records the outcome.
func (r *Runner) execute(ctx context.Context, b store.Build) {
	log := r.log.With("build_id", b.ID, "team_id", b.TeamID, "template_name", b.TemplateName)
	start := time.Now()
	out := r.build(ctx, b, log)
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if out.status == "" {
		log.Info("build stopped: no longer running (cancelled)", "elapsed", time.Since(start).Round(time.Millisecond))
		return
	}
	ok, err := r.cfg.Store.UpdateBuildStatus(bg, b.TeamID, b.ID, []store.BuildStatus{store.BuildRunning}, out.status, out.msg, out.templateID)
	switch {
	case err != nil:
		log.Error("record build outcome", "status", out.status, "err", err)
	case !ok && out.templateID != "":
		// Cancelled between the template's creation and now: the build
		// did not produce it.
		t, gerr := r.cfg.Store.GetTemplate(bg, b.TeamID, out.templateID)
		if derr := r.cfg.Store.DeleteTemplate(bg, b.TeamID, out.templateID); derr != nil {
			log.Warn("remove the template of a cancelled build", "template_id", out.templateID, "err", derr)
		} else if gerr == nil {
			if herr := capsules.DeleteTemplateFiles(bg, r.cfg.Store, r.cfg.Agents, t); herr != nil {
				log.Warn("remove the files of a cancelled build's template", "template_id", out.templateID, "err", herr)
			}
		}
		log.Info("build cancelled at its end; template removed", "template_id", out.templateID)
	case !ok:
		log.Info("build stopped: no longer running", "status", out.status)
	default:
		log.Info("build finished", "status", out.status, "error", out.msg, "template_id", out.templateID,
			"elapsed", time.Since(start).Round(time.Millisecond))
	}
}

// progress records a step in the build's error field (and moves its
// updated_at), conditional on the build still running.
func (r *Runner) progress(ctx context.Context, b store.Build, msg string) error {
	ok, err := r.cfg.Store.UpdateBuildStatus(context.WithoutCancel(ctx), b.TeamID, b.ID,
		[]store.BuildStatus{store.BuildRunning}, store.BuildRunning, msg, "")
	if err != nil {
		return fmt.Errorf("record progress: %w", err)
	}
	if !ok {
		return errStopped
	}
	return nil
}

// running re-reads the build: errStopped when it left running.
func (r *Runner) running(ctx context.Context, b store.Build) error {
	cur, err := r.cfg.Store.GetBuild(context.WithoutCancel(ctx), b.TeamID, b.ID)
	if errors.Is(err, store.ErrNotFound) {
		return errStopped
	}
	if err != nil {
		return err
	}
	if cur.Status != store.BuildRunning {
		return errStopped
	}
	return nil
}

// build does the work; an empty outcome status means the build was
// stopped from outside and nothing is to be recorded.
func (r *Runner) build(parent context.Context, b store.Build, log *slog.Logger) outcome {
	spec, err := ParseSpec(b.Spec)
	if err != nil {
		return failed("invalid spec: %v", err)
	}
	timeout := time.Duration(*spec.TimeoutSec) * time.Second
	ctx, cancel := context.WithTimeoutCause(parent, timeout, errTimedOut)
	defer cancel()
	// stopped maps an error seen while ctx may be done to an outcome.
	stopped := func(what string, err error) outcome {
		// The agent enforces the deadline the call carries, so it may
		// answer deadline_exceeded a moment before this side's timer
		// fires: give the timer that moment before judging.
		if connect.CodeOf(err) == connect.CodeDeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
			if dl, ok := ctx.Deadline(); ok && time.Until(dl) < time.Second {
				select {
				case <-ctx.Done():
				case <-time.After(time.Until(dl) + 50*time.Millisecond):
				}
			}
		}
		switch {
		case errors.Is(err, errStopped):
			return outcome{}
		case errors.Is(context.Cause(ctx), errTimedOut):
			return failed("timed out after %s (timeout_sec %d) during %s", timeout, *spec.TimeoutSec, what)
		case parent.Err() != nil:
			return failed("%s", MsgInterrupted)
		}
		return failed("%s: %v", what, err)
	}

	from, err := ResolveFrom(ctx, r.cfg.Store, b.TeamID, spec.From)
	if errors.Is(err, store.ErrNotFound) {
		return failed("template %q (spec.from) not found", spec.From)
	}
	if err != nil {
		return stopped("resolve spec.from", err)
	}
	if t, err := r.cfg.Store.GetTemplateByName(ctx, b.TeamID, b.TemplateName); err == nil && t.TeamID == b.TeamID {
		return failed("the team already has a template named %q; delete it first", b.TemplateName)
	}
	if err := r.progress(ctx, b, "starting a capsule from "+from.Name); err != nil {
		return stopped("start", err)
	}
	// The agent's own TTL reaps the capsule even if this control plane
	// dies mid-build.
	ttl := *spec.TimeoutSec + int64(r.cfg.StaleMargin/time.Second)
	created, err := r.cfg.Capsules.Create(ctx, capsules.SystemScope(), capsules.CreateRequest{
		VCPUs: spec.VCPUs, MemoryMB: spec.MemoryMB, DiskSizeMB: spec.DiskSizeMB, TimeoutSec: &ttl,
		Env: spec.Env, AllowInternet: spec.AllowInternet,
		Internal: &capsules.Internal{
			ID: b.ID, TeamID: b.TeamID, From: from, DefaultWorkdir: spec.Workdir,
			Labels: map[string]string{LabelBuild: b.ID, LabelTeam: b.TeamID},
		},
	})
	if errors.Is(err, scheduler.ErrNoHosts) || errors.Is(err, scheduler.ErrNoCapacity) {
		return failed("no host can run the build: %v", err)
	}
	if err != nil {
		return stopped("create the build capsule", err)
	}
	host := created.Host
	defer r.cfg.Capsules.DestroyInternal(ctx, host, b.ID)
	agent := r.cfg.Agents.Client(host)
	log = log.With("host_id", host.ID)
	log.Info("build started", "from", from.Name, "steps", len(spec.Run))

	n := len(spec.Run)
	for i, step := range spec.Run {
		if err := r.progress(ctx, b, fmt.Sprintf("running step %d/%d: %s", i+1, n, firstLine(step, 200))); err != nil {
			return stopped(fmt.Sprintf("step %d/%d", i+1, n), err)
		}
		stepStart := time.Now()
		log.Info("build step started", "step", i+1, "of", n, "cmd", firstLine(step, 200))
		res, err := r.runStep(ctx, agent, b, spec, step)
		if err != nil {
			return stopped(fmt.Sprintf("step %d/%d", i+1, n), err)
		}
		log.Info("build step ended", "step", i+1, "of", n, "exit_code", res.exitCode,
			"elapsed", time.Since(stepStart).Round(time.Millisecond))
		if !res.exited || res.exitCode != 0 {
			how := fmt.Sprintf("exit code %d", res.exitCode)
			if !res.exited {
				how = "did not exit normally: " + res.status
			}
			return failed("step %d/%d failed (%s): %s\nstderr (at most the last %d bytes):\n%s",
				i+1, n, how, firstLine(step, 200), stderrTail, res.stderr)
		}
	}

	if err := r.progress(ctx, b, "snapshotting the capsule into a template"); err != nil {
		return stopped("snapshot", err)
	}
	public := b.TeamID == store.PlatformTeamID
	// capsules.SnapshotToTemplate stores it in the shared template store
	// when the host has one (any host then runs it), else on this host
	// only (capsules of it are placed here); it records the row, or leaves
	// nothing.
	tmpl := store.Template{ID: store.NewID(store.PrefixTemplate), TeamID: b.TeamID, Name: b.TemplateName, Public: public}
	recorded, _, err := r.cfg.Capsules.SnapshotToTemplate(ctx, host, b.ID, tmpl, false)
	if err != nil {
		var se *capsules.Error
		if errors.As(err, &se) && se.Kind == capsules.KindConflict && errors.Is(err, store.ErrAlreadyExists) {
			return failed("the team already has a template named %q", b.TemplateName)
		}
		return stopped("snapshot the capsule", err)
	}
	if err := r.running(ctx, b); err != nil {
		// Cancelled meanwhile: the template must not outlive the build.
		if derr := r.cfg.Capsules.DeleteTemplate(context.WithoutCancel(ctx), recorded); derr != nil {
			log.Warn("remove the template of a cancelled build", "template_id", recorded.ID, "err", derr)
		}
		return stopped("snapshot", err)
	}
	tmpl = recorded
	log.Info("template built", "template_id", tmpl.ID, "host_template", capsules.HostTemplateName(tmpl), "size_bytes", tmpl.SizeBytes)
	return outcome{status: store.BuildSucceeded, templateID: tmpl.ID}
}

var errTimedOut = errors.New("build timed out")

// stderrTail is how much of a failed step's stderr the build error keeps.
const stderrTail = 4096

type stepResult struct {
	exitCode int32
	exited   bool
	status   string
	stderr   string
}

// runStep runs one step through the agent's exec stream, re-reading the
// build every PollInterval; a cancel ends the stream, which kills the
// process.
func (r *Runner) runStep(ctx context.Context, agent hostagentv1connect.HostAgentServiceClient, b store.Build, spec Spec, step string) (stepResult, error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type done struct {
		res stepResult
		err error
	}
	ch := make(chan done, 1)
	go func() {
		res, err := execStream(sctx, agent, &pb.ExecRequest{
			CapsuleId: b.ID, Cmd: "/bin/sh", Args: []string{"-c", step}, Env: spec.Env, Cwd: spec.Workdir,
		})
		ch <- done{res, err}
	}()
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case d := <-ch:
			if d.err != nil && context.Cause(sctx) != nil && errors.Is(context.Cause(sctx), errStopped) {
				return stepResult{}, errStopped
			}
			return d.res, d.err
		case <-t.C:
			if err := r.running(ctx, b); errors.Is(err, errStopped) {
				cancel(errStopped)
				<-ch
				return stepResult{}, errStopped
			}
		}
	}
}

func execStream(ctx context.Context, agent hostagentv1connect.HostAgentServiceClient, req *pb.ExecRequest) (stepResult, error) {
	st, err := agent.ExecStream(ctx, connect.NewRequest(req))
	if err != nil {
		return stepResult{}, err
	}
	defer func() { _ = st.Close() }()
	var tail tailBuffer
	for st.Receive() {
		m := st.Msg()
		if e := m.GetStderr(); len(e) > 0 {
			tail.Write(e)
		}
		if end := m.GetEnd(); end != nil {
			return stepResult{exitCode: end.GetExitCode(), exited: end.GetExited(), status: end.GetStatus() + end.GetError(), stderr: tail.String()}, nil
		}
	}
	if err := st.Err(); err != nil {
		return stepResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return stepResult{}, err
	}
	return stepResult{}, io.ErrUnexpectedEOF
}

// tailBuffer keeps the last stderrTail bytes written to it.
type tailBuffer struct{ b []byte }

func (t *tailBuffer) Write(p []byte) {
	t.b = append(t.b, p...)
	if len(t.b) > 2*stderrTail {
		t.b = append(t.b[:0], t.b[len(t.b)-stderrTail:]...)
	}
}

func (t *tailBuffer) String() string {
	b := t.b
	if len(b) > stderrTail {
		b = b[len(b)-stderrTail:]
	}
	// Do not start inside a multi-byte character.
	for len(b) > 0 && !utf8.RuneStart(b[0]) {
		b = b[1:]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

func firstLine(s string, n int) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " …"
	}
	if len(s) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
