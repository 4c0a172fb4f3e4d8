package builds

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/internal/templates/recipe"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// RegistryAuth is a registry credential given with one build. It lives in
// the memory of the control plane that accepted the build only: never
// stored, never logged (String hides the password).
type RegistryAuth struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

func (a RegistryAuth) String() string { return "RegistryAuth{" + a.Username + ", ***}" }

// Inputs are a build's local inputs, held by the control plane that
// accepted it: files in Dir (removed when the build ends) and credentials.
type Inputs struct {
	// Dir holds the files below; removed with them.
	Dir string
	// ContextPath is the build context (a tar) for COPY, or empty.
	ContextPath string
	// ImagePath is the uploaded image or rootfs tarball of an import.
	ImagePath string
	Auth      *RegistryAuth
	present   bool
}

func (in Inputs) remove() {
	if in.Dir != "" {
		_ = os.RemoveAll(in.Dir)
	}
}

// ErrNoRunner: this control plane runs no builds (or is stopping).
var ErrNoRunner = errors.New("this control plane does not run builds")

// localInputsGrace is how long a pending build with local inputs may wait
// for the control plane that holds them before another runner fails it.
const localInputsGrace = 10 * time.Minute

// Submit runs build b (pending, with local inputs) on this runner as soon
// as a slot is free. The inputs are removed when it ends.
func (r *Runner) Submit(b store.Build, in Inputs) error {
	in.present = true
	r.mu.Lock()
	if r.bg == nil || r.bg.Err() != nil {
		r.mu.Unlock()
		return ErrNoRunner
	}
	ctx := r.bg
	r.inputs[b.ID] = in
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			r.takeInputs(b.ID).remove()
			return
		}
		ok, err := r.cfg.Store.UpdateBuildStatus(ctx, b.TeamID, b.ID, []store.BuildStatus{store.BuildPending}, store.BuildRunning, "claimed by a build runner", "")
		if err != nil || !ok {
			<-r.sem
			r.takeInputs(b.ID).remove()
			if err != nil {
				r.log.Warn("claim submitted build", "build_id", b.ID, "err", err)
			}
			return // cancelled before it started
		}
		r.mu.Lock()
		r.mine[b.ID] = true
		r.mu.Unlock()
		defer func() {
			r.mu.Lock()
			delete(r.mine, b.ID)
			r.mu.Unlock()
			<-r.sem
		}()
		r.execute(ctx, b)
	}()
	return nil
}

// Running reports whether Run has started and not ended (Submit works).
func (r *Runner) Running() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bg != nil && r.bg.Err() == nil
}

// takeInputs removes and returns a build's local inputs.
func (r *Runner) takeInputs(id string) Inputs {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.inputs[id]
	delete(r.inputs, id)
	return in
}

// ContextError is a build context that breaks a rule; for users.
type ContextError struct{ Msg string }

func (e *ContextError) Error() string { return "build context: " + e.Msg }

// SaveContext streams a build context (a tar) from r into file dst,
// checking every entry as it passes: no path climbing out with "..", no
// symlink pointing outside the context (absolute, or climbing out), no
// hard link to outside, no device nodes, at most maxBytes. Memory use
// does not depend on the context's size. Errors are *ContextError for a
// bad context.
func SaveContext(r io.Reader, dst string, maxBytes int64) (int64, error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	lim := &io.LimitedReader{R: r, N: maxBytes + 1}
	tee := io.TeeReader(lim, bw)
	tr := tar.NewReader(tee)
	entries := 0
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if lim.N <= 0 {
			return 0, &ContextError{Msg: fmt.Sprintf("larger than %d bytes", maxBytes)}
		}
		if err != nil {
			return 0, &ContextError{Msg: "not a readable tar stream: " + err.Error()}
		}
		entries++
		if err := checkContextEntry(hdr); err != nil {
			return 0, err
		}
	}
	if _, err := io.Copy(io.Discard, tee); err != nil { // the end-of-archive blocks
		return 0, err
	}
	if lim.N <= 0 {
		return 0, &ContextError{Msg: fmt.Sprintf("larger than %d bytes", maxBytes)}
	}
	if entries == 0 {
		return 0, &ContextError{Msg: "the tar stream holds no entries"}
	}
	if err := bw.Flush(); err != nil {
		return 0, err
	}
	n := maxBytes + 1 - lim.N
	return n, f.Sync()
}

func checkContextEntry(hdr *tar.Header) error {
	name, ok := cleanRel(hdr.Name)
	if !ok {
		return &ContextError{Msg: fmt.Sprintf("%q climbs out of the context with \"..\"", clip(hdr.Name))}
	}
	switch hdr.Typeflag {
	case tar.TypeSymlink:
		t := hdr.Linkname
		if strings.HasPrefix(t, "/") {
			return &ContextError{Msg: fmt.Sprintf("symlink %q points outside the context (absolute target %q)", clip(name), clip(t))}
		}
		if _, ok := cleanRel(path.Join(path.Dir(name), t)); !ok || escapes(path.Join(path.Dir(name), t)) {
			return &ContextError{Msg: fmt.Sprintf("symlink %q points outside the context (%q)", clip(name), clip(t))}
		}
	case tar.TypeLink:
		if _, ok := cleanRel(hdr.Linkname); !ok || strings.HasPrefix(hdr.Linkname, "/") {
			return &ContextError{Msg: fmt.Sprintf("hard link %q points outside the context", clip(name))}
		}
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return &ContextError{Msg: fmt.Sprintf("%q is a device node or FIFO", clip(name))}
	}
	return nil
}

// cleanRel makes a tar name relative and clean; false when it climbs out.
func cleanRel(name string) (string, bool) {
	name = strings.TrimLeft(name, "/")
	for p := range strings.SplitSeq(name, "/") {
		if p == ".." {
			return "", false
		}
	}
	c := path.Clean("/" + name)[1:]
	if c == "" {
		c = "."
	}
	return c, true
}

// escapes reports whether a path relative to the context root, cleaned,
// leaves it.
func escapes(p string) bool {
	c := path.Clean(p)
	return c == ".." || strings.HasPrefix(c, "../") || strings.HasPrefix(c, "/")
}

// copyStep runs COPY: the matching entries of the context are written
// into the capsule through the agent, then one root shell script makes
// the symlinks and sets modes and, with --chown, owners.
func (r *Runner) copyStep(ctx context.Context, agent hostagentv1connect.HostAgentServiceClient, b store.Build, st *state, step recipe.Step, in Inputs, n int, blog *buildLog) (stepResult, error) {
	if in.ContextPath == "" {
		return stepResult{exited: true, exitCode: 1, tail: "COPY needs a build context: none was uploaded (wrenn template build --context DIR)"}, nil
	}
	f, err := os.Open(in.ContextPath)
	if err != nil {
		return stepResult{}, err
	}
	defer f.Close()
	matched := make([]bool, len(step.Srcs))
	var (
		script  []string
		modes   = map[string][]string{}
		written []string
		files   int
		bytes   int64
	)
	tr := tar.NewReader(bufio.NewReaderSize(f, 1<<20))
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return stepResult{}, fmt.Errorf("read the build context: %w", err)
		}
		name, ok := cleanRel(hdr.Name)
		if !ok {
			continue // refused at upload already
		}
		target := ""
		for i, src := range step.Srcs {
			t, ok := copyTarget(name, src, step.Dest, hdr.Typeflag == tar.TypeDir)
			if ok {
				matched[i], target = true, t
				break
			}
		}
		if target == "" || target == "/" {
			continue
		}
		if err := r.running(ctx, b); err != nil {
			return stepResult{}, err
		}
		mode := fmt.Sprintf("%o", hdr.Mode&0o7777)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if _, err := agent.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{CapsuleId: b.ID, Path: target, User: "root"})); err != nil {
				return stepResult{}, fmt.Errorf("COPY: mkdir %s: %w", target, err)
			}
			if mode != "755" {
				modes[mode] = append(modes[mode], target)
			}
		case tar.TypeReg:
			if err := writeFile(ctx, agent, b.ID, target, tr); err != nil {
				return stepResult{}, fmt.Errorf("COPY: write %s: %w", target, err)
			}
			files++
			bytes += hdr.Size
			if mode != "644" {
				modes[mode] = append(modes[mode], target)
			}
		case tar.TypeSymlink:
			script = append(script, fmt.Sprintf("mkdir -p %s && ln -sfn %s %s", shq(path.Dir(target)), shq(hdr.Linkname), shq(target)))
		case tar.TypeLink:
			lt, _ := cleanRel(hdr.Linkname)
			// Hard links are copied as the file they name when it is in
			// the same COPY; otherwise skipped.
			for _, src := range step.Srcs {
				if t, ok := copyTarget(lt, src, step.Dest, false); ok {
					script = append(script, fmt.Sprintf("ln -f %s %s", shq(t), shq(target)))
					break
				}
			}
		default:
			continue
		}
		written = append(written, target)
	}
	for i, ok := range matched {
		if !ok {
			return stepResult{exited: true, exitCode: 1, tail: fmt.Sprintf("COPY: %q is not in the build context", step.Srcs[i])}, nil
		}
	}
	keys := make([]string, 0, len(modes))
	for m := range modes {
		keys = append(keys, m)
	}
	sort.Strings(keys)
	for _, m := range keys {
		for chunk := range chunks(modes[m], 200) {
			script = append(script, "chmod "+m+" "+shqAll(chunk))
		}
	}
	if step.Chown != "" && len(written) > 0 {
		for chunk := range chunks(written, 200) {
			script = append(script, "chown -h "+shq(step.Chown)+" "+shqAll(chunk))
		}
	}
	blog.Systemf(n, "copied %d files (%d bytes)", files, bytes)
	if len(script) == 0 {
		return okResult, nil
	}
	return r.runStep(ctx, agent, b, &pb.ExecRequest{
		CapsuleId: b.ID, Cmd: "/bin/sh", Args: []string{"-s"}, User: "root", Cwd: "/",
		Stdin: []byte("set -e\n" + strings.Join(script, "\n") + "\n"),
	}, n, blog)
}

// copyTarget maps a context entry to its path in the capsule for COPY
// src dest: src itself (a file: dest, or dest/base(src) when dest ends in
// '/'; a directory: dest), or under a directory src (dest/rel).
func copyTarget(name, src, dest string, isDir bool) (string, bool) {
	destDir := strings.TrimSuffix(dest, "/")
	if destDir == "" {
		destDir = "/"
	}
	switch {
	case src == ".":
		if name == "." {
			return destDir, true
		}
		return path.Join(destDir, name), true
	case name == src:
		if isDir {
			return destDir, true
		}
		if strings.HasSuffix(dest, "/") {
			return path.Join(destDir, path.Base(src)), true
		}
		return dest, true
	case strings.HasPrefix(name, src+"/"):
		return path.Join(destDir, strings.TrimPrefix(name, src+"/")), true
	}
	return "", false
}

// writeFile streams r into path in the capsule as root.
func writeFile(ctx context.Context, agent hostagentv1connect.HostAgentServiceClient, capsuleID, p string, r io.Reader) error {
	if _, err := agent.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{CapsuleId: capsuleID, Path: path.Dir(p), User: "root"})); err != nil {
		return err
	}
	st := agent.WriteFileStream(ctx)
	if err := st.Send(&pb.WriteFileStreamRequest{Msg: &pb.WriteFileStreamRequest_Header{Header: &pb.WriteFileHeader{CapsuleId: capsuleID, Path: p, User: "root"}}}); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	buf := make([]byte, uploadChunk)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := st.Send(&pb.WriteFileStreamRequest{Msg: &pb.WriteFileStreamRequest_Data{Data: append([]byte(nil), buf[:n]...)}}); serr != nil {
				if errors.Is(serr, io.EOF) {
					break // the server ended the stream: its error follows
				}
				return serr
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	_, err := st.CloseAndReceive()
	return err
}

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func shqAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = shq(s)
	}
	return strings.Join(q, " ")
}

func chunks(ss []string, n int) func(func([]string) bool) {
	return func(yield func([]string) bool) {
		for len(ss) > 0 {
			k := min(n, len(ss))
			if !yield(ss[:k]) {
				return
			}
			ss = ss[k:]
		}
	}
}
