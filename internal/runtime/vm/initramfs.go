package vm

import (
	"bufio"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

//go:embed guest/init
var guestInit []byte

// cpioWriter writes a "newc" cpio archive, the initramfs format the
// kernel unpacks.
type cpioWriter struct {
	w   *bufio.Writer
	ino uint32
	n   int64
}

func (c *cpioWriter) header(name string, mode uint32, size int64) error {
	c.ino++
	namesize := len(name) + 1
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, namesize, 0)
	if _, err := c.w.WriteString(h + name + "\x00"); err != nil {
		return err
	}
	c.n += int64(110 + namesize)
	return c.pad()
}

func (c *cpioWriter) pad() error {
	for c.n%4 != 0 {
		if err := c.w.WriteByte(0); err != nil {
			return err
		}
		c.n++
	}
	return nil
}

func (c *cpioWriter) dir(name string) error { return c.header(name, 0o040755, 0) }

func (c *cpioWriter) file(name string, mode uint32, r io.Reader, size int64) error {
	if err := c.header(name, 0o100000|mode, size); err != nil {
		return err
	}
	n, err := io.Copy(c.w, r)
	if err != nil {
		return err
	}
	if n != size {
		return fmt.Errorf("initramfs: %s: size changed while copying", name)
	}
	c.n += n
	return c.pad()
}

func (c *cpioWriter) bytes(name string, mode uint32, b []byte) error {
	return c.file(name, mode, strings.NewReader(string(b)), int64(len(b)))
}

func (c *cpioWriter) hostFile(name string, mode uint32, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return c.file(name, mode, f, st.Size())
}

func (c *cpioWriter) close() error {
	if err := c.header("TRAILER!!!", 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

// buildInitramfs writes the guest's initramfs to dst: busybox, the
// modules of the kernel directory (scripts/guest-kernel.sh) in their load
// order, envd and init (init may be nil: the guest init of this package).
func buildInitramfs(dst, kernelDir, busybox, envd string, init []byte) error {
	if init == nil {
		init = guestInit
	}
	order, err := os.ReadFile(filepath.Join(kernelDir, "modules", "order"))
	if err != nil {
		return fmt.Errorf("vm: guest kernel modules: %w (run scripts/guest-kernel.sh)", err)
	}
	tmp := dst + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	c := &cpioWriter{w: bufio.NewWriterSize(f, 1<<20)}
	werr := func() error {
		for _, d := range []string{"bin", "dev", "proc", "sys", "lib", "lib/modules"} {
			if err := c.dir(d); err != nil {
				return err
			}
		}
		if err := c.hostFile("bin/busybox", 0o755, busybox); err != nil {
			return fmt.Errorf("busybox: %w", err)
		}
		if envd != "" {
			if err := c.hostFile("envd", 0o755, envd); err != nil {
				return fmt.Errorf("envd: %w", err)
			}
		}
		if err := c.bytes("lib/modules/order", 0o644, order); err != nil {
			return err
		}
		for _, m := range strings.Fields(string(order)) {
			if err := c.hostFile("lib/modules/"+m, 0o644, filepath.Join(kernelDir, "modules", m)); err != nil {
				return err
			}
		}
		if err := c.bytes("init", 0o755, init); err != nil {
			return err
		}
		return c.close()
	}()
	if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
		return fmt.Errorf("vm: initramfs: %w", err)
	}
	return os.Rename(tmp, dst)
}
