// Package template manages capsule templates on a host: read-only root
// filesystems stored under one directory, each at <dir>/<name>/rootfs with a
// meta.json beside it. It imports a rootfs from a directory or a tarball,
// builds the tiny busybox template ("minimal") from Debian's busybox-static,
// and builds the Debian bookworm minbase template ("base") with debootstrap,
// caching the result machine-wide keyed by the recipe's hash.
//
// Invariants: a template appears under its name only when complete (it is
// built in a temporary directory and renamed into place); templates are
// never modified after that, so capsules may use them as overlay lower
// layers.
package template

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// ErrNotFound is returned for a template that does not exist.
var ErrNotFound = errors.New("template not found")

// Template describes one stored template.
type Template struct {
	Name string `json:"name"`
	// Rootfs is the path of the template's root directory.
	Rootfs string `json:"-"`
	// SizeBytes is the apparent size of the rootfs (sum of file sizes).
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
	// Recipe is the hash of the recipe that built it, if any.
	Recipe string `json:"recipe,omitempty"`
}

// SizeMB is SizeBytes rounded up to MiB.
func (t Template) SizeMB() int { return int((t.SizeBytes + (1<<20 - 1)) >> 20) }

// Store is a directory of templates.
type Store struct {
	Dir string
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

// ValidName reports whether name can name a template.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Get returns the named template.
func (s Store) Get(name string) (Template, error) {
	if !ValidName(name) {
		return Template{}, fmt.Errorf("template %q: %w", name, ErrNotFound)
	}
	b, err := os.ReadFile(filepath.Join(s.Dir, name, "meta.json"))
	if errors.Is(err, os.ErrNotExist) {
		return Template{}, fmt.Errorf("template %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Template{}, fmt.Errorf("template %q: %w", name, err)
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return Template{}, fmt.Errorf("template %q: meta: %w", name, err)
	}
	t.Name = name
	t.Rootfs = filepath.Join(s.Dir, name, "rootfs")
	return t, nil
}

// List returns all templates.
func (s Store) List() ([]Template, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Template
	for _, e := range entries {
		if t, err := s.Get(e.Name()); err == nil {
			out = append(out, t)
		}
	}
	return out, nil
}

// Delete removes a template. Capsules using it must be gone.
func (s Store) Delete(name string) error {
	if _, err := s.Get(name); err != nil {
		return err
	}
	return os.RemoveAll(filepath.Join(s.Dir, name))
}

// Build runs fill on a fresh rootfs directory and publishes the result as
// name, replacing an older template of that name (a failed fill leaves
// nothing behind). Template builds (internal/templates/oci) use it.
func (s Store) Build(name, recipe string, fill func(rootfs string) error) (Template, error) {
	return s.build(name, recipe, fill)
}

// build runs fill on a fresh rootfs directory and publishes the result as
// name, replacing an older template of that name.
func (s Store) build(name, recipe string, fill func(rootfs string) error) (Template, error) {
	if !ValidName(name) {
		return Template{}, fmt.Errorf("template: invalid name %q", name)
	}
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return Template{}, err
	}
	tmp, err := os.MkdirTemp(s.Dir, ".build-"+name+"-")
	if err != nil {
		return Template{}, err
	}
	defer os.RemoveAll(tmp)
	root := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return Template{}, err
	}
	if err := fill(root); err != nil {
		return Template{}, err
	}
	size, err := treeSize(root)
	if err != nil {
		return Template{}, err
	}
	t := Template{Name: name, SizeBytes: size, CreatedAt: time.Now().UTC(), Recipe: recipe}
	b, _ := json.MarshalIndent(t, "", "  ")
	if err := os.WriteFile(filepath.Join(tmp, "meta.json"), b, 0o644); err != nil {
		return Template{}, err
	}
	final := filepath.Join(s.Dir, name)
	if err := os.RemoveAll(final); err != nil {
		return Template{}, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return Template{}, fmt.Errorf("template: publish %s: %w", name, err)
	}
	return s.Get(name)
}

func treeSize(root string) (int64, error) {
	var n int64
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}

// ImportDir copies a root filesystem directory (owners, modes, links,
// xattrs kept) into the store as name.
func (s Store) ImportDir(ctx context.Context, name, src string) (Template, error) {
	st, err := os.Stat(src)
	if err != nil {
		return Template{}, fmt.Errorf("template: %w", err)
	}
	if !st.IsDir() {
		return Template{}, fmt.Errorf("template: %s is not a directory", src)
	}
	return s.build(name, "", func(root string) error {
		return run(ctx, "cp", "-a", "--", src+"/.", root)
	})
}

// ImportTarball unpacks a (optionally compressed) tarball of a root
// filesystem into the store as name. GNU tar strips leading "/" and refuses
// members that climb out with "..".
func (s Store) ImportTarball(ctx context.Context, name, tarball string) (Template, error) {
	if _, err := os.Stat(tarball); err != nil {
		return Template{}, fmt.Errorf("template: %w", err)
	}
	return s.build(name, "", func(root string) error {
		return run(ctx, "tar", "-x", "-p", "--numeric-owner", "--xattrs", "-f", tarball, "-C", root)
	})
}

// ExportTarball writes template name's root filesystem to dst as a tar
// archive that ImportTarball accepts (numeric owners, modes, xattrs,
// sparse files kept): how a template made on this host is published to the
// shared template store.
func (s Store) ExportTarball(ctx context.Context, name, dst string) error {
	t, err := s.Get(name)
	if err != nil {
		return err
	}
	return run(ctx, "tar", "--numeric-owner", "--xattrs", "--sparse", "-C", t.Rootfs, "-cf", dst, ".")
}

// BusyboxPath is where Debian's busybox-static puts its binary.
const BusyboxPath = "/bin/busybox"

// BuildBusybox builds the "minimal" template from a statically linked
// busybox binary (Debian package busybox-static): the binary, one symlink
// per applet, and the few files a shell needs.
func (s Store) BuildBusybox(ctx context.Context, name, busybox string) (Template, error) {
	if busybox == "" {
		busybox = BusyboxPath
	}
	out, err := exec.CommandContext(ctx, "file", "-L", busybox).Output()
	if err == nil && !strings.Contains(string(out), "statically linked") {
		return Template{}, fmt.Errorf("template: %s is not statically linked (install busybox-static)", busybox)
	}
	list, err := exec.CommandContext(ctx, busybox, "--list-full").Output()
	if err != nil {
		return Template{}, fmt.Errorf("template: %s --list-full: %w", busybox, err)
	}
	return s.build(name, "busybox", func(root string) error {
		for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var/tmp", "home"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				return err
			}
		}
		for _, d := range []string{"tmp", "var/tmp"} {
			if err := os.Chmod(filepath.Join(root, d), 0o1777); err != nil {
				return err
			}
		}
		if err := run(ctx, "cp", busybox, filepath.Join(root, "bin/busybox")); err != nil {
			return err
		}
		for _, applet := range strings.Fields(string(list)) {
			applet = strings.TrimPrefix(applet, "/")
			if applet == "bin/busybox" || strings.Contains(applet, "..") {
				continue
			}
			dst := filepath.Join(root, applet)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return err
			}
			if err := os.Symlink("/bin/busybox", dst); err != nil && !errors.Is(err, os.ErrExist) {
				return err
			}
		}
		files := map[string]string{
			"etc/passwd":      "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
			"etc/group":       "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n",
			"etc/hosts":       "127.0.0.1 localhost\n",
			"etc/resolv.conf": "nameserver 1.1.1.1\n",
		}
		for f, content := range files {
			if err := os.WriteFile(filepath.Join(root, f), []byte(content), 0o644); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(filepath.Join(root, "home/user"), 0o755); err != nil {
			return err
		}
		return os.Chown(filepath.Join(root, "home/user"), 1000, 1000)
	})
}

// DebianRecipe is the recipe of the "base" template.
type DebianRecipe struct {
	Suite    string   // e.g. "bookworm"
	Mirror   string   // e.g. "http://deb.debian.org/debian"
	Packages []string // added to the minbase variant
}

// DefaultDebianRecipe is the recipe of the shipped "base" template.
func DefaultDebianRecipe(mirror string) DebianRecipe {
	return DebianRecipe{
		Suite:  "bookworm",
		Mirror: mirror,
		Packages: []string{
			"bash", "coreutils", "ca-certificates", "curl", "git", "python3",
			"procps", "iproute2", "netcat-openbsd",
		},
	}
}

// Hash identifies the recipe's output for caching.
func (r DebianRecipe) Hash() string {
	h := sha256.Sum256([]byte(r.Suite + "\n" + r.Mirror + "\n" + strings.Join(r.Packages, ",")))
	return hex.EncodeToString(h[:8])
}

// BuildDebian builds name from the recipe with debootstrap (--variant=minbase).
// cacheDir (e.g. /var/cache/wrenn) holds finished rootfs trees keyed by the
// recipe hash, so another store on the machine reuses them.
func (s Store) BuildDebian(ctx context.Context, name string, r DebianRecipe, cacheDir string) (Template, error) {
	if _, err := exec.LookPath("debootstrap"); err != nil {
		return Template{}, errors.New("template: debootstrap not installed (apt-get install debootstrap)")
	}
	cached := filepath.Join(cacheDir, "debian-"+r.Hash(), "rootfs")
	if _, err := os.Stat(filepath.Join(cached, "etc/debian_version")); err != nil {
		if err := os.MkdirAll(cacheDir, 0o755); err != nil {
			return Template{}, err
		}
		tmp, err := os.MkdirTemp(cacheDir, ".debootstrap-")
		if err != nil {
			return Template{}, err
		}
		defer os.RemoveAll(tmp)
		args := []string{"--variant=minbase"}
		if len(r.Packages) > 0 {
			args = append(args, "--include="+strings.Join(r.Packages, ","))
		}
		args = append(args, r.Suite, filepath.Join(tmp, "rootfs"), r.Mirror)
		if err := run(ctx, "debootstrap", args...); err != nil {
			return Template{}, err
		}
		_ = os.RemoveAll(filepath.Join(tmp, "rootfs/var/cache/apt/archives"))
		if err := os.RemoveAll(filepath.Dir(cached)); err != nil {
			return Template{}, err
		}
		if err := os.Rename(tmp, filepath.Dir(cached)); err != nil {
			return Template{}, err
		}
	}
	return s.build(name, r.Hash(), func(root string) error {
		return run(ctx, "cp", "-a", "--reflink=auto", "--", cached+"/.", root)
	})
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("template: %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
