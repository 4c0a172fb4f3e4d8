package up

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/schollz/progressbar/v3"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/template"
)

// templates builds (or finds) minimal, announces that Wrenn is ready, then
// builds base in the background.
func (a *App) templates(ctx context.Context) {
	defer close(a.baseDone)
	err := a.ensureTemplate(ctx, MinimalTemplate, "busybox", func(ctx context.Context) (template.Template, error) {
		return a.tmpls.BuildBusybox(ctx, MinimalTemplate, a.cfg.Busybox)
	})
	if err != nil {
		if ctx.Err() == nil {
			a.log.Error("minimal template", "err", err)
			a.printf("Could not build the minimal template: %v\n", err)
		}
		return
	}
	for name, n := range a.cfg.WarmPools {
		if name != BaseTemplate {
			a.drv.SetWarmPool(name, n)
		}
	}
	a.banner()
	close(a.ready)
	if !a.cfg.BuildBase {
		if _, err := a.tmpls.Get(BaseTemplate); err == nil && a.cfg.WarmPools[BaseTemplate] != 0 {
			a.drv.SetWarmPool(BaseTemplate, a.cfg.WarmPools[BaseTemplate])
		}
		return
	}
	err = a.ensureTemplate(ctx, BaseTemplate, "Debian bookworm, debootstrap", func(ctx context.Context) (template.Template, error) {
		return a.tmpls.BuildDebian(ctx, BaseTemplate, template.DefaultDebianRecipe(a.cfg.DebianMirror), a.cfg.CacheDir)
	})
	if err == nil {
		if n := a.cfg.WarmPools[BaseTemplate]; n != 0 {
			a.drv.SetWarmPool(BaseTemplate, n)
		}
	}
	if err != nil && ctx.Err() == nil {
		a.log.Error("base template", "err", err)
		a.printf("Could not build the base template: %v\nCapsules can still use --template %s.\n", err, MinimalTemplate)
	}
}

// ensureTemplate builds name with build when the host has no such
// template, and registers it as a public platform template.
func (a *App) ensureTemplate(ctx context.Context, name, what string, build func(context.Context) (template.Template, error)) error {
	t, err := a.tmpls.Get(name)
	if errors.Is(err, template.ErrNotFound) {
		t, err = a.withProgress(ctx, fmt.Sprintf("Building template %s (%s)", name, what), build)
	}
	if err != nil {
		return err
	}
	return RegisterTemplate(ctx, a.store, t)
}

// RegisterTemplate records a host template as a public platform template
// (or refreshes its size).
func RegisterTemplate(ctx context.Context, st store.Store, t template.Template) error {
	got, err := st.GetTemplateByName(ctx, store.PlatformTeamID, t.Name)
	switch {
	case errors.Is(err, store.ErrNotFound):
		_, err = st.CreateTemplate(ctx, store.Template{TeamID: store.PlatformTeamID, Name: t.Name, Public: true, SizeBytes: t.SizeBytes})
	case err == nil && got.SizeBytes != t.SizeBytes:
		err = st.SetTemplateSize(ctx, store.PlatformTeamID, got.ID, t.SizeBytes)
	}
	if err != nil {
		return fmt.Errorf("up: register template %s: %w", t.Name, err)
	}
	return nil
}

// withProgress runs build while showing a spinner with the elapsed time on
// a terminal, or a start and an end line otherwise.
func (a *App) withProgress(ctx context.Context, desc string, build func(context.Context) (template.Template, error)) (template.Template, error) {
	start := time.Now()
	if !a.cfg.Progress {
		a.printf("%s…\n", desc)
		t, err := build(ctx)
		if err == nil {
			a.printf("%s: done in %s\n", desc, time.Since(start).Round(100*time.Millisecond))
		}
		return t, err
	}
	a.outMu.Lock()
	bar := progressbar.NewOptions(-1,
		progressbar.OptionSetWriter(a.cfg.Out),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSpinnerType(14),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
	)
	a.outMu.Unlock()
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				a.outMu.Lock()
				_ = bar.Add(1)
				a.outMu.Unlock()
			}
		}
	}()
	t, err := build(ctx)
	close(done)
	a.outMu.Lock()
	_ = bar.Finish()
	a.outMu.Unlock()
	if err == nil {
		a.printf("%s: done in %s\n", desc, time.Since(start).Round(100*time.Millisecond))
	}
	return t, err
}

// banner tells the user where Wrenn is and how to use it.
func (a *App) banner() {
	keyPath := AdminKeyPath(a.cfg.Home)
	login := fmt.Sprintf("wrenn login --url %s --key-file %s", a.url, keyPath)
	keyLine := fmt.Sprintf("Admin API key: in %s", keyPath)
	if a.firstStart {
		login = fmt.Sprintf("wrenn login --url %s --key %s", a.url, a.adminKey)
		keyLine = fmt.Sprintf("Admin API key: %s\n  (saved in %s, mode 0600; it is shown only this once)", a.adminKey, keyPath)
	}
	a.printf(`
Wrenn is up at %s (ready in %s)
  Dashboard: %s/
  %s
  Capsule ports: %s/proxy/<capsule-id>/<port>/ (the port proxy, its own origin)

Try it:
  %s
  wrenn capsule create --template %s
  wrenn capsule exec <capsule-id> -- echo hello

%s
Stop with Ctrl-C: running capsules are %s (--on-exit).
`, a.url, time.Since(a.started).Round(10*time.Millisecond), a.url, keyLine, a.proxyURL, login, MinimalTemplate, a.isolationLines(),
		map[OnExit]string{OnExitPause: "paused and re-adopted on the next start", OnExitDestroy: "destroyed"}[a.cfg.OnExit])
	if a.cfg.BuildBase {
		a.printf("The default template %q is prepared in the background; until it is ready use --template %s.\n\n", BaseTemplate, MinimalTemplate)
	}
}
