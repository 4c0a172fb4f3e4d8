package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// runSnapshot executes the snapshot command tree in-process.
func runSnapshot(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newSnapshotCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(testutil.Context(t, testutil.Long))
	return out.String(), err
}

func inspect(t *testing.T, dir string) snapshotInfo {
	t.Helper()
	out, err := runSnapshot(t, "inspect", dir)
	if err != nil {
		t.Fatalf("inspect %s: %v\n%s", dir, err, out)
	}
	var info snapshotInfo
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("inspect output is not JSON: %v\n%s", err, out)
	}
	return info
}

func TestSnapshotCLIRoundTrip(t *testing.T) {
	dir := t.TempDir()
	const bs = 4096
	raw := filepath.Join(dir, "mem")
	data := make([]byte, 64*bs)
	for i := range data[3*bs : 7*bs] {
		data[3*bs+i] = byte(i%251) + 1
	}
	copy(data[40*bs:], "template memory")
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	gen0 := filepath.Join(dir, "gen0")
	if out, err := runSnapshot(t, "process", raw, gen0, "--meta", "template_id=base"); err != nil {
		t.Fatalf("process: %v\n%s", err, out)
	}
	info := inspect(t, gen0)
	if info.Size != int64(len(data)) || info.Generation != 0 || info.StoredBytes != 5*bs || info.Blocks.Zero != 59 || info.Blocks.Stored != 5 {
		t.Fatalf("gen0 inspect = %+v", info)
	}
	if info.Metadata["template_id"] != "base" {
		t.Fatalf("metadata = %v", info.Metadata)
	}

	// Re-pause with one block changed, keeping the diff.
	copy(data[41*bs:], "dirty")
	if err := os.WriteFile(raw, data, 0o600); err != nil {
		t.Fatal(err)
	}
	gen1 := filepath.Join(dir, "gen1")
	if out, err := runSnapshot(t, "process", raw, gen1, "--parent", gen0, "--max-diff-generations", "4"); err != nil {
		t.Fatalf("process --parent: %v\n%s", err, out)
	}
	info1 := inspect(t, gen1)
	if info1.Generation != 1 || info1.BaseBuildID != info.BuildID || info1.Blocks.Stored != 1 || info1.Blocks.Inherited != 5 || len(info1.Builds) != 2 {
		t.Fatalf("gen1 inspect = %+v", info1)
	}
	restored := filepath.Join(dir, "restored")
	if out, err := runSnapshot(t, "restore", gen1, restored); err != nil || !strings.Contains(out, "restored") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	got, err := os.ReadFile(restored)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("restored image differs from the raw file")
	}

	// With the default limit the diff is merged into one build.
	gen1m := filepath.Join(dir, "gen1m")
	if out, err := runSnapshot(t, "process", raw, gen1m, "--parent", gen0); err != nil {
		t.Fatalf("process --parent (merge): %v\n%s", err, out)
	}
	if info := inspect(t, gen1m); len(info.Builds) != 1 || info.Blocks.Inherited != 0 || info.Blocks.Stored != 6 || info.Generation != 1 {
		t.Fatalf("merged inspect = %+v", info)
	}
	entries, err := os.ReadDir(filepath.Join(gen1m, "builds"))
	if err != nil || len(entries) != 1 {
		t.Fatalf("merged dir holds %d data files (%v), want 1", len(entries), err)
	}
	for _, d := range []string{gen0, gen1, gen1m} {
		if left, _ := os.ReadDir(filepath.Join(d, "tmp")); len(left) != 0 {
			t.Fatalf("%s/tmp holds leftovers: %v", d, left)
		}
	}
	if out, err := runSnapshot(t, "restore", gen1m, restored); err != nil {
		t.Fatalf("restore merged: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(restored); !bytes.Equal(got, data) {
		t.Fatal("restored merged image differs")
	}
}

func TestSnapshotCLIErrors(t *testing.T) {
	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	if err := os.WriteFile(raw, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad block size", []string{"process", raw, filepath.Join(dir, "o"), "--block-size", "8192"}, "--block-size"},
		{"missing raw", []string{"process", filepath.Join(dir, "none"), filepath.Join(dir, "o")}, "no such file"},
		{"inspect non-snapshot", []string{"inspect", dir}, "not a snapshot directory"},
		{"restore non-snapshot", []string{"restore", dir, filepath.Join(dir, "f")}, "not a snapshot directory"},
		{"bad meta", []string{"process", raw, filepath.Join(dir, "o"), "--meta", "novalue"}, "KEY=VALUE"},
		{"wrong arg count", []string{"inspect"}, "accepts 1 arg"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runSnapshot(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q\n%s", err, tc.want, out)
			}
		})
	}
}
