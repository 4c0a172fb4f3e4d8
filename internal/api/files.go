package api

import (
	"errors"
	"net/http"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
)

func pathParam(r *http.Request) (string, error) {
	p := r.URL.Query().Get("path")
	if p == "" || len(p) > 4096 || strings.ContainsRune(p, 0) {
		return "", errorf(CodeInvalidArgument, "path is required (at most 4096 bytes, no NUL)")
	}
	return p, nil
}

func toEntryJSON(e *pb.FileEntry) wrennapi.FileEntry {
	return wrennapi.FileEntry{
		Name: e.GetName(), Path: e.GetPath(), Type: e.GetType(), Size: e.GetSize(), Mode: e.GetMode(),
		Permissions: e.GetPermissions(), Owner: e.GetOwner(), Group: e.GetGroup(), ModifiedAt: e.GetModifiedAt(),
		SymlinkTarget: e.GetSymlinkTarget(),
	}
}

// readFile streams a file's bytes (any size) from envd through the
// agent's envd route (envdfiles.go), with the file's Content-Length.
func (a *API) readFile(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	conn, err := a.capsules.Connect(r.Context(), scope(r), capsuleID(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	user := r.URL.Query().Get("user")
	if agent := a.localAgent(conn); agent != nil {
		a.readFileLocal(w, r, conn, agent, path, user)
		return
	}
	if base, err := a.envdRouteBase(conn); err == nil && strings.HasPrefix(base, "http://") {
		a.readFileRaw(w, r, conn, base, path, user)
		return
	}
	resp, err := a.envdFiles(r.Context(), conn, http.MethodGet, path, user, nil, 0)
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		a.writeError(w, r, envdFilesError("download", resp))
		return
	}
	startDownload(w, path, resp.ContentLength)
	a.finishDownload(w, r, conn, resp.Body)
}

// writeFile streams the request body into a file through the agent's envd
// route (envdfiles.go); a known Content-Length is kept, so envd splices
// the body into the file.
func (a *API) writeFile(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if r.ContentLength > a.cfg.MaxFileBytes {
		a.writeError(w, r, &http.MaxBytesError{Limit: a.cfg.MaxFileBytes})
		return
	}
	conn, err := a.capsules.Connect(r.Context(), scope(r), capsuleID(r))
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	user := r.URL.Query().Get("user")
	body := &errRecorder{r: http.MaxBytesReader(w, r.Body, a.cfg.MaxFileBytes)}
	var resp *http.Response
	if agent := a.localAgent(conn); agent != nil {
		resp, err = a.writeFileLocal(r, conn, agent, path, user, body)
	} else {
		resp, err = a.envdFiles(r.Context(), conn, http.MethodPost, path, user, body, r.ContentLength)
	}
	if resp != nil {
		defer func() { _ = resp.Body.Close() }()
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(body.err, &mbe):
		a.writeError(w, r, body.err)
	case err != nil && body.err != nil:
		a.writeError(w, r, body.err)
	case err != nil:
		a.writeError(w, r, agentError(err))
	case resp.StatusCode != http.StatusOK:
		a.writeError(w, r, envdFilesError("upload", resp))
	default:
		writeJSON(w, http.StatusOK, a.uploadedEntry(r.Context(), conn, user, path, resp.Body))
	}
}

func (a *API) removeFile(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if _, err := cl.RemovePath(r.Context(), connect.NewRequest(&pb.RemovePathRequest{CapsuleId: c.ID, Path: path, User: r.URL.Query().Get("user")})); err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) listFiles(w http.ResponseWriter, r *http.Request) {
	path, err := pathParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	depth := uint64(1)
	if s := r.URL.Query().Get("depth"); s != "" {
		depth, err = strconv.ParseUint(s, 10, 8)
		if err != nil || depth < 1 || depth > 10 {
			a.writeError(w, r, errorf(CodeInvalidArgument, "depth must be an integer from 1 to 10"))
			return
		}
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.ListDir(r.Context(), connect.NewRequest(&pb.ListDirRequest{CapsuleId: c.ID, Path: path, Depth: uint32(depth), User: r.URL.Query().Get("user")}))
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	out := make([]wrennapi.FileEntry, 0, len(resp.Msg.GetEntries()))
	for _, e := range resp.Msg.GetEntries() {
		out = append(out, toEntryJSON(e))
	}
	writeJSON(w, http.StatusOK, wrennapi.FileList{Entries: out})
}

func (a *API) mkdir(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.Mkdir
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if req.Path == "" || len(req.Path) > 4096 || strings.ContainsRune(req.Path, 0) {
		a.writeError(w, r, errorf(CodeInvalidArgument, "path is required (at most 4096 bytes, no NUL)"))
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.MakeDir(r.Context(), connect.NewRequest(&pb.MakeDirRequest{CapsuleId: c.ID, Path: req.Path, User: req.User}))
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	status := http.StatusOK
	if resp.Msg.GetCreated() {
		status = http.StatusCreated
	}
	writeJSON(w, status, wrennapi.MkdirResult{Created: resp.Msg.GetCreated(), Entry: toEntryJSON(resp.Msg.GetEntry())})
}

// ---- processes ----

func (a *API) listProcesses(w http.ResponseWriter, r *http.Request) {
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.ListProcesses(r.Context(), connect.NewRequest(&pb.ListProcessesRequest{CapsuleId: c.ID}))
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	out := make([]wrennapi.Process, 0, len(resp.Msg.GetProcesses()))
	for _, p := range resp.Msg.GetProcesses() {
		args := p.GetArgs()
		if args == nil {
			args = []string{} // the document says an array, never null
		}
		out = append(out, wrennapi.Process{PID: p.GetPid(), Tag: p.GetTag(), Cmd: p.GetCmd(), Args: args, Cwd: p.GetCwd(), Env: p.GetEnv()})
	}
	writeJSON(w, http.StatusOK, wrennapi.ProcessList{Processes: out})
}

func (a *API) startProcess(w http.ResponseWriter, r *http.Request) {
	var req wrennapi.StartProcess
	if err := decodeJSON(w, r, &req, a.cfg.MaxBodyBytes, false); err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := execRequest(wrennapi.Exec{
		Cmd: req.Cmd, Args: req.Args, Env: req.Env, Cwd: req.Cwd, User: req.User, TimeoutSec: req.TimeoutSec, Stdin: req.Stdin,
	}).Validate(); err != nil {
		a.writeError(w, r, err)
		return
	}
	if len(req.Tag) > 128 {
		a.writeError(w, r, errorf(CodeInvalidArgument, "tag is too long"))
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	resp, err := cl.StartProcess(r.Context(), connect.NewRequest(&pb.StartProcessRequest{
		CapsuleId: c.ID, Cmd: req.Cmd, Args: req.Args, Env: req.Env, Cwd: req.Cwd, User: req.User, Tag: req.Tag, Stdin: req.OpenStdin,
	}))
	if err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	writeJSON(w, http.StatusCreated, wrennapi.ProcessStarted{PID: resp.Msg.GetPid(), Tag: req.Tag})
}

func pidParam(r *http.Request) (uint32, error) {
	n, err := strconv.ParseUint(chi.URLParam(r, "pid"), 10, 32)
	if err != nil || n == 0 {
		return 0, errorf(CodeInvalidArgument, "pid must be a positive integer")
	}
	return uint32(n), nil
}

func (a *API) killProcess(w http.ResponseWriter, r *http.Request) {
	pid, err := pidParam(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	sig := pb.Signal_SIGNAL_SIGKILL
	switch r.URL.Query().Get("signal") {
	case "", "SIGKILL", "KILL", "9":
	case "SIGTERM", "TERM", "15":
		sig = pb.Signal_SIGNAL_SIGTERM
	default:
		a.writeError(w, r, errorf(CodeInvalidArgument, "signal must be SIGKILL or SIGTERM"))
		return
	}
	c, cl, err := a.runningCapsule(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if _, err := cl.KillProcess(r.Context(), connect.NewRequest(&pb.KillProcessRequest{
		CapsuleId: c.ID, Process: &pb.ProcessSelector{Selector: &pb.ProcessSelector_Pid{Pid: pid}}, Signal: sig,
	})); err != nil {
		a.writeError(w, r, agentError(err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
