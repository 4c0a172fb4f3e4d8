package process

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/identity"
	pb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// defaultPath is PATH for processes whose environment names none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Default PTY size when a request asks for a PTY without one.
const (
	defaultCols = 80
	defaultRows = 24
)

// spec is a validated start request, ready to fork.
type spec struct {
	path   string // resolved executable
	args   []string
	env    []string
	cwd    string
	user   *identity.User
	pty    *pb.PTY_Size // nil: no PTY
	stdin  bool
	config *pb.ProcessConfig // as reported by List (cwd resolved)
}

// prepare validates a start request and resolves its executable, working
// directory and environment for user u.
func prepare(req *pb.StartRequest, u *identity.User, cwdDefault string, defaultEnvs map[string]string) (*spec, error) {
	cfg := req.GetProcess()
	if cfg == nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("process config is required"))
	}
	if cfg.GetCmd() == "" {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("cmd is empty"))
	}
	if err := noNUL("cmd", cfg.GetCmd()); err != nil {
		return nil, err
	}
	for _, a := range cfg.GetArgs() {
		if err := noNUL("argument", a); err != nil {
			return nil, err
		}
	}
	for k, v := range cfg.GetEnvs() {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("invalid environment variable name %q", k))
		}
		if err := noNUL("environment variable "+k, v); err != nil {
			return nil, err
		}
	}

	cwd, err := resolveCwd(cfg.Cwd, u, cwdDefault)
	if err != nil {
		return nil, err
	}

	env := map[string]string{
		"PATH":    defaultPath,
		"HOME":    u.Home,
		"USER":    u.Name,
		"LOGNAME": u.Name,
		"SHELL":   u.Shell,
	}
	maps.Copy(env, defaultEnvs)
	maps.Copy(env, cfg.GetEnvs())
	env["PWD"] = cwd
	var size *pb.PTY_Size
	if req.Pty != nil {
		size = req.GetPty().GetSize()
		if size == nil || size.GetCols() == 0 || size.GetRows() == 0 {
			size = &pb.PTY_Size{Cols: defaultCols, Rows: defaultRows}
		}
		if size.GetCols() > 0xffff || size.GetRows() > 0xffff {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("pty size %dx%d too large", size.GetCols(), size.GetRows()))
		}
		if _, ok := env["TERM"]; !ok {
			env["TERM"] = "xterm-256color"
		}
	}

	path, err := lookPath(cfg.GetCmd(), env["PATH"], cwd)
	if err != nil {
		return nil, err
	}

	keys := slices.Sorted(maps.Keys(env))
	envList := make([]string, 0, len(keys))
	for _, k := range keys {
		envList = append(envList, k+"="+env[k])
	}
	reported := &pb.ProcessConfig{Cmd: cfg.GetCmd(), Args: cfg.GetArgs(), Envs: cfg.GetEnvs(), Cwd: &cwd}
	return &spec{
		path:   path,
		args:   append([]string{cfg.GetCmd()}, cfg.GetArgs()...),
		env:    envList,
		cwd:    cwd,
		user:   u,
		pty:    size,
		stdin:  req.Stdin == nil || req.GetStdin(),
		config: reported,
	}, nil
}

func noNUL(what, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s contains a NUL byte", what))
	}
	return nil
}

// resolveCwd returns the absolute working directory: the requested one
// (relative paths and "~" resolve against the user's home) or the default.
func resolveCwd(req *string, u *identity.User, cwdDefault string) (string, error) {
	cwd := cwdDefault
	if req != nil && *req != "" {
		cwd = *req
		if err := noNUL("cwd", cwd); err != nil {
			return "", err
		}
		switch {
		case cwd == "~":
			cwd = u.Home
		case strings.HasPrefix(cwd, "~/"):
			cwd = filepath.Join(u.Home, cwd[2:])
		case !filepath.IsAbs(cwd):
			cwd = filepath.Join(u.Home, cwd)
		}
	}
	if cwd == "" {
		cwd = "/"
	}
	cwd = filepath.Clean(cwd)
	fi, err := os.Stat(cwd)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", connect.NewError(connect.CodeNotFound, fmt.Errorf("working directory %q does not exist", cwd))
	case err != nil:
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("working directory %q: %w", cwd, err))
	case !fi.IsDir():
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("working directory %q is not a directory", cwd))
	}
	return cwd, nil
}

// lookPath finds cmd the way a shell would, but in the process's own PATH
// (not envd's) and relative to the process's working directory.
func lookPath(cmd, pathEnv, cwd string) (string, error) {
	if strings.Contains(cmd, "/") {
		p := cmd
		if !filepath.IsAbs(p) {
			p = filepath.Join(cwd, p)
		}
		if err := checkExecutable(p); err != nil {
			return "", err
		}
		return p, nil
	}
	for _, dir := range filepath.SplitList(pathEnv) {
		if !filepath.IsAbs(dir) {
			dir = filepath.Join(cwd, dir)
		}
		p := filepath.Join(dir, cmd)
		if isExecutable(p) {
			return p, nil
		}
	}
	return "", connect.NewError(connect.CodeNotFound, fmt.Errorf("executable %q not found in PATH %q", cmd, pathEnv))
}

// isExecutable reports what checkExecutable(p) == nil does, without
// building an error for each PATH entry that lacks the command.
func isExecutable(p string) bool {
	var st unix.Stat_t
	if unix.Stat(p, &st) != nil {
		return false
	}
	return st.Mode&unix.S_IFMT != unix.S_IFDIR && st.Mode&0o111 != 0
}

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, fmt.Errorf("executable %q does not exist", p))
	case err != nil:
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("executable %q: %w", p, err))
	case fi.IsDir():
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("executable %q is a directory", p))
	case fi.Mode()&0o111 == 0:
		return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%q is not executable", p))
	}
	return nil
}

// startError maps a fork/exec failure to a connect error.
func startError(path string, err error) error {
	code := connect.CodeInternal
	switch {
	case errors.Is(err, fs.ErrNotExist):
		code = connect.CodeNotFound
	case errors.Is(err, fs.ErrPermission):
		code = connect.CodePermissionDenied
	case errors.Is(err, syscall.ENOEXEC), errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.E2BIG):
		code = connect.CodeInvalidArgument
	case errors.Is(err, syscall.EAGAIN):
		// fork fails with EAGAIN when the capsule's cgroup is at pids.max.
		return connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("start %s: the capsule is at its process limit (%s processes): wait for some to exit or kill some: %w", path, pidsLimit(), err))
	case errors.Is(err, syscall.ENOMEM), errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		code = connect.CodeResourceExhausted
	}
	return connect.NewError(code, fmt.Errorf("start %s: %w", path, err))
}

// pidsLimit is the capsule's process limit as its cgroup says (v2, then
// v1), or "its maximum" when unreadable.
func pidsLimit() string {
	for _, p := range []string{"/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max"} {
		if b, err := os.ReadFile(p); err == nil {
			if v := strings.TrimSpace(string(b)); v != "" && v != "max" {
				return v
			}
		}
	}
	return "its maximum number of"
}

// fds are the parent's ends of a process's stdio.
type fds struct {
	outputs []output // stdout+stderr pipes, or the PTY master
	stdin   *os.File // stdin pipe write end, or the PTY master; nil without stdin
	pty     *os.File // PTY master (nonblocking, pollable); nil without PTY
	child   []*os.File
}

type output struct {
	f    *os.File
	kind streamKind
}

func (f *fds) closeChild() {
	for _, c := range f.child {
		_ = c.Close()
	}
	f.child = nil
}

func (f *fds) closeAll() {
	f.closeChild()
	for _, o := range f.outputs {
		_ = o.f.Close()
	}
	if f.stdin != nil {
		_ = f.stdin.Close()
	}
}

// command builds the exec.Cmd for sp and opens its stdio. canSwitch says
// whether envd may change the process's credentials (it runs as root).
func command(sp *spec, canSwitch bool) (*exec.Cmd, *fds, error) {
	cmd := &exec.Cmd{Path: sp.path, Args: sp.args, Env: sp.env, Dir: sp.cwd, SysProcAttr: &syscall.SysProcAttr{}}
	if canSwitch {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: sp.user.UID, Gid: sp.user.GID, Groups: sp.user.Groups}
	}
	f := &fds{}
	var err error
	if sp.pty != nil {
		err = openPTY(cmd, f, sp.pty)
	} else {
		err = openPipes(cmd, f, sp.stdin)
	}
	if err != nil {
		f.closeAll()
		return nil, nil, connect.NewError(connect.CodeResourceExhausted, err)
	}
	return cmd, f, nil
}

// stdoutPipeSize is the capacity requested for stdout pipes (the default
// pipe-max-size). A pipe larger than the default 64 KiB lets a process that
// writes fast run ahead of envd's reader, which then takes large chunks per
// read (fewer, bigger messages). Pipe pages are allocated only as output
// waits in them; they count against the creating user's pipe limit unless
// envd has CAP_SYS_RESOURCE (as root), and where that limit refuses the
// size the pipe keeps its default, which only costs throughput. Only stdout
// is enlarged, and only once its reader sees bulk output (proc.read): most
// processes write little, and resizing costs a kernel allocation per exec.
const stdoutPipeSize = 1 << 20

func openPipes(cmd *exec.Cmd, f *fds, stdin bool) error {
	// Each process is its own process group, so signals reach its children.
	cmd.SysProcAttr.Setpgid = true
	for _, kind := range []streamKind{kindStdout, kindStderr} {
		r, w, err := pipe(true)
		if err != nil {
			return fmt.Errorf("create output pipe: %w", err)
		}
		f.outputs = append(f.outputs, output{f: r, kind: kind})
		f.child = append(f.child, w)
		if kind == kindStdout {
			cmd.Stdout = w
		} else {
			cmd.Stderr = w
		}
	}
	if stdin {
		r, w, err := pipe(false)
		if err != nil {
			return fmt.Errorf("create stdin pipe: %w", err)
		}
		f.stdin = w
		f.child = append(f.child, r)
		cmd.Stdin = r
	}
	return nil
}

// pipe returns a close-on-exec pipe whose parent end (the read end when
// parentReads, else the write end) is nonblocking and served by Go's poller,
// and whose child end stays blocking and out of the poller (the child gets
// it as a plain descriptor). The pipe is created nonblocking and the child
// end made blocking again: one fcntl instead of two.
func pipe(parentReads bool) (r, w *os.File, err error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, nil, err
	}
	child := p[0]
	if parentReads {
		child = p[1]
	}
	// F_SETFL sets the status flags (here: none, so blocking); the access
	// mode and close-on-exec are not status flags and stay.
	if _, err := unix.FcntlInt(uintptr(child), unix.F_SETFL, 0); err != nil { //nolint:gosec // fds are small
		_ = unix.Close(p[0])
		_ = unix.Close(p[1])
		return nil, nil, err
	}
	return os.NewFile(uintptr(p[0]), "|0"), os.NewFile(uintptr(p[1]), "|1"), nil
}

// setPipeSize enlarges a pipe; failure (e.g. the per-user pipe limit) keeps
// the default size, which only costs throughput.
func setPipeSize(p *os.File, size int) {
	rc, err := p.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, size)
	})
}

func openPTY(cmd *exec.Cmd, f *fds, size *pb.PTY_Size) error {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return fmt.Errorf("open pty: %w", err)
	}
	f.child = append(f.child, tty)
	// pty.Open returns a blocking master, whose reads cannot be interrupted.
	// Use a nonblocking duplicate instead: it joins Go's poller, so reads
	// take deadlines and Close wakes blocked readers and writers.
	fd, err := unix.FcntlInt(ptmx.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	_ = ptmx.Close()
	if err != nil {
		return fmt.Errorf("duplicate pty master: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return fmt.Errorf("pty master nonblocking: %w", err)
	}
	master := os.NewFile(uintptr(fd), "/dev/ptmx")
	f.pty = master
	f.stdin = master
	f.outputs = []output{{f: master, kind: kindPTY}}
	if err := setWinsize(master, size); err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	// A new session with the PTY as controlling terminal (fd 0 in the child).
	cmd.SysProcAttr.Setsid = true
	cmd.SysProcAttr.Setctty = true
	cmd.SysProcAttr.Ctty = 0
	return nil
}

// setWinsize resizes a PTY through the poller-safe raw conn (pty.Setsize
// would call Fd, which turns the master back to blocking mode).
func setWinsize(master *os.File, size *pb.PTY_Size) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return fmt.Errorf("pty raw conn: %w", err)
	}
	ws := &unix.Winsize{Row: uint16(size.GetRows()), Col: uint16(size.GetCols())} //nolint:gosec // bounded to 0xffff by callers
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, ws) //nolint:gosec // fd fits in int
	}); err != nil {
		return fmt.Errorf("pty resize: %w", err)
	}
	if ioErr != nil {
		return fmt.Errorf("pty resize: %w", ioErr)
	}
	return nil
}
