// Package identity resolves the Unix user a request to envd acts as.
//
// E2B-compatible clients name the user in an `Authorization: Basic` header
// whose username part is the Unix user (the password part is ignored), or in a
// `username` query parameter on /files. A request that names no user acts as
// the capsule's default user (set by /init). When envd does not run as root it
// cannot switch users: every request then runs as envd's own user, and naming a
// different existing user is still accepted so host-side tests behave the same.
package identity

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"strings"
)

// User is a resolved Unix account.
type User struct {
	Name   string
	UID    uint32
	GID    uint32
	Groups []uint32
	Home   string
	Shell  string
}

// ErrUnknownUser is returned when the named user does not exist.
var ErrUnknownUser = errors.New("unknown user")

// maxNameLen bounds user names taken from requests.
const maxNameLen = 64

// Lookup resolves a user by name through the capsule's /etc/passwd and
// /etc/group. A numeric "uid" or "uid:gid" (an image's or recipe's USER, as
// Docker takes it) is taken as is when no user has that name: the account
// of that uid when /etc/passwd has one (gid overriding its group), else a
// user without an entry (name the uid, home "/", gid 0 unless given).
func Lookup(name string) (*User, error) {
	return cached(name, func() (*User, error) { return lookup(name) })
}

func lookup(name string) (*User, error) {
	if uid, gid, hasGID, ok := numericUser(name); ok {
		return lookupNumeric(name, uid, gid, hasGID)
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	u, err := user.Lookup(name)
	if err != nil {
		var unk user.UnknownUserError
		if errors.As(err, &unk) {
			return nil, fmt.Errorf("%w %q", ErrUnknownUser, name)
		}
		return nil, fmt.Errorf("look up user %q: %w", name, err)
	}
	return fromOSUser(u)
}

// numericUser parses "uid" or "uid:gid" (decimal, 32 bits).
func numericUser(s string) (uid, gid uint32, hasGID, ok bool) {
	if len(s) == 0 || len(s) > maxNameLen {
		return 0, 0, false, false
	}
	us, gs, hasGID := strings.Cut(s, ":")
	u, err := strconv.ParseUint(us, 10, 32)
	if err != nil {
		return 0, 0, false, false
	}
	var g uint64
	if hasGID {
		if g, err = strconv.ParseUint(gs, 10, 32); err != nil {
			return 0, 0, false, false
		}
	}
	return uint32(u), uint32(g), hasGID, true
}

func lookupNumeric(name string, uid, gid uint32, hasGID bool) (*User, error) {
	if !hasGID {
		// A user may be called "1000": the name wins, as in Docker.
		if u, err := user.Lookup(name); err == nil {
			return fromOSUser(u)
		}
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err == nil {
		out, err := fromOSUser(u)
		if err != nil {
			return nil, err
		}
		if hasGID && gid != out.GID {
			out.GID = gid
			out.Groups = nil
		}
		return out, nil
	}
	return &User{Name: strconv.FormatUint(uint64(uid), 10), UID: uid, GID: gid, Home: "/", Shell: "/bin/sh"}, nil
}

// Current returns the user envd itself runs as.
func Current() (*User, error) {
	// The key cannot be a user name: names are printable and never empty.
	return cached("\x00"+strconv.Itoa(os.Getuid()), current)
}

func current() (*User, error) {
	u, err := user.LookupId(strconv.Itoa(os.Getuid()))
	if err != nil {
		// A capsule without /etc/passwd still has a uid: synthesise the entry.
		return &User{Name: strconv.Itoa(os.Getuid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Home: "/", Shell: "/bin/sh"}, nil //nolint:gosec // uid/gid fit in uint32
	}
	return fromOSUser(u)
}

func fromOSUser(u *user.User) (*User, error) {
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q has a non-numeric uid %q", u.Username, u.Uid)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q has a non-numeric gid %q", u.Username, u.Gid)
	}
	out := &User{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir, Shell: "/bin/sh"}
	if out.Home == "" {
		out.Home = "/"
	}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(g) != out.GID {
				out.Groups = append(out.Groups, uint32(g))
			}
		}
	}
	return out, nil
}

func validName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty user name", ErrUnknownUser)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%w: user name longer than %d bytes", ErrUnknownUser, maxNameLen)
	}
	for _, r := range name {
		if r < 0x21 || r > 0x7e || r == ':' || r == '/' {
			return fmt.Errorf("%w: user name contains %q", ErrUnknownUser, r)
		}
	}
	return nil
}

// UsernameFromRequest returns the user a request names: the `username` query
// parameter when allowQuery is set and present, otherwise the user part of an
// `Authorization: Basic` header. It returns "" when the request names nobody.
func UsernameFromRequest(r *http.Request, allowQuery bool) (string, error) {
	if allowQuery {
		if q := r.URL.Query().Get("username"); q != "" {
			return q, nil
		}
	}
	return UsernameFromHeader(r.Header.Get("Authorization"))
}

// UsernameFromHeader extracts the username from a Basic authorization header
// value. Other schemes are ignored (they belong to other layers).
func UsernameFromHeader(v string) (string, error) {
	scheme, payload, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "basic") {
		return "", nil
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(payload))
	if err != nil {
		return "", errors.New("malformed Basic authorization header")
	}
	name, _, _ := strings.Cut(string(raw), ":")
	return name, nil
}

// CanSwitch reports whether envd may act as other users (it runs as root).
func CanSwitch() bool { return os.Geteuid() == 0 }
