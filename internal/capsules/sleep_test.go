package capsules_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/audit"
	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

func ptr[T any](v T) *T { return &v }

// TestLifecyclePrecedence: on_timeout and auto_resume come from the
// capsule, else the template, else the team, else kill/false; a capsule
// that pauses at its timeout gets no TTL on its host; bad input creates
// nothing.
func TestLifecyclePrecedence(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	tmpl := "minimal"
	out, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil || out.Capsule.OnTimeout != store.OnTimeoutKill || out.Capsule.AutoResume || out.MemoryKept != nil {
		t.Fatalf("defaults: %+v %v", out, err)
	}
	if got := f.ag.created[0].GetTimeoutSec(); got != 300 {
		t.Fatalf("agent TTL of a kill capsule = %d, want 300", got)
	}
	if err := f.st.SetTeamLifecycle(ctx, f.scope.TeamID, store.LifecycleDefaults{OnTimeout: ptr(store.OnTimeoutPause), AutoResume: ptr(false)}); err != nil {
		t.Fatal(err)
	}
	out, err = f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil || out.Capsule.OnTimeout != store.OnTimeoutPause || out.Capsule.AutoResume || out.MemoryKept == nil || !*out.MemoryKept {
		t.Fatalf("team default: %+v %v", out, err)
	}
	if got := f.ag.created[1].GetTimeoutSec(); got != -1 {
		t.Fatalf("agent TTL of a pause capsule = %d, want -1 (the service pauses it)", got)
	}
	// A team template's default beats the team's; the capsule's beats both.
	tp, err := f.st.CreateTemplate(ctx, store.Template{TeamID: f.scope.TeamID, Name: "lc"})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.st.SetTemplateLifecycle(ctx, f.scope.TeamID, tp.ID, store.LifecycleDefaults{AutoResume: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	out, err = f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tp.ID})
	if err != nil || out.Capsule.OnTimeout != store.OnTimeoutPause || !out.Capsule.AutoResume {
		t.Fatalf("template default: %+v %v", out.Capsule, err)
	}
	out, err = f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tp.ID, OnTimeout: ptr(store.OnTimeoutKill), AutoResume: ptr(false)})
	if err != nil || out.Capsule.OnTimeout != store.OnTimeoutKill || out.Capsule.AutoResume {
		t.Fatalf("capsule override: %+v %v", out.Capsule, err)
	}
	n := len(f.ag.created)
	if _, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl, OnTimeout: ptr("sleep")}); kindOf(err) != capsules.KindInvalid {
		t.Fatalf("on_timeout sleep: %v", err)
	}
	if len(f.ag.created) != n {
		t.Fatal("a refused create reached the agent")
	}
}

// createSleeper creates a capsule with on_timeout pause and auto_resume.
func createSleeper(t *testing.T, f fixture) store.Capsule {
	t.Helper()
	tmpl := "minimal"
	out, err := f.svc.Create(testutil.Context(t, testutil.Short), f.scope, capsules.CreateRequest{
		Template: &tmpl, OnTimeout: ptr(store.OnTimeoutPause), AutoResume: ptr(true),
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Capsule
}

// TestTimeoutSweepPausesToDisk: past its expiry a pause capsule is paused
// to disk (hibernated, reason timeout, audited); a kill capsule and one
// whose timeout was extended are left alone.
func TestTimeoutSweepPausesToDisk(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	c := createSleeper(t, f)
	extended := createSleeper(t, f)
	tmpl := "minimal"
	kill, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	past, future := time.Now().Add(-time.Second), time.Now().Add(time.Hour)
	for id, exp := range map[string]*time.Time{c.ID: &past, extended.ID: &future, kill.Capsule.ID: &past} {
		if err := f.st.SetCapsuleTimeout(ctx, f.scope.TeamID, id, 300, exp); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := f.svc.Get(ctx, f.scope, c.ID)
	if got.Status != store.CapsuleHibernated || got.PauseReason != store.PauseReasonTimeout {
		t.Fatalf("after its timeout: %s %q, want hibernated timeout", got.Status, got.PauseReason)
	}
	if len(f.ag.pauses) != 1 || !f.ag.pauses[0].GetToDisk() || f.ag.pauses[0].GetCapsuleId() != c.ID {
		t.Fatalf("agent pauses = %v, want one to disk of %s", f.ag.pauses, c.ID)
	}
	for _, id := range []string{extended.ID, kill.Capsule.ID} {
		if g, _ := f.svc.Get(ctx, f.scope, id); g.Status != store.CapsuleRunning {
			t.Fatalf("%s: %s, want running", id, g.Status)
		}
	}
	logs, _, err := f.st.ListAuditLogs(ctx, store.AuditFilter{TeamID: f.scope.TeamID, Action: "timeout_pause"})
	if err != nil || len(logs) != 1 {
		t.Fatalf("timeout_pause audit entries: %d %v", len(logs), err)
	}
}

// TestAutoResumeOneResume: 20 concurrent uses of a paused capsule with
// auto_resume wait on one resume and are all served; a capsule without it
// stays paused (conflict); a failed resume is capsule_resume_failed for
// every waiter, still after one attempt.
func TestAutoResumeOneResume(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	c := createSleeper(t, f)
	if _, err := f.svc.Pause(ctx, f.scope, c.ID, true); err != nil {
		t.Fatal(err)
	}
	f.ag.resumeDelay = 300 * time.Millisecond
	connectAll := func() []error {
		errs := make([]error, 20)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() {
				conn, err := f.svc.Connect(ctx, f.scope, c.ID)
				if err == nil && (conn.Capsule.Status != store.CapsuleRunning || conn.Agent == nil) {
					err = errors.New("not running after connect: " + string(conn.Capsule.Status))
				}
				errs[i] = err
			})
		}
		wg.Wait()
		return errs
	}
	for i, err := range connectAll() {
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if n := len(f.ag.resumes); n != 1 {
		t.Fatalf("20 concurrent requests made %d resumes, want 1", n)
	}
	if g, _ := f.svc.Get(ctx, f.scope, c.ID); g.Status != store.CapsuleRunning || g.PauseReason != "" {
		t.Fatalf("after auto-resume: %s %q", g.Status, g.PauseReason)
	}

	// A failed resume: every waiter gets capsule_resume_failed.
	if _, err := f.svc.Pause(ctx, f.scope, c.ID, true); err != nil {
		t.Fatal(err)
	}
	f.ag.mu.Lock()
	f.ag.resumes, f.ag.resumeErr = nil, connect.NewError(connect.CodeInternal, errString("restore failed"))
	f.ag.mu.Unlock()
	for i, err := range connectAll() {
		if kindOf(err) != capsules.KindResumeFailed {
			t.Fatalf("request %d: %v, want capsule_resume_failed", i, err)
		}
	}
	if n := len(f.ag.resumes); n != 1 {
		t.Fatalf("20 concurrent requests made %d resume attempts, want 1", n)
	}

	// Without auto_resume: a conflict, no resume.
	tmpl := "minimal"
	plain, err := f.svc.Create(ctx, f.scope, capsules.CreateRequest{Template: &tmpl})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Pause(ctx, f.scope, plain.Capsule.ID, false); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Connect(ctx, f.scope, plain.Capsule.ID); kindOf(err) != capsules.KindConflict {
		t.Fatalf("connect to a paused capsule without auto_resume: %v", err)
	}
	if n := len(f.ag.resumes); n != 1 {
		t.Fatalf("resumes = %d, want still 1", n)
	}
}

// TestRetentionSweep: only capsules paused by their timeout, for longer
// than the retention, are deleted (with an audit entry); explicit and
// shutdown pauses are kept.
func TestRetentionSweep(t *testing.T) {
	f := newFixture(t)
	f.cfg.PausedRetention = 50 * time.Millisecond
	svc := capsules.New(f.cfg)
	ctx := testutil.Context(t, testutil.Short)
	timed, explicit, shutdown := createSleeper(t, f), createSleeper(t, f), createSleeper(t, f)
	past := time.Now().Add(-time.Second)
	if err := f.st.SetCapsuleTimeout(ctx, f.scope.TeamID, timed.ID, 300, &past); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Pause(ctx, f.scope, explicit.ID, true); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Pause(ctx, capsules.ShutdownScope(), shutdown.ID, false); err != nil {
		t.Fatal(err)
	}
	if err := svc.Sweep(ctx); err != nil { // pauses timed
		t.Fatal(err)
	}
	if g, _ := svc.Get(ctx, f.scope, timed.ID); g.PauseReason != store.PauseReasonTimeout {
		t.Fatalf("timed: %s %q", g.Status, g.PauseReason)
	}
	if g, _ := svc.Get(ctx, f.scope, shutdown.ID); g.PauseReason != store.PauseReasonShutdown {
		t.Fatalf("shutdown pause reason %q", g.PauseReason)
	}
	// paused_at is kept to the microsecond; the retention must pass.
	time.Sleep(1100 * time.Millisecond)
	if err := svc.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Get(ctx, f.scope, timed.ID); kindOf(err) != capsules.KindNotFound {
		t.Fatalf("timeout-paused capsule after its retention: %v", err)
	}
	for _, id := range []string{explicit.ID, shutdown.ID} {
		if g, err := svc.Get(ctx, f.scope, id); err != nil || !g.Status.IsPaused() {
			t.Fatalf("%s after the retention: %v %v", id, g.Status, err)
		}
	}
	logs, _, err := f.st.ListAuditLogs(ctx, store.AuditFilter{TeamID: f.scope.TeamID, Action: "retention_delete"})
	if err != nil || len(logs) != 1 || logs[0].ResourceID != timed.ID {
		t.Fatalf("retention_delete audit entries: %+v %v", logs, err)
	}
}

// TestFork: refusals change nothing; a fork checkpoints the original with
// memory into one base template and creates count capsules from it with
// the original's settings.
func TestFork(t *testing.T) {
	f := newFixture(t)
	ctx := testutil.Context(t, testutil.Short)
	orig := createSleeper(t, f)
	other, err := f.st.CreateTeam(ctx, store.Team{Name: "other"})
	if err != nil {
		t.Fatal(err)
	}
	otherScope := capsules.TeamScope(other.ID, "", audit.Actor{Type: store.ActorSystem})
	created := len(f.ag.created)
	for _, tc := range []struct {
		name  string
		sc    capsules.Scope
		id    string
		count int
		want  capsules.Kind
	}{
		{"count 0", f.scope, orig.ID, 0, capsules.KindInvalid},
		{"count 21", f.scope, orig.ID, 21, capsules.KindInvalid},
		{"another team's", otherScope, orig.ID, 1, capsules.KindNotFound},
		{"unknown", f.scope, "cl-nosuch", 1, capsules.KindNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := f.svc.Fork(ctx, tc.sc, tc.id, tc.count); kindOf(err) != tc.want {
				t.Fatalf("err = %v, want %s", err, tc.want)
			}
		})
	}
	if len(f.ag.created) != created || len(f.ag.snapshots) != 0 {
		t.Fatal("a refused fork reached the agent")
	}

	res, err := f.svc.Fork(ctx, f.scope, orig.ID, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Copies) != 3 || !res.MemoryKept || res.Base.SourceCapsuleID != orig.ID {
		t.Fatalf("fork = %+v", res)
	}
	if len(f.ag.snapshots) != 1 || !f.ag.snapshots[0].GetMemory() || f.ag.snapshots[0].GetCapsuleId() != orig.ID {
		t.Fatalf("agent snapshots = %v, want one with memory of the original", f.ag.snapshots)
	}
	for i, cp := range res.Copies {
		req := f.ag.created[created+i]
		c := cp.Capsule
		if c.ID == orig.ID || req.GetTemplate() != res.Base.ID || c.OnTimeout != store.OnTimeoutPause || !c.AutoResume ||
			c.MemoryMB != orig.MemoryMB || cp.AccessToken == "" {
			t.Fatalf("copy %d = %+v from %q", i, c, req.GetTemplate())
		}
	}
	if g, _ := f.svc.Get(ctx, f.scope, orig.ID); g.Status != store.CapsuleRunning {
		t.Fatalf("original after the fork: %s", g.Status)
	}
}
