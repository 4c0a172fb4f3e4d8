package identity

import (
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
)

// accountFiles are the files a lookup reads. envd is built without cgo, so
// os/user parses exactly these (no NSS modules); a cached answer is reused
// only while neither has changed.
var accountFiles = [...]string{"/etc/passwd", "/etc/group"}

// fileSig identifies one state of a file: a rewrite (useradd renames a new
// file into place, an editor may write in place) changes the inode or the
// size or the modification or change time, which have nanosecond resolution.
type fileSig struct {
	exists       bool
	dev, ino     uint64
	size         int64
	mtime, ctime syscall.Timespec
}

type accountSig [len(accountFiles)]fileSig

func currentSig() accountSig {
	var sig accountSig
	for i, path := range accountFiles {
		var st syscall.Stat_t
		if syscall.Stat(path, &st) != nil {
			continue // missing or unreadable: a state of its own
		}
		sig[i] = fileSig{exists: true, dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim} //nolint:unconvert // field types differ by arch
	}
	return sig
}

// userCache keeps resolved users (every exec and file request resolves
// one; a lookup parses /etc/passwd and /etc/group in full) for as long as
// both files stay the same. Failed lookups are not kept.
var userCache struct {
	mu     sync.Mutex
	sig    accountSig
	users  map[string]*User
	misses atomic.Uint64 // lookups that went to the files (tests)
}

// maxCachedUsers bounds the cache (names come from requests).
const maxCachedUsers = 256

// cached returns a copy of the user stored under key, resolving it with
// resolve when the account files changed since it was stored or it never
// was.
func cached(key string, resolve func() (*User, error)) (*User, error) {
	sig := currentSig()
	userCache.mu.Lock()
	if userCache.sig != sig || userCache.users == nil {
		userCache.sig, userCache.users = sig, map[string]*User{}
	}
	u := userCache.users[key]
	userCache.mu.Unlock()
	if u != nil {
		return u.clone(), nil
	}
	userCache.misses.Add(1)
	u, err := resolve()
	if err != nil {
		return nil, err
	}
	userCache.mu.Lock()
	// Store only what was read from the files as they were before the
	// lookup: a change during it leaves the answer uncached.
	if userCache.sig == sig && len(userCache.users) < maxCachedUsers {
		userCache.users[key] = u.clone()
	}
	userCache.mu.Unlock()
	return u, nil
}

// clone returns a copy callers may change (ResolveUser overrides ids).
func (u *User) clone() *User {
	c := *u
	c.Groups = slices.Clone(u.Groups)
	return &c
}
