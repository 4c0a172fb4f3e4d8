package builds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/events"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
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
	// Events, when set, records template.build.succeeded|failed.
	Events *events.Recorder
	// PollInterval is how often a running step re-reads its build to
	// notice a cancel (default 1 s).
	PollInterval time.Duration
	// StaleAfter is how long a running build's updated_at may stand still
	// before another runner declares it interrupted (its control plane
	// died) and destroys its capsule (default 1 min). The runner executing
	// a build moves updated_at every StaleAfter/4, so a long step (an
	// apt-get of minutes) is not mistaken for a dead runner, and a
	// replica killed mid-build frees its builds within StaleAfter — not
	// the build's whole timeout.
	StaleAfter time.Duration
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
	// bg is Run's context (Submit runs builds under it); inputs the local
	// inputs of submitted builds.
	bg     context.Context
	inputs map[string]Inputs
}

// New returns a runner.
func New(cfg Config) *Runner {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = DefaultStaleAfter
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
		sem: make(chan struct{}, cfg.MaxConcurrent), mine: map[string]bool{}, inputs: map[string]Inputs{},
	}
}

// Run runs a pass now and then every interval until ctx ends, then waits
// for the builds it started: they are cancelled by ctx, recorded as
// interrupted and their capsules destroyed.
func (r *Runner) Run(ctx context.Context, interval time.Duration) {
	r.mu.Lock()
	r.bg = ctx
	r.mu.Unlock()
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
		if s, err := ParseSpec(b.Spec); err == nil && s.LocalInputs {
			// Only the control plane holding its inputs runs it (Submit);
			// one that never did has stopped.
			if time.Since(b.CreatedAt) > localInputsGrace {
				if _, err := r.cfg.Store.UpdateBuildStatus(ctx, b.TeamID, b.ID, []store.BuildStatus{store.BuildPending}, store.BuildFailed, MsgInterrupted, ""); err != nil {
					errs = append(errs, err)
				}
			}
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

// sweepStale fails a running build nobody has touched for longer than
// StaleAfter (the runner executing it touches it every StaleAfter/4: its
// control plane died) and destroys any capsule left for it.
func (r *Runner) sweepStale(ctx context.Context, b store.Build) error {
	r.mu.Lock()
	mine := r.mine[b.ID]
	r.mu.Unlock()
	if mine {
		return nil
	}
	if time.Since(b.UpdatedAt) < r.cfg.StaleAfter {
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
	r.buildEvent(ctx, b, store.BuildFailed, MsgInterrupted, "")
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
	// steps is the number of steps of a successful build; failedStep the
	// step a failed one stopped in (for the log).
	steps, failedStep int
}

func failed(format string, args ...any) outcome {
	return outcome{status: store.BuildFailed, msg: fmt.Sprintf(format, args...)}
}

// DefaultStaleAfter is Config.StaleAfter's default.
const DefaultStaleAfter = time.Minute

// errStopped: the build left running behind the runner's back (cancelled,
// or failed by a stale sweep); the runner just cleans up.
var errStopped = errors.New("build is no longer running")

// execute runs one claimed build to its end and records the outcome.
func (r *Runner) execute(ctx context.Context, b store.Build) {
	log := r.log.With("build_id", b.ID, "team_id", b.TeamID, "template_name", b.TemplateName)
	start := time.Now()
	alive := make(chan struct{})
	var hb sync.WaitGroup
	hb.Go(func() { r.heartbeat(ctx, b, alive, log) })
	out := r.build(ctx, b, log)
	close(alive)
	hb.Wait()
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
		r.buildEvent(bg, b, out.status, out.msg, out.templateID)
	}
}

// heartbeat moves the build's updated_at every StaleAfter/4 until done
// closes, so other runners know this one is alive (sweepStale).
func (r *Runner) heartbeat(ctx context.Context, b store.Build, done <-chan struct{}, log *slog.Logger) {
	t := time.NewTicker(r.cfg.StaleAfter / 4)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := r.cfg.Store.TouchBuild(context.WithoutCancel(ctx), b.TeamID, b.ID); err != nil {
				log.Warn("build heartbeat", "err", err)
			}
		}
	}
}

// buildEvent records a build's end (internal/events).
func (r *Runner) buildEvent(ctx context.Context, b store.Build, status store.BuildStatus, msg, templateID string) {
	typ := events.TemplateBuildFailed
	data := map[string]any{"template_name": b.TemplateName, "status": string(status)}
	if status == store.BuildSucceeded {
		typ = events.TemplateBuildSucceeded
		data["template_id"] = templateID
	} else if msg != "" {
		data["error"] = msg
	}
	r.cfg.Events.Emit(ctx, b.TeamID, typ, b.ID, data)
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
