package filesystem

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
)

// MetadataXattrPrefix is the extended-attribute namespace that holds the user
// metadata of a file (E2B-compatible: "user.e2b.<key>").
const MetadataXattrPrefix = "user.e2b."

// nameCache memoises uid/gid → name lookups for one request.
type nameCache struct {
	users  map[uint32]string
	groups map[uint32]string
}

func newNameCache() *nameCache {
	return &nameCache{users: map[uint32]string{}, groups: map[uint32]string{}}
}

func (c *nameCache) user(uid uint32) string {
	if n, ok := c.users[uid]; ok {
		return n
	}
	n := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(n); err == nil {
		n = u.Username
	}
	c.users[uid] = n
	return n
}

func (c *nameCache) group(gid uint32) string {
	if n, ok := c.groups[gid]; ok {
		return n
	}
	n := strconv.FormatUint(uint64(gid), 10)
	if g, err := user.LookupGroupId(n); err == nil {
		n = g.Name
	}
	c.groups[gid] = n
	return n
}

// entryInfo describes path without following a final symlink.
func entryInfo(path string, names *nameCache) (*pb.EntryInfo, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	name := filepath.Base(path)
	e := &pb.EntryInfo{
		Name:         name,
		Path:         path,
		Size:         st.Size,
		Mode:         st.Mode & 0o7777,
		Permissions:  PermString(st.Mode),
		Owner:        names.user(st.Uid),
		Group:        names.group(st.Gid),
		ModifiedTime: timestamppb.New(time.Unix(st.Mtim.Unix())),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = pb.FileType_FILE_TYPE_DIRECTORY
	case unix.S_IFLNK:
		e.Type = pb.FileType_FILE_TYPE_SYMLINK
		if target, err := os.Readlink(path); err == nil {
			e.SymlinkTarget = &target
		}
		return e, nil // user xattrs cannot be set on symlinks
	default:
		e.Type = pb.FileType_FILE_TYPE_FILE
	}
	e.Metadata = ReadMetadata(path)
	return e, nil
}

// ReadMetadata returns the "user.e2b." extended attributes of path (prefix
// stripped), or nil when there are none or the filesystem has no xattrs.
func ReadMetadata(path string) map[string]string {
	size, err := unix.Llistxattr(path, nil)
	if err != nil || size <= 0 {
		return nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(path, buf)
	if err != nil {
		return nil
	}
	var out map[string]string
	for _, raw := range bytes.Split(buf[:size], []byte{0}) {
		name := string(raw)
		key, ok := strings.CutPrefix(name, MetadataXattrPrefix)
		if !ok || key == "" {
			continue
		}
		val, err := getxattr(path, name)
		if err != nil {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[key] = val
	}
	return out
}

func getxattr(path, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			sz, err := unix.Lgetxattr(path, name, nil)
			if err != nil {
				return "", err
			}
			buf = make([]byte, sz)
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// PermString renders a st_mode the way `ls -l` does, e.g. "-rw-r--r--",
// "drwxr-xr-x", "lrwxrwxrwx", including setuid/setgid/sticky letters.
func PermString(mode uint32) string {
	b := []byte("----------")
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		b[0] = 'd'
	case unix.S_IFLNK:
		b[0] = 'l'
	case unix.S_IFCHR:
		b[0] = 'c'
	case unix.S_IFBLK:
		b[0] = 'b'
	case unix.S_IFIFO:
		b[0] = 'p'
	case unix.S_IFSOCK:
		b[0] = 's'
	}
	const rwx = "rwxrwxrwx"
	for i := range 9 {
		if mode&(1<<(8-i)) != 0 {
			b[1+i] = rwx[i]
		}
	}
	special := func(pos int, bit uint32, set, unsetExec byte) {
		if mode&bit == 0 {
			return
		}
		if b[pos] == 'x' {
			b[pos] = set
		} else {
			b[pos] = unsetExec
		}
	}
	special(3, unix.S_ISUID, 's', 'S')
	special(6, unix.S_ISGID, 's', 'S')
	special(9, unix.S_ISVTX, 't', 'T')
	return string(b)
}
