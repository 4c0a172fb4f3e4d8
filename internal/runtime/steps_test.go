package runtime_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wrenn-dev/wrenn/internal/runtime"
)

// recorder builds steps that note what ran and what was undone.
type recorder struct {
	mu   sync.Mutex
	ran  []string
	undo []string
}

func (r *recorder) note(list *[]string, s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*list = append(*list, s)
}

func (r *recorder) step(name string, err error) runtime.Step {
	return runtime.Step{
		Name: name,
		Do: func(context.Context) error {
			r.note(&r.ran, name)
			return err
		},
		Undo: func(context.Context) error {
			r.note(&r.undo, name)
			return nil
		},
	}
}

func TestStepsEditing(t *testing.T) {
	var r recorder
	var s runtime.Steps
	s.Append(r.step("b", nil), r.step("d", nil))
	s.Prepend(r.step("a", nil))
	if err := s.InsertBefore("d", r.step("c", nil)); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertAfter("d", r.step("e", nil)); err != nil {
		t.Fatal(err)
	}
	if got := s.Names(); !slices.Equal(got, []string{"a", "b", "c", "d", "e"}) {
		t.Fatalf("names %v", got)
	}
	if err := s.Replace("c", r.step("C", nil)); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove("e"); err != nil {
		t.Fatal(err)
	}
	if got := s.Names(); !slices.Equal(got, []string{"a", "b", "C", "d"}) {
		t.Fatalf("names %v", got)
	}
	if _, ok := s.Get("C"); !ok || s.Len() != 4 {
		t.Fatalf("Get C: %v, len %d", ok, s.Len())
	}
	for name, err := range map[string]error{
		"InsertBefore": s.InsertBefore("x", r.step("y", nil)),
		"InsertAfter":  s.InsertAfter("x", r.step("y", nil)),
		"Replace":      s.Replace("x", r.step("y", nil)),
		"Remove":       s.Remove("x"),
		"Wrap":         s.Wrap("x", nil),
	} {
		if err == nil || !strings.Contains(err.Error(), `"x"`) {
			t.Errorf("%s of an unknown step: err = %v", name, err)
		}
	}
	// Reorder: move "a" to the end.
	a, _ := s.Get("a")
	if err := s.Remove("a"); err != nil {
		t.Fatal(err)
	}
	s.Append(a)
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.ran, []string{"b", "C", "d", "a"}) || len(r.undo) != 0 {
		t.Fatalf("ran %v, undone %v", r.ran, r.undo)
	}
}

func TestStepsDuplicatePanics(t *testing.T) {
	var r recorder
	for name, f := range map[string]func(s *runtime.Steps){
		"append":        func(s *runtime.Steps) { s.Append(r.step("a", nil)) },
		"prepend":       func(s *runtime.Steps) { s.Prepend(r.step("a", nil)) },
		"insert":        func(s *runtime.Steps) { _ = s.InsertAfter("a", r.step("a", nil)) },
		"replace":       func(s *runtime.Steps) { _ = s.Replace("b", r.step("a", nil)) },
		"same call":     func(s *runtime.Steps) { s.Append(r.step("c", nil), r.step("c", nil)) },
		"nameless step": func(s *runtime.Steps) { s.Append(runtime.Step{Do: func(context.Context) error { return nil }}) },
		"step without Do": func(s *runtime.Steps) {
			s.Append(runtime.Step{Name: "z"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			var s runtime.Steps
			s.Append(r.step("a", nil), r.step("b", nil))
			defer func() {
				if recover() == nil {
					t.Error("no panic")
				}
				if got := s.Names(); !slices.Equal(got, []string{"a", "b"}) {
					t.Errorf("list changed by the failed call: %v", got)
				}
			}()
			f(&s)
		})
	}
}

func TestStepsFailureUndoesStartedStepsNewestFirst(t *testing.T) {
	var r recorder
	boom := errors.New("boom")
	s := runtime.Steps{Op: "create", ID: "cl-x"}
	s.Append(r.step("net", nil), r.step("fs", nil), r.step("bundle", boom), r.step("start", nil))
	err := s.Run(context.Background())
	var se *runtime.StepError
	if !errors.As(err, &se) || se.Step != "bundle" || se.Op != "create" || !errors.Is(err, boom) {
		t.Fatalf("err = %#v", err)
	}
	if !strings.Contains(err.Error(), "create step bundle: boom") {
		t.Errorf("message %q does not name the step", err)
	}
	// The failed step is undone too (it may have half happened); the step
	// after it never ran.
	if !slices.Equal(r.ran, []string{"net", "fs", "bundle"}) || !slices.Equal(r.undo, []string{"bundle", "fs", "net"}) {
		t.Fatalf("ran %v, undone %v", r.ran, r.undo)
	}
}

func TestStepsWrapInjectsFailureAfterStep(t *testing.T) {
	var r recorder
	var s runtime.Steps
	s.Append(r.step("a", nil), r.step("b", nil))
	injected := errors.New("injected")
	if err := s.Wrap("b", func(ctx context.Context, next func(context.Context) error) error {
		if err := next(ctx); err != nil {
			return err
		}
		return injected
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Run(context.Background()); !errors.Is(err, injected) {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(r.ran, []string{"a", "b"}) || !slices.Equal(r.undo, []string{"b", "a"}) {
		t.Fatalf("ran %v, undone %v", r.ran, r.undo)
	}
}

func TestStepsAsyncRunsConcurrentlyAndJoins(t *testing.T) {
	var r recorder
	release := make(chan struct{})
	var s runtime.Steps
	s.Append(
		runtime.Step{Name: "net", Async: true, Do: func(context.Context) error {
			<-release // finishes only once "fs" has started
			r.note(&r.ran, "net")
			return nil
		}},
		runtime.Step{Name: "fs", Do: func(context.Context) error {
			r.note(&r.ran, "fs")
			close(release)
			return nil
		}},
		r.step("after", nil),
	)
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not run the async step concurrently with the next one")
	}
	// "after" starts only once both have finished.
	if !slices.Equal(r.ran, []string{"fs", "net", "after"}) {
		t.Fatalf("ran %v", r.ran)
	}
}

func TestStepsAsyncFailureIsJoinedAndUndone(t *testing.T) {
	var r recorder
	netErr := errors.New("no address")
	var s runtime.Steps
	net := r.step("net", netErr)
	net.Async = true
	s.Append(net, r.step("fs", nil), r.step("bundle", nil))
	err := s.Run(context.Background())
	var se *runtime.StepError
	if !errors.As(err, &se) || se.Step != "net" || !errors.Is(err, netErr) {
		t.Fatalf("err = %v", err)
	}
	slices.Sort(r.ran)
	if !slices.Equal(r.ran, []string{"fs", "net"}) || !slices.Equal(r.undo, []string{"fs", "net"}) {
		t.Fatalf("ran %v, undone %v", r.ran, r.undo)
	}
	// Both concurrent steps failing: both errors are kept.
	r = recorder{}
	fsErr := errors.New("disk full")
	s = runtime.Steps{}
	s.Append(net, r.step("fs", fsErr))
	err = s.Run(context.Background())
	if !errors.Is(err, netErr) || !errors.Is(err, fsErr) {
		t.Fatalf("err = %v, want both", err)
	}
}

func TestStepsCancelledContextStopsAndUndoesWithLiveContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var undoCtxErr error
	var ran []string
	var s runtime.Steps
	s.Append(
		runtime.Step{
			Name: "a",
			Do:   func(context.Context) error { ran = append(ran, "a"); cancel(); return nil },
			Undo: func(ctx context.Context) error { undoCtxErr = ctx.Err(); return nil },
		},
		runtime.Step{Name: "b", Do: func(context.Context) error { ran = append(ran, "b"); return nil }},
	)
	err := s.Run(ctx)
	var se *runtime.StepError
	if !errors.As(err, &se) || se.Step != "b" || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(ran, []string{"a"}) || undoCtxErr != nil {
		t.Fatalf("ran %v, undo ctx err %v", ran, undoCtxErr)
	}
}

func TestStepsLogEachStepWithIDAndDuration(t *testing.T) {
	var buf bytes.Buffer
	var r recorder
	s := runtime.Steps{Op: "create", ID: "cl-log", Log: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	s.Append(r.step("net", nil), r.step("fs", nil))
	if err := s.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("log:\n%s", buf.String())
	}
	for i, name := range []string{"net", "fs"} {
		l := lines[i]
		for _, want := range []string{"level=DEBUG", "op=create", "capsule_id=cl-log", "step=" + name, "took="} {
			if !strings.Contains(l, want) {
				t.Errorf("line %q lacks %q", l, want)
			}
		}
	}
}
