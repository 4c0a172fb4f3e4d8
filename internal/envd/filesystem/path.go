package filesystem

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// MaxPathLen bounds a path taken from a request, before and after resolution
// (Linux's PATH_MAX).
const MaxPathLen = 4096

// ErrInvalidPath marks a path that was rejected before touching the
// filesystem: empty, too long, containing NUL or invalid UTF-8, or using an
// unsupported `~user` form. Callers map it to InvalidArgument / HTTP 400.
var ErrInvalidPath = errors.New("invalid path")

// ResolvePath turns a client-supplied path into the absolute, lexically clean
// path envd operates on.
//
//   - "" is rejected (callers that allow an absent path check before calling).
//   - Paths longer than MaxPathLen bytes, containing a NUL byte or invalid UTF-8
//     are rejected (the kernel would truncate at NUL; protobuf strings must be
//     UTF-8, so such a path could not be reported back).
//   - "~" is home, "~/x" is home/x; "~name" is rejected rather than guessed.
//   - A relative path is joined to home (the acting user's home directory).
//   - The result is filepath.Clean-ed: "." and ".." are applied lexically, so
//     "../x" from /home/user is /x. This is intended: the acting user may
//     address the whole filesystem, and every later step (permission check,
//     open, rename) sees exactly the returned string, never a re-parsed form.
//
// The path is decoded exactly once by the transport (protobuf string or URL
// query); ResolvePath never decodes percent-escapes again, so "%2F" that
// survives one decoding is a literal filename character, not a separator.
func ResolvePath(p, home string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: path is empty", ErrInvalidPath)
	}
	if len(p) > MaxPathLen {
		return "", fmt.Errorf("%w: path is longer than %d bytes", ErrInvalidPath, MaxPathLen)
	}
	if strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("%w: path contains a NUL byte", ErrInvalidPath)
	}
	if !utf8.ValidString(p) {
		return "", fmt.Errorf("%w: path is not valid UTF-8", ErrInvalidPath)
	}
	if !filepath.IsAbs(home) || strings.IndexByte(home, 0) >= 0 || !utf8.ValidString(home) {
		home = "/" // a broken passwd entry must not poison the result
	}
	switch {
	case p == "~":
		p = home
	case strings.HasPrefix(p, "~/"):
		p = filepath.Join(home, p[2:])
	case strings.HasPrefix(p, "~"):
		return "", fmt.Errorf("%w: %q: only \"~\" and \"~/\" are expanded", ErrInvalidPath, p)
	case !filepath.IsAbs(p):
		p = filepath.Join(home, p)
	}
	p = filepath.Clean(p)
	if len(p) > MaxPathLen {
		return "", fmt.Errorf("%w: resolved path is longer than %d bytes", ErrInvalidPath, MaxPathLen)
	}
	return p, nil
}
