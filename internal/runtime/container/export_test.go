package container

import "time"

// SetRunscRestoreBudget replaces the time limit of one `runsc restore`
// until the returned function restores it.
func SetRunscRestoreBudget(f func(size int64) time.Duration) (undo func()) {
	old := runscRestoreBudget
	runscRestoreBudget = f
	return func() { runscRestoreBudget = old }
}

// SetBeforeRunscRestore runs f on the image directory just before `runsc
// restore` reads it, until the returned function removes it.
func SetBeforeRunscRestore(f func(images string)) (undo func()) {
	old := beforeRunscRestore
	beforeRunscRestore = f
	return func() { beforeRunscRestore = old }
}

// SetRunscSHA makes the driver believe its runsc binary has this sha256
// (what an upgraded host's runsc build looks like to an old image), until
// the returned function puts the real one back.
func SetRunscSHA(d *Driver, sha string) (undo func()) {
	old := d.rt.sha
	d.rt.sha = sha
	return func() { d.rt.sha = old }
}

// UnmountAll is unmountAll (tests clean runsc's null-netns up with it).
var UnmountAll = unmountAll

// SetSnapshotCrashHook calls f at each step of a pause to disk ("stopped",
// "detached", "published", "committed", "releasing"), until the returned
// function removes it.
func SetSnapshotCrashHook(f func(point, snapID string)) (undo func()) {
	old := crashHook
	crashHook = f
	return func() { crashHook = old }
}

// AbandonSpares stops the spare filler and forgets the spares without
// releasing them, as a crash of the agent leaves them.
func AbandonSpares(d *Driver) {
	_ = d.stopSpares()
}
