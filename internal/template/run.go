package template

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// RunConfig is what capsules of a template start with, kept beside the
// template's rootfs in run.json: defaults from the recipe or image that
// built it (ENV, WORKDIR, USER; an image's Env/WorkingDir/User) and the
// START process with its READY check. Requests override the defaults.
type RunConfig struct {
	Env     map[string]string `json:"env,omitempty"`
	Workdir string            `json:"workdir,omitempty"`
	User    string            `json:"user,omitempty"`
	// Start is the argv of a process started in every capsule of the
	// template after envd's /init (the recipe's START, or the image's
	// Entrypoint+Cmd).
	Start []string `json:"start,omitempty"`
	// Ready says when Start counts as started: a listening TCP port, or a
	// command that exits 0; ReadyTimeoutSec bounds the wait.
	ReadyPort       int      `json:"ready_port,omitempty"`
	ReadyCmd        []string `json:"ready_cmd,omitempty"`
	ReadyTimeoutSec int      `json:"ready_timeout_sec,omitempty"`
}

// IsZero reports whether rc holds nothing.
func (rc RunConfig) IsZero() bool {
	return len(rc.Env) == 0 && rc.Workdir == "" && rc.User == "" && len(rc.Start) == 0 && rc.ReadyPort == 0 && len(rc.ReadyCmd) == 0
}

// Inherit returns rc on top of base, the run config of the template rc's
// capsule was made from (issue 16: a template built FROM another, or
// snapshotted from a capsule of it, keeps what that one started with):
// base's environment under rc's, base's working directory and user where
// rc sets none, and base's START with its READY unless rc has a START.
func (rc RunConfig) Inherit(base RunConfig) RunConfig {
	out := rc
	if len(base.Env) > 0 {
		out.Env = make(map[string]string, len(base.Env)+len(rc.Env))
		for k, v := range base.Env {
			out.Env[k] = v
		}
		for k, v := range rc.Env {
			out.Env[k] = v
		}
	}
	if out.Workdir == "" {
		out.Workdir = base.Workdir
	}
	if out.User == "" {
		out.User = base.User
	}
	if len(rc.Start) == 0 {
		out.Start, out.ReadyPort, out.ReadyCmd, out.ReadyTimeoutSec = base.Start, base.ReadyPort, base.ReadyCmd, base.ReadyTimeoutSec
	}
	return out
}

const runFile = "run.json"

// SetRunConfig records rc for template name (replacing an earlier one).
func (s Store) SetRunConfig(name string, rc RunConfig) error {
	if _, err := s.Get(name); err != nil {
		return err
	}
	b, err := json.MarshalIndent(rc, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Join(s.Dir, name)
	tmp, err := os.CreateTemp(dir, ".run-*.json")
	if err != nil {
		return fmt.Errorf("template %q: run config: %w", name, err)
	}
	_, err = tmp.Write(b)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, runFile))
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("template %q: run config: %w", name, err)
	}
	return nil
}

// RunConfigOf returns template name's run config (zero when it has none).
func (s Store) RunConfigOf(name string) (RunConfig, error) {
	if !ValidName(name) {
		return RunConfig{}, fmt.Errorf("template %q: %w", name, ErrNotFound)
	}
	b, err := os.ReadFile(filepath.Join(s.Dir, name, runFile))
	if errors.Is(err, os.ErrNotExist) {
		return RunConfig{}, nil
	}
	if err != nil {
		return RunConfig{}, fmt.Errorf("template %q: run config: %w", name, err)
	}
	var rc RunConfig
	if err := json.Unmarshal(b, &rc); err != nil {
		return RunConfig{}, fmt.Errorf("template %q: run config: %w", name, err)
	}
	return rc, nil
}

// Apply returns a create's environment, default user and working
// directory with rc's defaults under the request's (the request wins).
func (rc RunConfig) Apply(env map[string]string, user, workdir string) (map[string]string, string, string) {
	if len(rc.Env) > 0 {
		merged := make(map[string]string, len(rc.Env)+len(env))
		for k, v := range rc.Env {
			merged[k] = v
		}
		for k, v := range env {
			merged[k] = v
		}
		env = merged
	}
	if user == "" {
		user = rc.User
	}
	if workdir == "" {
		workdir = rc.Workdir
	}
	return env, user, workdir
}

// ProcessUser turns an image's or recipe's user ("name", "uid",
// "name:group", "uid:gid") into what envd runs processes as: a user name
// from the capsule's /etc/passwd (the group part of a name is dropped:
// processes get the user's groups), or a numeric "uid" / "uid:gid", which
// envd takes as is, as Docker does (the uid's account when it has one);
// uid 0 alone is root.
func ProcessUser(u string) string {
	name, group, hasGroup := strings.Cut(u, ":")
	if name == "" {
		return ""
	}
	if _, err := strconv.ParseUint(name, 10, 32); err == nil {
		if name == "0" && (!hasGroup || group == "0") {
			return "root"
		}
		if hasGroup {
			if _, err := strconv.ParseUint(group, 10, 32); err != nil {
				return name // a group by name: the uid with its own groups
			}
		}
		return u
	}
	return name
}
