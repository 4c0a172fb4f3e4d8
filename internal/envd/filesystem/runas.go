package filesystem

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/identity"
)

// RunAs runs fn with the filesystem credentials of u, so that the kernel
// checks permissions for u (including ACLs) and new files and directories are
// owned by u and u's group without a later chown.
//
// How: when envd is root and u differs from envd's own user, fn runs on a
// dedicated goroutine locked to its OS thread whose fsuid, fsgid and
// supplementary groups are set to u's (setfsuid/setfsgid/setgroups are
// per-thread system calls; x/sys/unix issues them raw, unlike package
// syscall which applies them to every thread). Changing the fsuid away from 0
// also drops the filesystem capabilities (CAP_DAC_OVERRIDE, CAP_CHOWN, ...) of
// that thread. The thread's credentials are restored afterwards; if restoring
// fails the goroutine exits still locked, which makes the Go runtime destroy
// the thread instead of reusing it. Threads the runtime creates while a thread
// is locked are cloned from its template thread, never from this one.
//
// fn must do all its credential-sensitive work synchronously (open, mkdir,
// rename, ...); descriptors it opens can be used anywhere afterwards.
// When envd is not root, or u is envd's own user, fn runs directly.
func RunAs(u *identity.User, fn func() error) error {
	if u == nil || !identity.CanSwitch() || (int(u.UID) == os.Geteuid() && int(u.GID) == os.Getegid()) {
		return fn()
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restore, err := switchThread(u)
		if err != nil {
			if restore() == nil {
				runtime.UnlockOSThread()
			}
			done <- err
			return
		}
		var fnErr error
		func() {
			defer func() {
				if r := recover(); r != nil {
					fnErr = fmt.Errorf("panic while acting as %s: %v", u.Name, r)
				}
			}()
			fnErr = fn()
		}()
		if restore() == nil {
			runtime.UnlockOSThread()
		}
		done <- fnErr
	}()
	return <-done
}

// switchThread sets the calling thread's filesystem credentials to u's and
// returns a function that restores envd's own credentials.
func switchThread(u *identity.User) (func() error, error) {
	origGroups, err := unix.Getgroups()
	if err != nil {
		return func() error { return nil }, fmt.Errorf("read supplementary groups: %w", err)
	}
	euid, egid := os.Geteuid(), os.Getegid()
	restore := func() error {
		_, _ = unix.SetfsuidRetUid(euid)
		_, _ = unix.SetfsgidRetGid(egid)
		if err := unix.Setgroups(origGroups); err != nil {
			return fmt.Errorf("restore supplementary groups: %w", err)
		}
		if cur, _ := unix.SetfsuidRetUid(-1); cur != euid {
			return fmt.Errorf("restore fsuid: still %d", cur)
		}
		if cur, _ := unix.SetfsgidRetGid(-1); cur != egid {
			return fmt.Errorf("restore fsgid: still %d", cur)
		}
		return nil
	}
	groups := make([]int, 0, len(u.Groups)+1)
	groups = append(groups, int(u.GID))
	for _, g := range u.Groups {
		groups = append(groups, int(g))
	}
	if err := unix.Setgroups(groups); err != nil {
		return restore, fmt.Errorf("set supplementary groups for %s: %w", u.Name, err)
	}
	// setfsgid/setfsuid report failure only by leaving the value unchanged;
	// read it back (an invalid id such as -1 changes nothing and returns it).
	_, _ = unix.SetfsgidRetGid(int(u.GID))
	if cur, _ := unix.SetfsgidRetGid(-1); cur != int(u.GID) {
		return restore, fmt.Errorf("set fsgid %d for %s: kernel kept %d", u.GID, u.Name, cur)
	}
	_, _ = unix.SetfsuidRetUid(int(u.UID))
	if cur, _ := unix.SetfsuidRetUid(-1); cur != int(u.UID) {
		return restore, fmt.Errorf("set fsuid %d for %s: kernel kept %d", u.UID, u.Name, cur)
	}
	return restore, nil
}
