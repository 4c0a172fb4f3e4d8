package builds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/template"
	"github.com/wrenn-dev/wrenn/internal/templates/recipe"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

var errTimedOut = errors.New("build timed out")

// logTail is how much of a failed step's output the build error keeps.
const logTail = 4096

// stderrTail is kept for the tail buffer's bound.
const stderrTail = logTail

// uploadChunk is the size of the data messages of uploads to an agent.
const uploadChunk = 256 << 10

// state is what is in force while the steps run.
type state struct {
	env     map[string]string
	workdir string
	user    string
}

func (st *state) envCopy() map[string]string {
	out := make(map[string]string, len(st.env))
	for k, v := range st.env {
		out[k] = v
	}
	return out
}

// base is where a build starts.
type base struct {
	from  store.Template
	host  *store.Host // set when the base exists on one host only
	image *pb.ImportImageResponse
}

// build does the work; an empty outcome status means the build was
// stopped from outside and nothing is to be recorded.
func (r *Runner) build(parent context.Context, b store.Build, log *slog.Logger) outcome {
	in := r.takeInputs(b.ID)
	defer in.remove()
	blog := newBuildLog(r.cfg.Store, b.ID, log)
	defer blog.Close()
	out := r.buildSteps(parent, b, in, blog, log)
	switch out.status {
	case store.BuildSucceeded:
		blog.Systemf(out.steps, "build succeeded: template %s (%s)", b.TemplateName, out.templateID)
	case store.BuildFailed:
		blog.Systemf(out.failedStep, "build failed: %s", out.msg)
	case "":
		blog.Systemf(out.failedStep, "build stopped (cancelled)")
	}
	return out
}

func (r *Runner) buildSteps(parent context.Context, b store.Build, in Inputs, blog *buildLog, log *slog.Logger) outcome {
	spec, err := ParseSpec(b.Spec)
	if err != nil {
		return failed("invalid spec: %v", err)
	}
	rec, err := spec.ToRecipe()
	if err != nil && !spec.Import {
		return failed("invalid recipe: %v", err)
	}
	if spec.LocalInputs && !in.present {
		return failed("%s", MsgInterrupted)
	}
	timeout := time.Duration(*spec.TimeoutSec) * time.Second
	ctx, cancel := context.WithTimeoutCause(parent, timeout, errTimedOut)
	defer cancel()
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
		return failed("%s: %s", what, agentMsg(err))
	}
	if t, err := r.cfg.Store.GetTemplateByName(ctx, b.TeamID, b.TemplateName); err == nil && t.TeamID == b.TeamID {
		return failed("the team already has a template named %q; delete it first", b.TemplateName)
	}
	// Step 0 is the base; 1..total the instructions and START (the
	// numbering admin specs always had); the snapshot is logged as step
	// total+1.
	total := len(rec.Steps)
	if rec.Start != nil {
		total++
	}

	// Step 0: the base (a template, a pulled image or an upload).
	t0 := time.Now()
	baseText := "FROM " + rec.From
	if spec.Import {
		baseText = "import the uploaded tarball"
	}
	blog.Systemf(0, "step 0/%d: %s", total, baseText)
	if err := r.progress(ctx, b, "step 0: "+baseText); err != nil {
		return stopped("start", err)
	}
	public := b.TeamID == store.PlatformTeamID
	tmpl := store.Template{ID: store.NewID(store.PrefixTemplate), TeamID: b.TeamID, Name: b.TemplateName, Public: public}

	// A pure import, or an image with nothing to do on top: the agent
	// publishes the (cached) image as the template itself.
	bareImage := !spec.Import && len(rec.Steps) == 0 && rec.Start == nil
	if spec.Import || bareImage {
		var ref string
		if !spec.Import {
			if _, ok, out := r.resolveTemplate(ctx, b, rec, stopped); out != nil {
				return *out
			} else if ok {
				return failed("the recipe only names template %q (FROM): add instructions, or use that template", rec.From)
			}
			ref = rec.From
		}
		// The agent publishes it to the shared template store when the
		// host has one (the checksum then unpins it: any host runs it),
		// else it lives on this host only.
		host, res, err := r.importImage(ctx, b, spec, in, ref, &tmpl, blog)
		if err != nil {
			return r.imageFailure(stopped, err)
		}
		blog.Systemf(0, "step 0/%d done in %s", total, time.Since(t0).Round(time.Millisecond))
		hostName := res.GetTemplate()
		tmpl.HostID, tmpl.SizeBytes, tmpl.Checksum = host.ID, res.GetSizeBytes(), res.GetChecksum()
		if capsules.HostTemplateName(tmpl) != hostName {
			// The host's shared store changed between the two calls.
			discard := tmpl
			discard.Public, discard.ID = false, hostName
			if derr := capsules.DeleteTemplateFiles(context.WithoutCancel(ctx), r.cfg.Store, r.cfg.Agents, discard); derr != nil {
				log.Warn("remove the files of an unrecorded build", "host_template", hostName, "err", derr)
			}
			return failed("the host's template store changed during the build; please try again")
		}
		return r.record(ctx, b, tmpl, host, blog, stopped, log, total)
	}

	bs, out := r.resolveBase(ctx, b, spec, rec, in, blog, stopped)
	if out != nil {
		return *out
	}
	st := &state{env: map[string]string{}, workdir: "/"}
	runCfg := template.RunConfig{}
	if img := bs.image; img != nil {
		for _, kv := range img.GetEnv() {
			if k, v, ok := strings.Cut(kv, "="); ok {
				st.env[k] = v
			}
		}
		if wd := img.GetWorkingDir(); wd != "" && path.IsAbs(wd) {
			st.workdir = wd
		}
		st.user = template.ProcessUser(img.GetUser())
		if u := img.GetUser(); u != "" && st.user == "" {
			blog.Systemf(0, "image user %q has no name: steps and capsules run as the default user (root)", u)
		}
		// The image's Entrypoint+Cmd is what the template starts, unless
		// the recipe says START.
		runCfg.Start = append(append([]string(nil), img.GetEntrypoint()...), img.GetCmd()...)
	}
	blog.Systemf(0, "step 0/%d done in %s", total, time.Since(t0).Round(time.Millisecond))

	// The build capsule. The agent's own TTL reaps it even if this
	// control plane dies mid-build.
	ttl := *spec.TimeoutSec + int64(r.cfg.StaleAfter/time.Second)
	if err := r.progress(ctx, b, "starting a capsule from "+bs.from.Name); err != nil {
		return stopped("start", err)
	}
	created, err := r.cfg.Capsules.Create(ctx, capsules.SystemScope(), capsules.CreateRequest{
		VCPUs: spec.VCPUs, MemoryMB: spec.MemoryMB, DiskSizeMB: spec.DiskSizeMB, TimeoutSec: &ttl,
		Env: st.envCopy(), AllowInternet: spec.AllowInternet,
		Internal: &capsules.Internal{
			ID: b.ID, TeamID: b.TeamID, From: bs.from, DefaultWorkdir: st.workdir,
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
	log.Info("build started", "from", bs.from.Name, "steps", len(rec.Steps))

	for i, step := range rec.Steps {
		n := i + 1
		text := firstLine(step.Text, 200)
		if err := r.progress(ctx, b, fmt.Sprintf("step %d/%d: %s", n, total, text)); err != nil {
			return stopped(fmt.Sprintf("step %d/%d", n, total), err)
		}
		blog.Systemf(n, "step %d/%d: %s", n, total, text)
		stepStart := time.Now()
		res, err := r.runInstruction(ctx, agent, b, st, step, in, n, blog)
		if err != nil {
			o := stopped(fmt.Sprintf("step %d/%d (%s)", n, total, text), err)
			o.failedStep = n
			return o
		}
		took := time.Since(stepStart).Round(time.Millisecond)
		if res.failed() {
			blog.Systemf(n, "step %d/%d failed after %s: %s", n, total, took, res.how())
			o := failed("step %d/%d failed (%s): %s%s\nlog tail (at most the last %d bytes):\n%s",
				n, total, res.how(), text, lineOf(step.Line), logTail, res.tail)
			o.failedStep = n
			return o
		}
		blog.Systemf(n, "step %d/%d done in %s", n, total, took)
		log.Info("build step ended", "step", n, "of", total, "elapsed", took)
	}
	_, wd, user := rec.Final()
	runCfg.Env = st.envCopy()
	if wd != "" || bs.image != nil {
		runCfg.Workdir = st.workdir
	}
	if user != "" || bs.image != nil {
		runCfg.User = st.user
	}

	if rec.Start != nil {
		n := len(rec.Steps) + 1
		text := "START " + firstLine(rec.Start.String(), 200)
		if err := r.progress(ctx, b, fmt.Sprintf("step %d/%d: %s", n, total, text)); err != nil {
			return stopped(text, err)
		}
		blog.Systemf(n, "step %d/%d: %s", n, total, text)
		stepStart := time.Now()
		argv := rec.Start.Args()
		runCfg.Start = argv
		req := &pb.StartProcessRequest{
			CapsuleId: b.ID, Cmd: argv[0], Args: argv[1:], Env: st.envCopy(), Cwd: st.workdir, User: st.user, Tag: "wrenn-start",
		}
		if rd := rec.Ready; rd != nil {
			runCfg.ReadyPort, runCfg.ReadyTimeoutSec = rd.Port, int(rd.Timeout/time.Second)
			req.ReadyPort, req.ReadyTimeoutSec = int32(rd.Port), int32(rd.Timeout/time.Second) //nolint:gosec // bounded by the parser
			if rd.Port == 0 {
				runCfg.ReadyCmd = rd.Cmd.Args()
				req.ReadyCmd = runCfg.ReadyCmd
			}
			blog.Systemf(n, "waiting for READY (%s, timeout %s)", readyText(rd), rd.Timeout)
		}
		if _, err := agent.StartProcess(ctx, connect.NewRequest(req)); err != nil {
			if connect.CodeOf(err) == connect.CodeDeadlineExceeded && ctx.Err() == nil {
				blog.Systemf(n, "step %d/%d failed: %s", n, total, agentMsg(err))
				o := failed("step %d/%d failed: %s%s: %s", n, total, text, lineOf(rec.Start.Line), agentMsg(err))
				o.failedStep = n
				return o
			}
			o := stopped(fmt.Sprintf("step %d/%d (%s)", n, total, text), err)
			o.failedStep = n
			return o
		}
		blog.Systemf(n, "step %d/%d done in %s (the process keeps running)", n, total, time.Since(stepStart).Round(time.Millisecond))
	}

	// Last: the snapshot. Memory snapshots of a running START are the
	// snapshot store's (item 5 of issue 16); the template records START,
	// so capsules of it start the process at create.
	n := total + 1
	if err := r.progress(ctx, b, "snapshotting the capsule into a template"); err != nil {
		return stopped("snapshot", err)
	}
	blog.Systemf(n, "snapshot into template %s", b.TemplateName)
	t1 := time.Now()
	rcJSON := ""
	if !runCfg.IsZero() {
		raw, _ := json.Marshal(runCfg)
		rcJSON = string(raw)
	}
	// A START process is kept running in the template where the host can
	// keep memory (capsules of it then start with it already running);
	// elsewhere capsules start it at create. capsules.SnapshotToTemplate
	// stores the template in the shared template store when the host has
	// one (any host then runs it), else on this host only; it records the
	// row, or leaves nothing.
	withMemory := len(runCfg.Start) > 0
	recorded, res, err := r.cfg.Capsules.SnapshotToTemplate(ctx, host, b.ID, tmpl, withMemory, rcJSON)
	if err != nil {
		var se *capsules.Error
		if errors.As(err, &se) && se.Kind == capsules.KindConflict && errors.Is(err, store.ErrAlreadyExists) {
			return failed("the team already has a template named %q", b.TemplateName)
		}
		return stopped("snapshot the capsule", err)
	}
	switch {
	case recorded.Memory:
		blog.Systemf(n, "snapshot done in %s (the START process is kept running, with its memory)", time.Since(t1).Round(time.Millisecond))
	case withMemory:
		blog.Systemf(n, "snapshot done in %s (files only: %s; capsules start the START process at create)", time.Since(t1).Round(time.Millisecond), res.MemoryReason)
	default:
		blog.Systemf(n, "snapshot done in %s", time.Since(t1).Round(time.Millisecond))
	}
	if err := r.running(ctx, b); err != nil {
		// Cancelled meanwhile: the template must not outlive the build.
		if derr := r.cfg.Capsules.DeleteTemplate(context.WithoutCancel(ctx), recorded); derr != nil {
			log.Warn("remove the template of a cancelled build", "template_id", recorded.ID, "err", derr)
		}
		return stopped("snapshot", err)
	}
	log.Info("template built", "template_id", recorded.ID, "host_id", host.ID, "host_template", capsules.HostTemplateName(recorded),
		"size_bytes", recorded.SizeBytes, "memory", recorded.Memory, "shared", recorded.Checksum != "")
	return outcome{status: store.BuildSucceeded, templateID: recorded.ID, steps: n}
}

// record stores the template the host now holds; until then it is this
// build's to remove.
func (r *Runner) record(ctx context.Context, b store.Build, tmpl store.Template, host store.Host, _ *buildLog, stopped func(string, error) outcome, log *slog.Logger, total int) outcome {
	discard := func() {
		if err := capsules.DeleteTemplateFiles(context.WithoutCancel(ctx), r.cfg.Store, r.cfg.Agents, tmpl); err != nil {
			log.Warn("remove the files of an unrecorded build", "host_template", capsules.HostTemplateName(tmpl), "err", err)
		}
	}
	if err := r.running(ctx, b); err != nil {
		discard()
		return stopped("snapshot", err)
	}
	recorded, err := r.cfg.Store.CreateTemplate(context.WithoutCancel(ctx), tmpl)
	if err != nil {
		discard()
	}
	if errors.Is(err, store.ErrAlreadyExists) {
		return failed("the team already has a template named %q", b.TemplateName)
	}
	if err != nil {
		return stopped("record the template", err)
	}
	log.Info("template built", "template_id", recorded.ID, "host_id", host.ID, "host_template", capsules.HostTemplateName(recorded), "size_bytes", recorded.SizeBytes, "shared", recorded.Checksum != "")
	return outcome{status: store.BuildSucceeded, templateID: recorded.ID, steps: total}
}

// resolveTemplate looks FROM up as a template (FromTemplate, FromAuto);
// ok=false with no outcome means it is an image.
func (r *Runner) resolveTemplate(ctx context.Context, b store.Build, rec recipe.Recipe, stopped func(string, error) outcome) (store.Template, bool, *outcome) {
	if rec.FromKind == recipe.FromImage {
		return store.Template{}, false, nil
	}
	t, err := ResolveFrom(ctx, r.cfg.Store, b.TeamID, rec.From)
	switch {
	case err == nil:
		return t, true, nil
	case errors.Is(err, store.ErrNotFound) && rec.FromKind == recipe.FromTemplate:
		o := failed("template %q (FROM, line %d) not found", rec.From, rec.FromLine)
		return t, false, &o
	case errors.Is(err, store.ErrNotFound):
		return t, false, nil // name:tag that is no template: an image
	}
	o := stopped("resolve FROM", err)
	return t, false, &o
}

// resolveBase finds the template a build starts from, pulling an image
// onto a host when FROM names one.
func (r *Runner) resolveBase(ctx context.Context, b store.Build, spec Spec, rec recipe.Recipe, in Inputs, blog *buildLog, stopped func(string, error) outcome) (base, *outcome) {
	t, ok, out := r.resolveTemplate(ctx, b, rec, stopped)
	if out != nil {
		return base{}, out
	}
	if ok {
		blog.Systemf(0, "template %s (%s)", t.Name, t.ID)
		return base{from: t}, nil
	}
	host, res, err := r.importImage(ctx, b, spec, in, rec.From, nil, blog)
	if err != nil {
		o := r.imageFailure(stopped, err)
		return base{}, &o
	}
	// A cached image is a host template every team may start from; it
	// exists on that host only.
	from := store.Template{ID: "", TeamID: store.PlatformTeamID, Name: res.GetTemplate(), Public: true, HostID: host.ID}
	return base{from: from, host: &host, image: res}, nil
}

// imageFailure turns an image import error into the build's outcome.
func (r *Runner) imageFailure(stopped func(string, error) outcome, err error) outcome {
	switch connect.CodeOf(err) {
	case connect.CodeNotFound, connect.CodePermissionDenied, connect.CodeInvalidArgument, connect.CodeUnavailable, connect.CodeAlreadyExists:
		if !errors.Is(err, errStopped) {
			return failed("step 0 (FROM) failed: %s", agentMsg(err))
		}
	}
	if errors.Is(err, scheduler.ErrNoHosts) || errors.Is(err, scheduler.ErrNoCapacity) {
		return failed("no host can run the build: %v", err)
	}
	return stopped("step 0 (FROM)", err)
}

// importImage places the build on a host and has its agent pull ref (or
// take the uploaded tarball when ref is empty), publishing it as
// template tmpl when that is set (the agent keeps the image's config as
// the template's run config, and publishes the template to the shared
// template store when the host has one). The name the host gives tmpl is
// the one it has once recorded (capsules.HostTemplateName): its id, or
// the name of a public template that stays on the host.
func (r *Runner) importImage(ctx context.Context, b store.Build, spec Spec, in Inputs, ref string, tmpl *store.Template, blog *buildLog) (store.Host, *pb.ImportImageResponse, error) {
	team, err := r.cfg.Store.GetTeam(ctx, b.TeamID)
	if err != nil {
		return store.Host{}, nil, err
	}
	host, err := r.cfg.Scheduler.Pick(ctx, team, scheduler.Request{CapsuleID: b.ID, VCPUs: *spec.VCPUs, MemoryMB: *spec.MemoryMB, DiskMB: *spec.DiskSizeMB})
	if err != nil {
		return store.Host{}, nil, err
	}
	r.cfg.Scheduler.Release(host.ID, b.ID)
	tmplName := ""
	if tmpl != nil {
		tmplName = tmpl.ID
		if tmpl.Public {
			info, err := r.cfg.Agents.Client(host).GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
			if err != nil {
				return host, nil, err
			}
			if !info.Msg.GetSharedTemplates() {
				tmplName = capsules.HostTemplateName(*tmpl) // no checksum yet
			}
		}
	}
	hdr := &pb.ImportImageHeader{Ref: ref, Template: tmplName}
	if in.Auth != nil {
		hdr.Username, hdr.Password = in.Auth.Username, in.Auth.Password
	}
	if ref != "" {
		blog.Systemf(0, "pulling image %s on host %s", ref, host.ID)
	} else {
		blog.Systemf(0, "uploading the tarball to host %s", host.ID)
	}
	stream := r.cfg.Agents.Client(host).ImportImage(ctx)
	if err := stream.Send(&pb.ImportImageRequest{Msg: &pb.ImportImageRequest_Header{Header: hdr}}); err != nil && !errors.Is(err, io.EOF) {
		return host, nil, err
	}
	if ref == "" {
		if err := sendFile(stream, in.ImagePath); err != nil && !errors.Is(err, io.EOF) {
			_, _ = stream.CloseAndReceive()
			return host, nil, err
		}
	}
	resp, err := stream.CloseAndReceive()
	if err != nil {
		return host, nil, err
	}
	res := resp.Msg
	how := "from the cache (no layer fetched)"
	if res.GetUnpacked() {
		how = "pulled and unpacked"
	}
	if res.GetPlainRootfs() {
		how = "a plain root filesystem"
	}
	if res.GetPlainRootfs() {
		blog.Systemf(0, "imported %s: %s", how, res.GetTemplate())
	} else {
		blog.Systemf(0, "image %s %s: %s", short(res.GetImageId()), how, res.GetTemplate())
	}
	return host, res, nil
}

func sendFile(stream *connect.ClientStreamForClient[pb.ImportImageRequest, pb.ImportImageResponse], file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, uploadChunk)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if serr := stream.Send(&pb.ImportImageRequest{Msg: &pb.ImportImageRequest_Data{Data: append([]byte(nil), buf[:n]...)}}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// stepResult is how a step ended.
type stepResult struct {
	exitCode int32
	exited   bool
	status   string
	tail     string
}

func (s stepResult) failed() bool { return !s.exited || s.exitCode != 0 }

func (s stepResult) how() string {
	if !s.exited {
		return "did not exit normally: " + s.status
	}
	return fmt.Sprintf("exit code %d", s.exitCode)
}

var okResult = stepResult{exited: true}

// runInstruction runs one recipe step in the build capsule.
func (r *Runner) runInstruction(ctx context.Context, agent hostagentv1connect.HostAgentServiceClient, b store.Build, st *state, step recipe.Step, in Inputs, n int, blog *buildLog) (stepResult, error) {
	switch step.Kind {
	case recipe.Env:
		for _, kv := range step.Env {
			st.env[kv[0]] = kv[1]
		}
		return okResult, nil
	case recipe.User:
		st.user = template.ProcessUser(step.User)
		if st.user == "" {
			return stepResult{exited: true, exitCode: 1, tail: fmt.Sprintf("USER %s: give a user name from the image's /etc/passwd (processes run as a named user)", step.User)}, nil
		}
		return okResult, nil
	case recipe.Workdir:
		st.workdir = step.Dir
		_, err := agent.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{CapsuleId: b.ID, Path: step.Dir, User: "root"}))
		if err != nil {
			return stepResult{}, err
		}
		return okResult, nil
	case recipe.Copy:
		return r.copyStep(ctx, agent, b, st, step, in, n, blog)
	case recipe.Run:
		argv := step.Argv
		if argv == nil {
			argv = []string{"/bin/sh", "-c", step.Shell}
		}
		return r.runStep(ctx, agent, b, &pb.ExecRequest{
			CapsuleId: b.ID, Cmd: argv[0], Args: argv[1:], Env: st.envCopy(), Cwd: st.workdir, User: st.user,
		}, n, blog)
	}
	return stepResult{}, fmt.Errorf("unknown step %s", step.Kind)
}

// runStep runs one process through the agent's exec stream, streaming
// its output to the build log and re-reading the build every
// PollInterval; a cancel ends the stream, which kills the process.
func (r *Runner) runStep(ctx context.Context, agent hostagentv1connect.HostAgentServiceClient, b store.Build, req *pb.ExecRequest, n int, blog *buildLog) (stepResult, error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	type done struct {
		res stepResult
		err error
	}
	ch := make(chan done, 1)
	go func() {
		res, err := execStream(sctx, agent, req, n, blog)
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

func execStream(ctx context.Context, agent hostagentv1connect.HostAgentServiceClient, req *pb.ExecRequest, n int, blog *buildLog) (stepResult, error) {
	st, err := agent.ExecStream(ctx, connect.NewRequest(req))
	if err != nil {
		return stepResult{}, err
	}
	defer func() { _ = st.Close() }()
	var tail tailBuffer
	for st.Receive() {
		m := st.Msg()
		if o := m.GetStdout(); len(o) > 0 {
			blog.Output(n, StreamStdout, o)
			tail.Write(o)
		}
		if e := m.GetStderr(); len(e) > 0 {
			blog.Output(n, StreamStderr, e)
			tail.Write(e)
		}
		if end := m.GetEnd(); end != nil {
			return stepResult{exitCode: end.GetExitCode(), exited: end.GetExited(), status: end.GetStatus() + end.GetError(), tail: tail.String()}, nil
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

// agentMsg is an agent error's message without the Connect code prefix.
func agentMsg(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

func lineOf(line int) string {
	if line <= 0 {
		return ""
	}
	return fmt.Sprintf(" (line %d)", line)
}

func readyText(rd *recipe.ReadyCheck) string {
	if rd.Port > 0 {
		return fmt.Sprintf("port %d", rd.Port)
	}
	return rd.Cmd.String()
}

func short(id string) string {
	if i := strings.IndexByte(id, ':'); i >= 0 && len(id) > i+13 {
		return id[:i+13]
	}
	return id
}
