package runtime

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"
)

// Step is one named phase of a driver operation (e.g. "network", "rootfs",
// "bundle", "start" of a capsule's create path).
type Step struct {
	// Name identifies the step in its list (unique there), in logs and in
	// errors.
	Name string
	// Do performs the step.
	Do func(ctx context.Context) error
	// Undo, if set, reverts the step when it or a later step fails. It
	// also runs when Do itself failed, so it must tolerate a partial or
	// absent result (it is an idempotent cleanup). Its context does not end
	// with the caller's.
	Undo func(ctx context.Context) error
	// Async lets the next steps start while Do runs: an Async step runs
	// concurrently with the steps after it up to and including the next
	// step that is not Async; Run waits for it there (e.g. the network is
	// set up while the rootfs is mounted).
	Async bool
}

// StepError is the error of a failed Steps.Run: it names the step that
// failed (the first one, if several concurrent steps did).
type StepError struct {
	Op, Step string
	Err      error
}

func (e *StepError) Error() string {
	if e.Op == "" {
		return fmt.Sprintf("step %s: %v", e.Step, e.Err)
	}
	return fmt.Sprintf("%s step %s: %v", e.Op, e.Step, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// Steps is an ordered list of named steps that make up one operation of a
// driver, in the manner of firecracker-go-sdk's handler lists: the driver
// builds the list, a caller (a test, a hook in the driver's config) may
// read, reorder, wrap or replace steps by name before Run. Run executes the
// steps in order, logs each at debug level with its duration, and on
// failure undoes the steps that ran, newest first.
//
// A Steps is not safe for concurrent mutation; Run may be called again
// after it returns.
type Steps struct {
	// Op names the operation ("create", "restore", …) and ID the capsule;
	// both go into every log record and into StepError.
	Op, ID string
	// Log receives the debug records (default slog.Default()).
	Log *slog.Logger
	// UndoTimeout bounds all the undos of a failed Run together (default
	// one minute).
	UndoTimeout time.Duration

	list []Step
}

// Names returns the step names in order.
func (s *Steps) Names() []string {
	out := make([]string, len(s.list))
	for i, st := range s.list {
		out[i] = st.Name
	}
	return out
}

// Len returns the number of steps.
func (s *Steps) Len() int { return len(s.list) }

// Get returns the named step.
func (s *Steps) Get(name string) (Step, bool) {
	i := s.index(name)
	if i < 0 {
		return Step{}, false
	}
	return s.list[i], true
}

func (s *Steps) index(name string) int {
	return slices.IndexFunc(s.list, func(st Step) bool { return st.Name == name })
}

// check panics on a step without a name or Do, or whose name is already
// in the list: those are programming errors of the code that builds it.
func (s *Steps) check(steps []Step) {
	for i, st := range steps {
		if st.Name == "" || st.Do == nil {
			panic(fmt.Sprintf("runtime: step %q has no name or no Do", st.Name))
		}
		if s.index(st.Name) >= 0 || slices.ContainsFunc(steps[:i], func(o Step) bool { return o.Name == st.Name }) {
			panic(fmt.Sprintf("runtime: duplicate step %q", st.Name))
		}
	}
}

func (s *Steps) notFound(name string) error {
	return fmt.Errorf("step %q is not in %v", name, s.Names())
}

// Append adds steps at the end. A duplicate name panics.
func (s *Steps) Append(steps ...Step) {
	s.check(steps)
	s.list = append(s.list, steps...)
}

// Prepend adds steps at the start. A duplicate name panics.
func (s *Steps) Prepend(steps ...Step) {
	s.check(steps)
	s.list = slices.Insert(s.list, 0, steps...)
}

// InsertBefore adds steps just before the named one.
func (s *Steps) InsertBefore(name string, steps ...Step) error {
	i := s.index(name)
	if i < 0 {
		return s.notFound(name)
	}
	s.check(steps)
	s.list = slices.Insert(s.list, i, steps...)
	return nil
}

// InsertAfter adds steps just after the named one.
func (s *Steps) InsertAfter(name string, steps ...Step) error {
	i := s.index(name)
	if i < 0 {
		return s.notFound(name)
	}
	s.check(steps)
	s.list = slices.Insert(s.list, i+1, steps...)
	return nil
}

// Replace puts st in the place of the named step (st may have another
// name, as long as it is not already in the list).
func (s *Steps) Replace(name string, st Step) error {
	i := s.index(name)
	if i < 0 {
		return s.notFound(name)
	}
	old := s.list[i]
	s.list = slices.Delete(s.list, i, i+1)
	defer func() {
		if r := recover(); r != nil {
			s.list = slices.Insert(s.list, i, old)
			panic(r)
		}
	}()
	s.check([]Step{st})
	s.list = slices.Insert(s.list, i, st)
	return nil
}

// Remove deletes the named step.
func (s *Steps) Remove(name string) error {
	i := s.index(name)
	if i < 0 {
		return s.notFound(name)
	}
	s.list = slices.Delete(s.list, i, i+1)
	return nil
}

// Wrap replaces the named step's Do with w, which receives the original as
// next (it may run code around it, skip it or fail after it). Undo and
// Async stay.
func (s *Steps) Wrap(name string, w func(ctx context.Context, next func(context.Context) error) error) error {
	i := s.index(name)
	if i < 0 {
		return s.notFound(name)
	}
	next := s.list[i].Do
	s.list[i].Do = func(ctx context.Context) error { return w(ctx, next) }
	return nil
}

// Run executes the steps in order. When ctx has ended before a step, that
// step fails with ctx's error without running. On the first failure (of a
// step, or of an Async step joined by then) no further step starts; the
// Undo of every step that started runs, newest first, under a context
// independent of ctx, and Run returns a *StepError naming the step that
// failed (wrapping its error; the errors of concurrent steps that failed
// too are joined to it).
func (s *Steps) Run(ctx context.Context) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("op", s.Op, "capsule_id", s.ID)
	begin := time.Now()
	type pending struct {
		name string
		done chan error
	}
	var (
		started []int
		waiting []pending
		failed  string
		errs    []error
	)
	fail := func(name string, err error) {
		if failed == "" {
			failed = name
		}
		errs = append(errs, err)
	}
	join := func() {
		for _, p := range waiting {
			if err := <-p.done; err != nil {
				fail(p.name, err)
			}
		}
		waiting = nil
	}
	for i, st := range s.list {
		if err := ctx.Err(); err != nil {
			fail(st.Name, err)
			break
		}
		started = append(started, i)
		if st.Async {
			p := pending{name: st.Name, done: make(chan error, 1)}
			go func() { p.done <- s.do(ctx, log, st) }()
			waiting = append(waiting, p)
			continue
		}
		if err := s.do(ctx, log, st); err != nil {
			fail(st.Name, err)
		}
		join()
		if failed != "" {
			break
		}
	}
	join()
	if failed == "" {
		log.Debug("steps done", "steps", len(s.list), "took", time.Since(begin))
		return nil
	}
	timeout := s.UndoTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	for _, i := range slices.Backward(started) {
		st := s.list[i]
		if st.Undo == nil {
			continue
		}
		t0 := time.Now()
		if err := st.Undo(uctx); err != nil {
			log.Warn("undo step", "step", st.Name, "took", time.Since(t0), "err", err)
		} else {
			log.Debug("step undone", "step", st.Name, "took", time.Since(t0))
		}
	}
	err := errs[0]
	if len(errs) > 1 {
		err = errors.Join(errs...)
	}
	return &StepError{Op: s.Op, Step: failed, Err: err}
}

func (s *Steps) do(ctx context.Context, log *slog.Logger, st Step) error {
	t0 := time.Now()
	err := st.Do(ctx)
	if err != nil {
		log.Debug("step failed", "step", st.Name, "took", time.Since(t0), "err", err)
		return err
	}
	log.Debug("step", "step", st.Name, "took", time.Since(t0))
	return nil
}
