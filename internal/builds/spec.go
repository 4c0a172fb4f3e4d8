// Package builds owns template builds: the build spec (its JSON format,
// defaults and validation) and the Runner that executes queued builds on a
// host agent and turns the result into a team template.
//
// A build runs in an agent-only capsule whose ID is the build's ID
// ("bld-…") and whose labels name the build (LabelBuild, LabelTeam); there is
// no capsule row in the store, so users never see it and usage metering
// ignores it. The reconciler leaves such a capsule alone while its build is
// running and destroys it otherwise.
//
// Invariants:
//   - A build is claimed with the store's conditional pending → running
//     update, so two control-plane replicas never run the same build.
//   - Every later transition is conditional on running: a cancel (running →
//     cancelled) or a stale sweep by another replica wins, and the runner
//     that sees its update refused stops and cleans up.
//   - The build capsule is destroyed when the build ends, whatever the
//     outcome, with a context that outlives the caller's.
//   - The build capsule is an internal capsule of the capsule service
//     (internal/capsules): created and destroyed there, never recorded.
//   - Non-public templates are stored on hosts under their template ID
//     (capsules.HostTemplateName), so two teams' templates of the same
//     name never collide in a host's template store.
package builds

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/capsules/limits"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/templates/recipe"
)

// Spec defaults and bounds. The resources default to and are bounded by
// the capsule's (limits.Defaults); a build has its own timeout.
const (
	DefaultFrom       = "base"
	DefaultWorkdir    = "/"
	DefaultTimeoutSec = 1800

	MaxSteps      = 100
	MaxStepBytes  = 16 * 1024
	MaxTimeoutSec = 7200

	maxWorkdir = 4096

	// MaxRecipeBytes bounds a Wrennfile.
	MaxRecipeBytes = recipe.MaxBytes
)

// Resource defaults of a build capsule: the capsule's.
var (
	DefaultVCPUs      = limits.Defaults.VCPUs
	DefaultMemoryMB   = limits.Defaults.MemoryMB
	DefaultDiskSizeMB = limits.Defaults.DiskSizeMB
)

// Spec is what a build does: start a capsule from From, run each shell
// command of Run in order with Env in Workdir, and snapshot the result.
// Pointer fields are optional; Normalize fills the defaults.
type Spec struct {
	// From is the template (name or id, visible to the build's team) the
	// build starts from.
	From string `json:"from,omitempty"`
	// Run holds 1..MaxSteps shell commands, each run as /bin/sh -c.
	Run []string `json:"run"`
	// Env is set for every step.
	Env map[string]string `json:"env,omitempty"`
	// Workdir is the absolute directory the steps run in.
	Workdir       string `json:"workdir,omitempty"`
	VCPUs         *int64 `json:"vcpus,omitempty"`
	MemoryMB      *int64 `json:"memory_mb,omitempty"`
	DiskSizeMB    *int64 `json:"disk_size_mb,omitempty"`
	TimeoutSec    *int64 `json:"timeout_sec,omitempty"`
	AllowInternet *bool  `json:"allow_internet,omitempty"`
	// Recipe is a Wrennfile (internal/templates/recipe); when set, From,
	// Run, Env and Workdir must be empty (the recipe says them).
	Recipe string `json:"recipe,omitempty"`
	// Import: the template is the image (or root filesystem) tarball
	// uploaded with the build, as it is.
	Import bool `json:"import,omitempty"`
	// LocalInputs: the build has inputs only the control plane that
	// accepted it holds (a context, an upload, registry credentials);
	// only that control plane's runner runs it.
	LocalInputs bool `json:"local_inputs,omitempty"`
}

var (
	templateNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	templateIDRE   = regexp.MustCompile(`^` + store.PrefixTemplate + `-[0-9a-z]{1,64}$`)
	envKeyRE       = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
)

// SpecError is a spec that breaks a rule; its message is meant for users.
type SpecError struct{ Msg string }

func (e *SpecError) Error() string { return e.Msg }

func specErr(format string, args ...any) error { return &SpecError{Msg: fmt.Sprintf(format, args...)} }

// ParseSpec decodes a stored spec strictly (unknown fields are errors) and
// normalizes it.
func ParseSpec(raw []byte) (Spec, error) {
	var s Spec
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return Spec{}, specErr("spec: %v", err)
	}
	if dec.More() {
		return Spec{}, specErr("spec must be exactly one JSON object")
	}
	if err := s.Normalize(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// Normalize validates s and fills its defaults. Errors are *SpecError
// (a recipe's parse error names its line and column).
func (s *Spec) Normalize() error {
	if s.Recipe != "" || s.Import {
		if s.From != "" || len(s.Run) > 0 || len(s.Env) > 0 || s.Workdir != "" {
			return specErr("a recipe build takes no from, run, env or workdir: the recipe says them")
		}
		if s.Import && s.Recipe != "" {
			return specErr("an import takes no recipe")
		}
		if s.Recipe != "" {
			if _, err := recipe.Parse(s.Recipe); err != nil {
				return &SpecError{Msg: err.Error()} // "Wrennfile:LINE:COL: …"
			}
		}
		return s.normalizeResources()
	}
	if s.From == "" {
		s.From = DefaultFrom
	}
	if !templateNameRE.MatchString(s.From) && !templateIDRE.MatchString(s.From) {
		return specErr("spec.from must be a template name (lower-case letters, digits, . _ -) or id")
	}
	if len(s.Run) == 0 || len(s.Run) > MaxSteps {
		return specErr("spec.run must hold 1 to %d shell commands", MaxSteps)
	}
	for i, step := range s.Run {
		switch {
		case strings.TrimSpace(step) == "":
			return specErr("spec.run[%d] is empty", i)
		case len(step) > MaxStepBytes:
			return specErr("spec.run[%d] is longer than %d bytes", i, MaxStepBytes)
		case strings.ContainsRune(step, 0):
			return specErr("spec.run[%d] contains a NUL byte", i)
		}
	}
	d := limits.Defaults
	if len(s.Env) > d.MaxEnvVars {
		return specErr("spec.env has more than %d variables", d.MaxEnvVars)
	}
	for k, v := range s.Env {
		if !envKeyRE.MatchString(k) {
			return specErr("spec.env key %q is not a valid variable name", clip(k))
		}
		if len(v) > d.MaxEnvValue || strings.ContainsRune(v, 0) {
			return specErr("spec.env %s: value too long or contains NUL", k)
		}
	}
	if s.Workdir == "" {
		s.Workdir = DefaultWorkdir
	}
	if !path.IsAbs(s.Workdir) || len(s.Workdir) > maxWorkdir || strings.ContainsRune(s.Workdir, 0) {
		return specErr("spec.workdir must be an absolute path of at most %d bytes", maxWorkdir)
	}
	return s.normalizeResources()
}

// normalizeResources checks and defaults the build capsule's resources.
func (s *Spec) normalizeResources() error {
	d := limits.Defaults
	for _, f := range []struct {
		name       string
		p          **int64
		def, lo, h int64
	}{
		{"vcpus", &s.VCPUs, DefaultVCPUs, d.MinVCPUs, d.MaxVCPUs},
		{"memory_mb", &s.MemoryMB, DefaultMemoryMB, d.MinMemoryMB, d.MaxMemoryMB},
		{"disk_size_mb", &s.DiskSizeMB, DefaultDiskSizeMB, d.MinDiskSizeMB, d.MaxDiskSizeMB},
		{"timeout_sec", &s.TimeoutSec, DefaultTimeoutSec, 1, MaxTimeoutSec},
	} {
		if *f.p == nil {
			v := f.def
			*f.p = &v
			continue
		}
		if v := **f.p; v < f.lo || v > f.h {
			return specErr("spec.%s must be between %d and %d", f.name, f.lo, f.h)
		}
	}
	if s.AllowInternet == nil {
		on := limits.Defaults.AllowInternet
		s.AllowInternet = &on
	}
	return nil
}

// ToRecipe returns what the build does as a recipe: the Wrennfile, or the
// admin spec mapped onto one (FROM from, ENV env, WORKDIR workdir, then a
// RUN per step). Call it on a normalized spec.
func (s Spec) ToRecipe() (recipe.Recipe, error) {
	if s.Recipe != "" {
		return recipe.Parse(s.Recipe)
	}
	r := recipe.Recipe{FromKind: recipe.FromTemplate, From: s.From}
	if len(s.Env) > 0 {
		keys := make([]string, 0, len(s.Env))
		for k := range s.Env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		env := make([][2]string, 0, len(keys))
		for _, k := range keys {
			env = append(env, [2]string{k, s.Env[k]})
		}
		r.Steps = append(r.Steps, recipe.Step{Kind: recipe.Env, Text: "ENV (spec.env)", Env: env})
	}
	if s.Workdir != "" && s.Workdir != "/" {
		r.Steps = append(r.Steps, recipe.Step{Kind: recipe.Workdir, Text: "WORKDIR " + s.Workdir, Dir: s.Workdir})
	}
	for _, cmd := range s.Run {
		r.Steps = append(r.Steps, recipe.Step{Kind: recipe.Run, Text: "RUN " + firstLine(cmd, 200), Shell: cmd})
	}
	return r, nil
}

// IsTemplateID reports whether ref names a template by id rather than name.
func IsTemplateID(ref string) bool { return templateIDRE.MatchString(ref) }

// ResolveFrom finds the template a build of team starts from: by id, or by
// name (the team's own preferred over a public one).
func ResolveFrom(ctx context.Context, st store.Store, teamID, ref string) (store.Template, error) {
	var (
		t   store.Template
		err error
	)
	if IsTemplateID(ref) {
		t, err = st.GetTemplate(ctx, teamID, ref)
	} else {
		t, err = st.GetTemplateByName(ctx, teamID, ref)
	}
	if err != nil {
		return store.Template{}, fmt.Errorf("template %q: %w", ref, err)
	}
	return t, nil
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

var errInterrupted = errors.New("interrupted: the control plane stopped during the build")
