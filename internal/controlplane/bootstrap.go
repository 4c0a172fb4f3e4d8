package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/auth"
	"github.com/wrenn-dev/wrenn/internal/store"
)

// AdminEmail is the e-mail address of the admin user BootstrapAdmin
// creates (`wrenn up`, `wrenn server --admin-key-file`).
const AdminEmail = "admin@localhost"

// BootstrapAdmin makes sure a platform admin exists with a working API key
// in keyPath: the key already there (checked against the store), or a new
// admin user and key written to keyPath (0600). created reports the
// latter. A key the store does not know is an error, never replaced.
func BootstrapAdmin(ctx context.Context, st store.Store, keyPath string) (key string, created bool, err error) {
	b, err := os.ReadFile(keyPath)
	switch {
	case err == nil:
		key := strings.TrimSpace(string(b))
		if _, err := st.LookupAPIKey(ctx, auth.HashToken(key)); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return "", false, fmt.Errorf("%s holds a key this database does not know; move it away to create a new admin key", keyPath)
			}
			return "", false, fmt.Errorf("check admin key: %w", err)
		}
		return key, false, nil
	case !errors.Is(err, fs.ErrNotExist):
		return "", false, fmt.Errorf("read admin key: %w", err)
	}
	team, err := st.GetPlatformTeam(ctx)
	if err != nil {
		return "", false, fmt.Errorf("platform team: %w", err)
	}
	u, err := st.GetUserByEmail(ctx, AdminEmail)
	if errors.Is(err, store.ErrNotFound) {
		u, err = st.CreateUser(ctx, store.User{Email: AdminEmail, Name: "admin", EmailVerified: true, IsAdmin: true})
	}
	if err != nil {
		return "", false, fmt.Errorf("admin user: %w", err)
	}
	if _, err := st.GetTeamMember(ctx, team.ID, u.ID); errors.Is(err, store.ErrNotFound) {
		if _, err := st.AddTeamMember(ctx, team.ID, u.ID, store.RoleOwner); err != nil {
			return "", false, fmt.Errorf("admin membership: %w", err)
		}
	} else if err != nil {
		return "", false, fmt.Errorf("admin membership: %w", err)
	}
	nk := auth.GenerateAPIKey()
	if _, err := st.CreateAPIKey(ctx, store.APIKey{TeamID: team.ID, Name: "bootstrap admin", Prefix: nk.Prefix, Hash: nk.Hash, CreatedBy: u.ID}); err != nil {
		return "", false, fmt.Errorf("admin key: %w", err)
	}
	if err := WriteFileAtomic(keyPath, []byte(nk.Plain+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("write admin key: %w", err)
	}
	return nk.Plain, true, nil
}

// WriteFileAtomic writes b to path through a synced temporary file and a
// rename, so a crash leaves the old file or the new one, never a part.
func WriteFileAtomic(path string, b []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
