package snapshot

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/snapshot/store"
	"github.com/wrenn-dev/wrenn/internal/snapshot/store/s3test"
	"github.com/wrenn-dev/wrenn/internal/testutil"
)

// The crash test re-executes the test binary in a helper mode that
// publishes a new snapshot slowly, kills it with SIGKILL at a random moment,
// and checks that the store still holds either the old snapshot or the
// complete new one, never a mix, and that GC then leaves only live data.

const (
	crashHelperEnv = "WRENN_SNAPSHOT_CRASH_HELPER"
	// crashS3Env carries the JSON S3Config when the helper publishes to S3.
	crashS3Env = "WRENN_SNAPSHOT_CRASH_S3"
)

// crashStore opens the store under test: S3 when cfgJSON is set, else the
// local directory dir/store.
func crashStore(t *testing.T, dir, cfgJSON string) store.Store {
	t.Helper()
	if cfgJSON != "" {
		var cfg store.S3Config
		if err := json.Unmarshal([]byte(cfgJSON), &cfg); err != nil {
			t.Fatal(err)
		}
		st, err := store.NewS3(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st, err := store.OpenLocal(filepath.Join(dir, "store"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// slowStore stretches the publish steps so a random kill lands anywhere in
// them: data is written in small slices with pauses, the header after a
// pause.
type slowStore struct {
	store.Store
}

type slowReader struct{ r io.Reader }

func (s slowReader) Read(p []byte) (int, error) {
	time.Sleep(2 * time.Millisecond)
	return s.r.Read(p[:min(len(p), 32<<10)])
}

func (s slowStore) PutData(ctx context.Context, id string, r io.Reader, size int64) error {
	return s.Store.PutData(ctx, id, slowReader{r}, size)
}

func (s slowStore) PutHeader(ctx context.Context, name string, b []byte) error {
	time.Sleep(30 * time.Millisecond)
	return s.Store.PutHeader(ctx, name, b)
}

// TestCrashHelper is the child process; it does nothing in a normal run.
func TestCrashHelper(t *testing.T) {
	dir := os.Getenv(crashHelperEnv)
	if dir == "" {
		t.Skip("helper process for TestCrashAtomicity")
	}
	st := crashStore(t, dir, os.Getenv(crashS3Env))
	m := &Manager{Store: slowStore{st}, TempDir: dir}
	os.Stdout.WriteString("started\n")
	if _, err := m.Pause(context.Background(), "cap", filepath.Join(dir, "new.raw"), PauseOptions{Parent: "cap"}); err != nil {
		t.Fatal(err)
	}
	os.Stdout.WriteString("committed\n")
}

func TestCrashAtomicity(t *testing.T) {
	t.Run("local", func(t *testing.T) { testCrashAtomicity(t, "") })
	t.Run("s3", func(t *testing.T) {
		cfg, err := json.Marshal(s3test.Start(t))
		if err != nil {
			t.Fatal(err)
		}
		testCrashAtomicity(t, string(cfg))
	})
}

func testCrashAtomicity(t *testing.T, s3cfg string) {
	iterations := 13
	if testing.Short() {
		iterations = 5
	}
	const bs = 4096
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	outcomes := map[string]int{}
	var window time.Duration // how long an uninterrupted publish takes, +20 %
	for it := range iterations {
		dir := t.TempDir()
		st := crashStore(t, dir, s3cfg)
		ctx := testutil.Context(t, testutil.Long)
		oldData := make([]byte, 1024*bs)
		for i := range oldData[:512*bs] {
			oldData[i] = byte(rng.Uint32()) | 1
		}
		newData := slices.Clone(oldData)
		for i := range newData[256*bs : 768*bs] {
			newData[256*bs+i] = byte(rng.Uint32()) | 2
		}
		oldRaw, newRaw := filepath.Join(dir, "old.raw"), filepath.Join(dir, "new.raw")
		if err := os.WriteFile(oldRaw, oldData, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(newRaw, newData, 0o600); err != nil {
			t.Fatal(err)
		}
		m := &Manager{Store: st, TempDir: dir}
		if _, err := m.Pause(ctx, "cap", oldRaw, PauseOptions{}); err != nil {
			t.Fatal(err)
		}

		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), crashHelperEnv+"="+dir, crashS3Env+"="+s3cfg)
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan string, 16)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		waitLine := func(want string) {
			t.Helper()
			for l := range lines {
				if strings.Contains(l, want) {
					return
				}
			}
			t.Fatalf("helper exited before printing %q", want)
		}
		waitLine("started")
		committed := false
		if it == 0 {
			// Calibration: let the first run finish and time it.
			start := time.Now()
			waitLine("committed")
			window = time.Since(start) * 6 / 5
			committed = true
		} else {
			// Kill anywhere in the publish (and occasionally just after).
			time.Sleep(time.Duration(rng.Int64N(int64(window))))
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		for l := range lines {
			committed = committed || strings.Contains(l, "committed")
		}
		_ = cmd.Wait()

		r, err := m.Open(ctx, "cap")
		if err != nil {
			t.Fatalf("iteration %d: snapshot unreadable after a crash: %v", it, err)
		}
		got := readAll(t, r)
		_ = r.Close()
		switch {
		case bytes.Equal(got, newData):
			outcomes["new"]++
		case committed:
			t.Fatalf("iteration %d: the helper committed but the store does not hold the new snapshot", it)
		case bytes.Equal(got, oldData):
			outcomes["old"]++
		default:
			t.Fatalf("iteration %d: the store holds neither the old nor the new snapshot", it)
		}
		// Orphans of the interrupted publish are collected; what is live
		// stays readable.
		h, err := ReadHeader(ctx, st, "cap")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.GC(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if l, ok := st.(*store.Local); ok {
			if _, err := l.CleanTemp(0); err != nil {
				t.Fatal(err)
			}
			if left, _ := os.ReadDir(filepath.Join(l.Root(), "tmp")); len(left) != 0 {
				t.Fatalf("iteration %d: temp files survive CleanTemp: %v", it, left)
			}
		}
		objs, err := st.ListData(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(objs) != len(h.Builds) {
			t.Fatalf("iteration %d: %d data objects after GC, header references %d", it, len(objs), len(h.Builds))
		}
		r, err = m.Open(ctx, "cap")
		if err != nil {
			t.Fatalf("iteration %d: reopen after GC: %v", it, err)
		}
		if !bytes.Equal(readAll(t, r), got) {
			t.Fatalf("iteration %d: content changed by GC", it)
		}
		_ = r.Close()
	}
	t.Logf("publish takes ~%v; outcomes over %d runs (the first uninterrupted): %v", window*5/6, iterations, outcomes)
}
