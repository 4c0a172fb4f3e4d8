package process

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// reapPoll is how often the reaper looks for zombies when no SIGCHLD
// arrived (signals can coalesce).
const reapPoll = time.Second

// ReapOrphans reaps zombies that are not processes the service waits on:
// orphans re-parented to envd when it is PID 1 (or a child subreaper). It
// peeks at exited children without reaping them (waitid WNOWAIT), reaps the
// unknown ones and leaves the service's own children to their waiters. It
// returns when ctx is done.
//
// Children forked by other code in the same process (os/exec outside this
// service) look like orphans to it; envd runs no such long-lived children.
func (s *Service) ReapOrphans(ctx context.Context) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, unix.SIGCHLD)
	defer signal.Stop(sigs)
	tick := time.NewTicker(reapPoll)
	defer tick.Stop()
	for {
		s.reapOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-sigs:
		case <-tick.C:
		}
	}
}

// reapOnce reaps every unknown zombie that exists now.
func (s *Service) reapOnce(ctx context.Context) {
	for ctx.Err() == nil {
		pid, err := peekZombie()
		if err != nil || pid <= 0 {
			if err != nil && !errors.Is(err, unix.ECHILD) {
				s.log.Debug("reaper: waitid failed", "err", err)
			}
			return
		}
		s.forkMu.Lock()
		s.mu.Lock()
		p := s.children[pid]
		s.mu.Unlock()
		if p != nil && p.isWaited() {
			// Our waiter reaped that pid already; this zombie reuses it.
			p = nil
		}
		if p == nil {
			var ws unix.WaitStatus
			_, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
			s.forkMu.Unlock()
			if err == nil {
				s.log.Debug("reaped orphan", "pid", pid, "status", int(ws))
			}
			continue
		}
		s.forkMu.Unlock()
		// Our own child: its waiter reaps it; only then can waitid report
		// the next zombie.
		select {
		case <-p.waited:
		case <-ctx.Done():
			return
		}
	}
}

// siginfoPidOffset is where si_pid sits in siginfo_t: after three ints,
// aligned to the union's pointer alignment.
const siginfoPidOffset = (12 + unsafe.Sizeof(uintptr(0)) - 1) &^ (unsafe.Sizeof(uintptr(0)) - 1)

// peekZombie returns the pid of an exited child without reaping it, or 0
// when no child has exited.
func peekZombie() (int, error) {
	var info unix.Siginfo
	if err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
		return 0, err
	}
	pid := *(*int32)(unsafe.Add(unsafe.Pointer(&info), siginfoPidOffset))
	return int(pid), nil
}
