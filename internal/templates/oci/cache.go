package oci

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/wrenn-dev/wrenn/internal/template"
)

// CachePrefix starts the name of every cached image in a template store.
const CachePrefix = "img-"

// CacheName is the template name image id (its config digest) is cached
// under.
func CacheName(id v1.Hash) string { return CachePrefix + id.Hex[:48] }

// IsCacheName reports whether a host template name is a cached image
// (not a team's template).
func IsCacheName(name string) bool {
	return len(name) == len(CachePrefix)+48 && name[:len(CachePrefix)] == CachePrefix
}

// Cache unpacks images into a template store once per image id.
type Cache struct {
	Store template.Store

	mu       sync.Mutex
	inflight map[string]*flight
}

type flight struct {
	done chan struct{}
	t    template.Template
	err  error
}

// Result is a cached image.
type Result struct {
	Template template.Template
	Config   Config
	// ID is the image's config digest ("sha256:…").
	ID string
	// Unpacked: this call pulled and unpacked the layers (false: the
	// cache already had them, or a concurrent call unpacked them).
	Unpacked bool
}

// Ensure returns img's root filesystem from the cache, unpacking it first
// if needed. Concurrent calls for one image unpack it once; the others
// wait for that result (a failure is not cached).
func (c *Cache) Ensure(ctx context.Context, img v1.Image) (Result, error) {
	id, err := img.ConfigName()
	if err != nil {
		return Result{}, fmt.Errorf("image id: %w", err)
	}
	cfg, err := ConfigOf(img)
	if err != nil {
		return Result{}, err
	}
	res := Result{Config: cfg, ID: id.String()}
	name := CacheName(id)
	if t, err := c.Store.Get(name); err == nil {
		res.Template = t
		return res, nil
	}
	c.mu.Lock()
	if c.inflight == nil {
		c.inflight = map[string]*flight{}
	}
	if f, ok := c.inflight[name]; ok {
		c.mu.Unlock()
		select {
		case <-f.done:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
		if f.err != nil {
			return Result{}, f.err
		}
		res.Template = f.t
		return res, nil
	}
	f := &flight{done: make(chan struct{})}
	c.inflight[name] = f
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.inflight, name)
		c.mu.Unlock()
		close(f.done)
	}()
	// Re-check under the flight: another call may have finished between
	// the first look and taking the flight.
	if t, err := c.Store.Get(name); err == nil {
		f.t, res.Template = t, t
		return res, nil
	}
	f.t, f.err = c.Store.Build(name, id.String(), func(root string) error {
		_, err := Unpack(ctx, img, root)
		return err
	})
	if f.err != nil {
		return Result{}, f.err
	}
	res.Template, res.Unpacked = f.t, true
	return res, nil
}

// Clone publishes a copy of a cached template under name, sharing file
// data by hard links (templates are never modified, so sharing is safe).
func (c *Cache) Clone(ctx context.Context, cached template.Template, name string) (template.Template, error) {
	if _, err := os.Stat(cached.Rootfs); err != nil {
		return template.Template{}, errors.New("cached image is gone")
	}
	return c.Store.Build(name, cached.Recipe, func(root string) error {
		return cloneTree(ctx, cached.Rootfs, root)
	})
}

// cloneTree hard-links src's tree into dst (cp -al keeps owners, modes,
// times and xattrs: the data is shared).
func cloneTree(ctx context.Context, src, dst string) error {
	out, err := exec.CommandContext(ctx, "cp", "-al", "--", src+"/.", dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("clone template: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}
