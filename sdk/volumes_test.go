package wrenn_test

import (
	"errors"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
	wrenn "github.com/wrenn-dev/wrenn/sdk"
)

// TestVolumes: a volume written in one capsule is read back in the next
// (read-only); a second read-write mount, a full volume and a delete
// while mounted are typed errors; files work without a capsule.
func TestVolumes(t *testing.T) {
	c := client(t)
	ctx := testutil.Context(t, testutil.Long)
	v, err := c.CreateVolume(ctx, "sdk-vol", 32)
	if err != nil {
		t.Fatal(err)
	}
	if v.SizeMB != 32 || v.Location != "store" {
		t.Fatalf("CreateVolume = %+v", v)
	}
	code := func(err error) string {
		var e *wrenn.Error
		if errors.As(err, &e) {
			return e.Code
		}
		return ""
	}
	if _, err := c.CreateVolume(ctx, "sdk/vol", 0); code(err) != "invalid_argument" {
		t.Fatalf("bad name: %v", err)
	}
	mount := func(ro bool) wrenn.CreateParams {
		return wrenn.CreateParams{Template: "minimal", VolumeMounts: []wrenn.VolumeMount{{Name: "sdk-vol", Path: "/vol", ReadOnly: ro}}}
	}
	w, err := c.Create(ctx, mount(false))
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.Exec(ctx, w.ID, wrenn.ExecRequest{Cmd: "/bin/sh", Args: []string{"-c", "echo kept > /vol/note"}}); err != nil || r.ExitCode != 0 {
		t.Fatalf("write: %v %+v", err, r)
	}
	if _, err := c.Create(ctx, mount(false)); code(err) != "conflict" {
		t.Fatalf("second read-write mount: %v", err)
	}
	if err := c.DeleteVolume(ctx, "sdk-vol"); code(err) != "conflict" {
		t.Fatalf("delete while mounted: %v", err)
	}
	if err := c.Delete(ctx, w.ID); err != nil {
		t.Fatal(err)
	}
	r, err := c.Create(ctx, mount(true))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.Exec(ctx, r.ID, wrenn.ExecRequest{Cmd: "/bin/cat", Args: []string{"/vol/note"}}); err != nil || out.Stdout != "kept\n" {
		t.Fatalf("read back: %v %+v", err, out)
	}
	if err := c.Delete(ctx, r.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteVolumeFile(ctx, "sdk-vol", "/a/b.txt", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if b, err := c.ReadVolumeFile(ctx, "sdk-vol", "/a/b.txt"); err != nil || string(b) != "hi" {
		t.Fatalf("ReadVolumeFile = %q, %v", b, err)
	}
	if es, err := c.ListVolumeFiles(ctx, "sdk-vol", "/"); err != nil || len(es) != 2 {
		t.Fatalf("ListVolumeFiles = %+v, %v", es, err)
	}
	if _, err := c.WriteVolumeFile(ctx, "sdk-vol", "/big", make([]byte, 33<<20)); code(err) != "volume_full" {
		t.Fatalf("write past the quota: %v", err)
	}
	if err := c.RemoveVolumeFile(ctx, "sdk-vol", "/a"); err != nil {
		t.Fatal(err)
	}
	if vs, err := c.Volumes(ctx); err != nil || len(vs) != 1 {
		t.Fatalf("Volumes = %+v, %v", vs, err)
	}
	if err := c.DeleteVolume(ctx, "sdk-vol"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Volume(ctx, "sdk-vol"); !wrenn.IsNotFound(err) {
		t.Fatalf("after delete: %v", err)
	}
}
