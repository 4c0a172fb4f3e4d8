package hostagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// phase is the agent's view of a capsule's life cycle.
type phase string

const (
	// phaseStarting: the agent is creating it (in memory only; no state
	// file is written before the capsule runs). A file in this phase is
	// treated like a missing one: the capsule is destroyed on restart.
	phaseStarting   phase = "starting"
	phaseRunning    phase = "running"
	phasePaused     phase = "paused"
	phaseHibernated phase = "hibernated"
)

// record is the agent's on-disk state of one capsule,
// <StateDir>/capsules/<id>.json, written atomically.
type record struct {
	ID             string                `json:"id"`
	Template       string                `json:"template"`
	Spec           runtime.Spec          `json:"spec"`
	Phase          phase                 `json:"phase"`
	AccessToken    string                `json:"access_token"`
	TimeoutSec     int                   `json:"timeout_sec"`
	ExpiresAt      time.Time             `json:"expires_at"`
	DefaultUser    string                `json:"default_user,omitempty"`
	DefaultWorkdir string                `json:"default_workdir,omitempty"`
	Snapshot       *runtime.SnapshotInfo `json:"snapshot,omitempty"`
	MemoryKept     bool                  `json:"memory_kept"`
	CreatedAt      time.Time             `json:"created_at"`
	// PausingToDisk is set while a pause to disk runs: an agent restarted
	// after a crash mid-pause keeps the capsule (recover): running again
	// if the pause had not committed, hibernated if it had.
	PausingToDisk bool `json:"pausing_to_disk,omitempty"`
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func validID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("capsule id %q: want 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit", id)
	}
	return nil
}

type stateDir struct{ dir string }

func (s stateDir) path(id string) string { return filepath.Join(s.dir, id+".json") }

func (s stateDir) save(r *record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, ".tmp-"+r.ID+"-*")
	if err != nil {
		return fmt.Errorf("save state of %s: %w", r.ID, err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("save state of %s: %w", r.ID, err)
	}
	// Rename makes the write atomic against an agent crash (kill -9). Only
	// a hibernated capsule outlives a host crash, so only its record (the
	// snapshot it resumes from) is also made durable with fsync; the others
	// die with the host and Recover cleans up after them either way.
	if r.Phase == phaseHibernated {
		if err := tmp.Sync(); err != nil {
			_ = tmp.Close()
			return fmt.Errorf("save state of %s: %w", r.ID, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save state of %s: %w", r.ID, err)
	}
	if err := os.Rename(tmp.Name(), s.path(r.ID)); err != nil {
		return fmt.Errorf("save state of %s: %w", r.ID, err)
	}
	return nil
}

func (s stateDir) remove(id string) error {
	err := os.Remove(s.path(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// load reads every record; unreadable files are reported and skipped.
func (s stateDir) load() (map[string]*record, []error) {
	out := map[string]*record{}
	var errs []error
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return out, []error{err}
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil {
			errs = append(errs, fmt.Errorf("state file %s is corrupt: %w", name, err))
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		if r.ID+".json" != name {
			errs = append(errs, fmt.Errorf("state file %s names capsule %q", name, r.ID))
			_ = os.Remove(filepath.Join(s.dir, name))
			continue
		}
		out[r.ID] = &r
	}
	return out, errs
}
