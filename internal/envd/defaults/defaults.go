// Package defaults holds the capsule-wide defaults that /init sets and every
// envd service reads: environment variables, default user and working
// directory. It is safe for concurrent use; readers get copies.
package defaults

import (
	"maps"
	"sync"

	"github.com/wrenn-dev/wrenn/internal/envd/identity"
)

// Defaults is the mutable, shared default state of one envd.
type Defaults struct {
	mu      sync.RWMutex
	envs    map[string]string
	user    string
	workdir string
}

// New returns defaults with the given default user ("" = envd's own user).
func New(defaultUser string) *Defaults {
	return &Defaults{envs: map[string]string{}, user: defaultUser}
}

// Envs returns a copy of the default environment.
func (d *Defaults) Envs() map[string]string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return maps.Clone(d.envs)
}

// MergeEnvs adds or replaces default environment variables.
func (d *Defaults) MergeEnvs(envs map[string]string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	maps.Copy(d.envs, envs)
}

// User returns the default user name ("" = envd's own user).
func (d *Defaults) User() string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.user
}

// SetUser sets the default user name.
func (d *Defaults) SetUser(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.user = name
}

// Workdir returns the default working directory ("" = the user's home).
func (d *Defaults) Workdir() string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.workdir
}

// SetWorkdir sets the default working directory.
func (d *Defaults) SetWorkdir(dir string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.workdir = dir
}

// ResolveUser returns the user a request acts as: the named one, or the
// default user, or envd's own user. When envd cannot switch users (not root)
// the named user must exist but the result keeps envd's own uid/gid so that
// files and processes stay accessible.
func (d *Defaults) ResolveUser(name string) (*identity.User, error) {
	if name == "" {
		name = d.User()
	}
	if name == "" {
		return identity.Current()
	}
	u, err := identity.Lookup(name)
	if err != nil {
		return nil, err
	}
	if !identity.CanSwitch() {
		cur, err := identity.Current()
		if err != nil {
			return nil, err
		}
		u.UID, u.GID, u.Groups = cur.UID, cur.GID, nil
	}
	return u, nil
}

// Cwd returns the working directory for a user: the default workdir when set,
// otherwise the user's home.
func (d *Defaults) Cwd(u *identity.User) string {
	if w := d.Workdir(); w != "" {
		return w
	}
	return u.Home
}
