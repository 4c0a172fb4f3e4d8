package hostagent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/template"
	fspb "github.com/wrenn-dev/wrenn/proto/envd/filesystem"
	procpb "github.com/wrenn-dev/wrenn/proto/envd/process"
	pb "github.com/wrenn-dev/wrenn/proto/hostagent/v1"
	"github.com/wrenn-dev/wrenn/proto/hostagent/v1/hostagentv1connect"
)

// Limits of the unary file and exec calls (use the streams beyond them).
const (
	maxUnaryFile = 64 << 20
	fileChunk    = 64 << 10
)

// service implements hostagentv1connect.HostAgentServiceHandler.
type service struct {
	a *Agent
}

var _ hostagentv1connect.HostAgentServiceHandler = service{}

// toConnect maps agent, driver and envd errors to Connect errors.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	var se *envdclient.StatusError
	if errors.As(err, &se) {
		code := connect.CodeUnknown
		switch se.Status {
		case http.StatusNotFound:
			code = connect.CodeNotFound
		case http.StatusBadRequest:
			code = connect.CodeInvalidArgument
		case http.StatusUnauthorized, http.StatusForbidden:
			code = connect.CodePermissionDenied
		case http.StatusInsufficientStorage:
			code = connect.CodeResourceExhausted
		case http.StatusConflict:
			code = connect.CodeAlreadyExists
		}
		return connect.NewError(code, err)
	}
	switch {
	case errors.Is(err, runtime.ErrNotFound), errors.Is(err, runtime.ErrNoTemplate):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, template.ErrCorrupt):
		return connect.NewError(connect.CodeDataLoss, err)
	case errors.Is(err, runtime.ErrExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, runtime.ErrInvalidState):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, runtime.ErrInvalidSpec):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, runtime.ErrNotSupported):
		return connect.NewError(connect.CodeUnimplemented, err)
	case errors.Is(err, errVolumeHeld):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, errTooLarge):
		return connect.NewError(connect.CodeResourceExhausted, err)
	case errors.Is(err, fs.ErrNotExist):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	}
	return connect.NewError(connect.CodeInternal, err)
}

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

func phaseProto(p phase) pb.CapsuleState {
	switch p {
	case phaseStarting:
		return pb.CapsuleState_CAPSULE_STATE_STARTING
	case phaseRunning:
		return pb.CapsuleState_CAPSULE_STATE_RUNNING
	case phasePaused:
		return pb.CapsuleState_CAPSULE_STATE_PAUSED
	case phaseHibernated:
		return pb.CapsuleState_CAPSULE_STATE_HIBERNATED
	}
	return pb.CapsuleState_CAPSULE_STATE_UNSPECIFIED
}

func unix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func capsuleProto(rec record, info runtime.Info) *pb.Capsule {
	c := &pb.Capsule{
		CapsuleId:       rec.ID,
		Template:        rec.Template,
		State:           phaseProto(rec.Phase),
		Vcpus:           int32(info.VCPUs),      //nolint:gosec // small
		MemoryMb:        int32(info.MemoryMB),   //nolint:gosec // small
		DiskSizeMb:      int32(info.DiskSizeMB), //nolint:gosec // small
		AllowInternet:   rec.Spec.AllowInternet,
		Network:         policyProto(rec.Spec.Network),
		Labels:          rec.Spec.Labels,
		CreatedAt:       unix(rec.CreatedAt),
		StartedAt:       unix(info.StartedAt),
		ExpiresAt:       unix(rec.ExpiresAt),
		TimeoutSec:      int32(rec.TimeoutSec), //nolint:gosec // small
		MemoryKept:      rec.MemoryKept,
		EnvdAccessToken: rec.AccessToken,
		Isolation:       info.Isolation,
	}
	if c.Isolation == "" {
		c.Isolation = rec.Spec.Isolation
	}
	if c.Vcpus == 0 {
		c.Vcpus = int32(rec.Spec.VCPUs) //nolint:gosec // small
	}
	if c.MemoryMb == 0 {
		c.MemoryMb = int32(rec.Spec.MemoryMB) //nolint:gosec // small
	}
	if c.DiskSizeMb == 0 {
		c.DiskSizeMb = int32(rec.Spec.DiskSizeMB) //nolint:gosec // small
	}
	if info.IP.IsValid() {
		c.Ip = info.IP.String()
	}
	return c
}

func (s service) GetHostInfo(_ context.Context, _ *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	l := s.a.Load()
	out := &pb.GetHostInfoResponse{
		Driver:                s.a.driver.Name(),
		Version:               s.a.cfg.Version,
		Cpus:                  int32(l.CPUs), //nolint:gosec // small
		MemorySnapshots:       l.MemorySnapshots,
		MemorySnapshotsReason: l.MemorySnapshotsReason,
		StartedAt:             l.StartedAt.Unix(),
		DiskFreeBytes:         l.DiskFreeBytes,
		MemoryTotalBytes:      l.MemoryTotalBytes,
		MemoryAvailableBytes:  l.MemoryAvailableBytes,
		MemoryCommittedBytes:  uint64(max(l.UsedMemoryMB, 0)) << 20,
		VcpusCommitted:        int32(l.UsedVCPUs), //nolint:gosec // small
		Capsules:              int32(l.Capsules),  //nolint:gosec // small
	}
	_, out.CanPause = s.a.driver.(runtime.Pauser)
	_, out.CanSnapshot = s.a.driver.(runtime.Snapshotter)
	out.SharedTemplates = s.a.cfg.SharedTemplates != nil
	out.CpuOvercommit, out.MemoryOvercommit, out.DiskOvercommit = s.a.cfg.CPUOvercommit, s.a.cfg.MemoryOvercommit, s.a.cfg.DiskOvercommit
	out.Isolations, out.DefaultIsolation = isolationSupport(s.a.driver)
	if r, ok := s.a.driver.(runtime.WarmPoolReporter); ok {
		for _, p := range r.WarmPools() {
			out.WarmPools = append(out.WarmPools, &pb.WarmPool{
				Template: p.Template, Ready: int32(p.Ready), Target: int32(p.Target), Auto: p.Auto, Max: int32(p.Max), //nolint:gosec // small
				Hits: p.Hits, Misses: p.Misses, Limit: p.Limit,
			})
		}
	}
	return connect.NewResponse(out), nil
}

// Load is what this host has and what its capsules were given: GetHostInfo
// and the heartbeats of an agent that joined a control plane
// (`wrenn agent --control-plane`) report it.
type Load struct {
	CPUs                                   int
	MemoryTotalBytes, MemoryAvailableBytes uint64
	// DiskFreeBytes is the free space of the filesystem holding the
	// agent's state (capsule disks).
	DiskFreeBytes uint64
	// UsedVCPUs and UsedMemoryMB sum the starting, running and paused
	// capsules; UsedDiskMB also counts hibernated ones (their disks stay).
	UsedVCPUs, UsedMemoryMB, UsedDiskMB int64
	Capsules                            int
	MemorySnapshots                     bool
	MemorySnapshotsReason               string
	StartedAt                           time.Time
	// Isolations is every isolation the agent knows (available or not,
	// with the reason); DefaultIsolation that of a create naming none.
	Isolations       []runtime.IsolationStatus
	DefaultIsolation string
}

// Load reports the host's capacity and its capsules' reservations.
func (a *Agent) Load() Load {
	l := Load{CPUs: goruntime.NumCPU(), StartedAt: a.started}
	l.Isolations, l.DefaultIsolation = isolationStatus(a.driver)
	if sn, ok := a.driver.(runtime.Snapshotter); ok {
		l.MemorySnapshots = sn.MemorySnapshots()
	}
	if r, ok := a.driver.(interface{ CRIUUnavailableReason() string }); ok && !l.MemorySnapshots {
		l.MemorySnapshotsReason = r.CRIUUnavailableReason()
	} else if !l.MemorySnapshots {
		l.MemorySnapshotsReason = "the " + a.driver.Name() + " driver keeps no process memory"
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(a.cfg.StateDir, &st); err == nil {
		l.DiskFreeBytes = st.Bavail * uint64(st.Bsize) //nolint:gosec // block size is positive
	}
	l.MemoryTotalBytes, l.MemoryAvailableBytes = meminfo()
	for _, c := range a.capsules() {
		rec, info, _ := c.snapshot()
		l.Capsules++
		switch rec.Phase {
		case phaseRunning, phasePaused, phaseStarting:
			mem := info.MemoryMB
			if mem == 0 {
				mem = rec.Spec.MemoryMB
			}
			v := info.VCPUs
			if v == 0 {
				v = rec.Spec.VCPUs
			}
			l.UsedMemoryMB += int64(max(mem, 0))
			l.UsedVCPUs += int64(v)
			l.UsedDiskMB += int64(rec.Spec.DiskSizeMB)
		case phaseHibernated:
			l.UsedDiskMB += int64(rec.Spec.DiskSizeMB)
		}
	}
	return l
}

// isolationSupport is what d runs per isolation (runtime.Isolations'
// Status). A driver that is not a runtime.Isolations runs its own
// isolation only (container, for the container driver).
func isolationSupport(d runtime.Driver) ([]*pb.IsolationSupport, string) {
	sts, def := isolationStatus(d)
	var out []*pb.IsolationSupport
	for _, st := range sts {
		out = append(out, &pb.IsolationSupport{Name: st.Name, Available: st.Available, Reason: st.Reason, Kvm: st.KVM, Backend: st.Backend})
	}
	return out, def
}

// isolationStatus is isolationSupport's source: runtime.Isolations'
// Status and default, or the single isolation of a plain driver.
func isolationStatus(d runtime.Driver) ([]runtime.IsolationStatus, string) {
	isos, ok := d.(*runtime.Isolations)
	if !ok {
		isos = runtime.NewIsolations(runtime.IsolationContainer)
		name := d.Name()
		if !runtime.ValidIsolation(name) {
			name = runtime.IsolationContainer
		}
		isos.Register(name, d)
	}
	return isos.Status(), isos.Default()
}

// meminfo reads MemTotal and MemAvailable (bytes) from /proc/meminfo.
func meminfo() (total, avail uint64) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		v, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			continue
		}
		switch fields[0] {
		case "MemTotal:":
			total = v << 10
		case "MemAvailable:":
			avail = v << 10
		}
	}
	return total, avail
}

func (s service) CreateCapsule(ctx context.Context, req *connect.Request[pb.CreateCapsuleRequest]) (*connect.Response[pb.CreateCapsuleResponse], error) {
	m := req.Msg
	if m.GetCapsuleId() == "" {
		return nil, invalid("capsule_id is required")
	}
	if m.GetVcpus() < 0 || m.GetMemoryMb() < 0 || m.GetDiskSizeMb() < 0 {
		return nil, invalid("vcpus, memory_mb and disk_size_mb must not be negative")
	}
	netPolicy, err := policyFromProto(m.GetAllowInternet(), m.GetNetwork())
	if err != nil {
		return nil, toConnect(err)
	}
	spec := runtime.Spec{
		ID: m.GetCapsuleId(), Template: m.GetTemplate(),
		VCPUs: int(m.GetVcpus()), MemoryMB: int(m.GetMemoryMb()), DiskSizeMB: int(m.GetDiskSizeMb()),
		Env: m.GetEnv(), AllowInternet: m.GetAllowInternet(), Network: netPolicy, Labels: m.GetLabels(),
		Isolation: m.GetIsolation(),
	}
	rec, info, err := s.a.createCapsule(ctx, spec, createOptions{
		TimeoutSec: int(m.GetTimeoutSec()), DefaultUser: m.GetDefaultUser(), DefaultWorkdir: m.GetDefaultWorkdir(),
		TemplateChecksum: m.GetTemplateChecksum(), Volumes: m.GetVolumeMounts(),
	})
	if err != nil {
		return nil, toConnect(err)
	}
	warm := false
	if c, err := s.a.lookup(rec.ID); err == nil {
		c.mu.Lock()
		warm = c.pooled
		c.mu.Unlock()
	}
	return connect.NewResponse(&pb.CreateCapsuleResponse{Capsule: capsuleProto(rec, info), WarmPool: warm}), nil
}

func (s service) DestroyCapsule(ctx context.Context, req *connect.Request[pb.DestroyCapsuleRequest]) (*connect.Response[pb.DestroyCapsuleResponse], error) {
	if err := s.a.destroyCapsule(ctx, req.Msg.GetCapsuleId()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.DestroyCapsuleResponse{}), nil
}

func (s service) PauseCapsule(ctx context.Context, req *connect.Request[pb.PauseCapsuleRequest]) (*connect.Response[pb.PauseCapsuleResponse], error) {
	res, err := s.a.pauseCapsule(ctx, req.Msg.GetCapsuleId(), req.Msg.GetToDisk())
	if err != nil {
		return nil, toConnect(err)
	}
	_, info, _ := s.capsuleState(req.Msg.GetCapsuleId())
	out := &pb.PauseCapsuleResponse{
		Capsule: capsuleProto(res.Record, info), SnapshotId: res.SnapshotID, MemoryKept: res.MemoryKept,
	}
	if req.Msg.GetToDisk() {
		out.Export, out.ExportUnavailable = s.a.export(res.Record) // move.go
	}
	return connect.NewResponse(out), nil
}

func (s service) capsuleState(id string) (record, runtime.Info, error) {
	c, err := s.a.lookup(id)
	if err != nil {
		return record{}, runtime.Info{}, err
	}
	rec, info, _ := c.snapshot()
	return rec, info, nil
}

func (s service) ResumeCapsule(ctx context.Context, req *connect.Request[pb.ResumeCapsuleRequest]) (*connect.Response[pb.ResumeCapsuleResponse], error) {
	rec, info, err := s.a.resumeCapsule(ctx, req.Msg.GetCapsuleId(), int(req.Msg.GetTimeoutSec()))
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.ResumeCapsuleResponse{Capsule: capsuleProto(rec, info)}), nil
}

func (s service) ListCapsules(_ context.Context, _ *connect.Request[pb.ListCapsulesRequest]) (*connect.Response[pb.ListCapsulesResponse], error) {
	out := &pb.ListCapsulesResponse{}
	for _, c := range s.a.capsules() {
		rec, info, _ := c.snapshot()
		out.Capsules = append(out.Capsules, withErrorReason(capsuleProto(rec, info), rec, c.errorReason()))
	}
	slices.SortFunc(out.Capsules, func(x, y *pb.Capsule) int { return strings.Compare(x.GetCapsuleId(), y.GetCapsuleId()) })
	return connect.NewResponse(out), nil
}

func (s service) GetCapsule(_ context.Context, req *connect.Request[pb.GetCapsuleRequest]) (*connect.Response[pb.GetCapsuleResponse], error) {
	c, err := s.a.lookup(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	rec, info, _ := c.snapshot()
	return connect.NewResponse(&pb.GetCapsuleResponse{Capsule: withErrorReason(capsuleProto(rec, info), rec, c.errorReason())}), nil
}

// withErrorReason reports a running capsule whose envd stopped answering
// (issue 11: capsule code that stops or starves envd) as ERROR with the
// reason, which the control plane copies to the capsule's error_reason.
func withErrorReason(p *pb.Capsule, rec record, reason string) *pb.Capsule {
	if reason != "" && rec.Phase == phaseRunning {
		p.State = pb.CapsuleState_CAPSULE_STATE_ERROR
		p.ErrorReason = reason
	}
	return p
}

func (s service) PingCapsule(ctx context.Context, req *connect.Request[pb.PingCapsuleRequest]) (*connect.Response[pb.PingCapsuleResponse], error) {
	c, err := s.a.lookup(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	rec, _, cl := c.snapshot()
	out := &pb.PingCapsuleResponse{State: phaseProto(rec.Phase)}
	if rec.Phase == phaseRunning && cl != nil {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if v, err := cl.Version(pctx); err == nil {
			out.EnvdHealthy, out.EnvdVersion = true, v.Version
		}
		if _, err := s.a.driver.Inspect(pctx, rec.ID); errors.Is(err, runtime.ErrNotFound) {
			out.State = pb.CapsuleState_CAPSULE_STATE_ERROR
			out.EnvdHealthy = false
		}
	}
	return connect.NewResponse(out), nil
}

func (s service) SetCapsuleTimeout(_ context.Context, req *connect.Request[pb.SetCapsuleTimeoutRequest]) (*connect.Response[pb.SetCapsuleTimeoutResponse], error) {
	exp, err := s.a.setTimeout(req.Msg.GetCapsuleId(), int(req.Msg.GetTimeoutSec()))
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.SetCapsuleTimeoutResponse{ExpiresAt: unix(exp)}), nil
}

func procConfig(cmd string, args []string, env map[string]string, cwd string) *procpb.ProcessConfig {
	pc := &procpb.ProcessConfig{Cmd: cmd, Args: args, Envs: env}
	if cwd != "" {
		pc.Cwd = &cwd
	}
	return pc
}

func (s service) Exec(ctx context.Context, req *connect.Request[pb.ExecRequest]) (*connect.Response[pb.ExecResponse], error) {
	m := req.Msg
	if m.GetCmd() == "" {
		return nil, invalid("cmd is required")
	}
	_, cl, err := s.a.running(m.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	opt := envdclient.ExecOptions{Timeout: time.Duration(m.GetTimeoutSec()) * time.Second, Limit: maxUnaryFile}
	if len(m.GetStdin()) > 0 {
		opt.Stdin = m.GetStdin()
	}
	res, err := cl.Exec(envdclient.WithUser(ctx, m.GetUser()), procConfig(m.GetCmd(), m.GetArgs(), m.GetEnv(), m.GetCwd()), opt)
	if err != nil && !errors.Is(err, envdclient.ErrExecTimeout) {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.ExecResponse{
		ExitCode: res.ExitCode, Stdout: res.Stdout, Stderr: res.Stderr,
		Error: res.Error, Truncated: res.Truncated, Pid: res.PID,
	}), nil
}

// forwardEvents copies envd process events to send until the end event.
// It returns the pid seen and whether the end was delivered.
func forwardEvents(recv func() (*procpb.ProcessEvent, bool), send func(*pb.ExecStreamResponse) error) (pid uint32, ended bool, err error) {
	for {
		ev, ok := recv()
		if !ok {
			return pid, false, nil
		}
		var out *pb.ExecStreamResponse
		switch e := ev.GetEvent().(type) {
		case *procpb.ProcessEvent_Start:
			pid = e.Start.GetPid()
			out = &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_StartedPid{StartedPid: pid}}
		case *procpb.ProcessEvent_Data:
			switch d := e.Data.GetOutput().(type) {
			case *procpb.ProcessEvent_DataEvent_Stdout:
				out = &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: d.Stdout}}
			case *procpb.ProcessEvent_DataEvent_Stderr:
				out = &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stderr{Stderr: d.Stderr}}
			case *procpb.ProcessEvent_DataEvent_Pty:
				out = &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_Stdout{Stdout: d.Pty}}
			}
		case *procpb.ProcessEvent_End:
			out = &pb.ExecStreamResponse{Event: &pb.ExecStreamResponse_End{End: endProto(e.End)}}
			ended = true
		}
		if out != nil {
			if err := send(out); err != nil {
				return pid, ended, err
			}
		}
		if ended {
			return pid, true, nil
		}
	}
}

func endProto(e *procpb.ProcessEvent_EndEvent) *pb.ProcessEnd {
	return &pb.ProcessEnd{ExitCode: e.GetExitCode(), Exited: e.GetExited(), Status: e.GetStatus(), Error: e.GetError()}
}

func (s service) ExecStream(ctx context.Context, req *connect.Request[pb.ExecRequest], stream *connect.ServerStream[pb.ExecStreamResponse]) error {
	m := req.Msg
	if m.GetCmd() == "" {
		return invalid("cmd is required")
	}
	_, cl, err := s.a.running(m.GetCapsuleId())
	if err != nil {
		return toConnect(err)
	}
	sctx, cancel := context.WithCancel(envdclient.WithUser(ctx, m.GetUser()))
	defer cancel()
	if m.GetTimeoutSec() > 0 {
		var tc context.CancelFunc
		sctx, tc = context.WithTimeout(sctx, time.Duration(m.GetTimeoutSec())*time.Second)
		defer tc()
	}
	withStdin := len(m.GetStdin()) > 0
	es, err := cl.OneStream().Start(sctx, connect.NewRequest(&procpb.StartRequest{
		Process: procConfig(m.GetCmd(), m.GetArgs(), m.GetEnv(), m.GetCwd()), Stdin: &withStdin,
	}))
	if err != nil {
		return toConnect(err)
	}
	defer func() { _ = es.Close() }()
	stdinSent := !withStdin
	pid, ended, err := forwardEvents(func() (*procpb.ProcessEvent, bool) {
		if !es.Receive() {
			return nil, false
		}
		return es.Msg().GetEvent(), true
	}, func(r *pb.ExecStreamResponse) error {
		if err := stream.Send(r); err != nil {
			return err
		}
		if p := r.GetStartedPid(); p != 0 && !stdinSent {
			stdinSent = true
			return sendStdin(sctx, cl, &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: p}}, m.GetStdin(), true)
		}
		return nil
	})
	if ended {
		return nil
	}
	if pid != 0 {
		// The caller went away, the timeout passed or the stream broke:
		// an exec does not outlive its stream.
		kctx, kc := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_ = cl.Signal(kctx, pid, procpb.Signal_SIGNAL_SIGKILL)
		kc()
	}
	if err != nil {
		return toConnect(err)
	}
	if e := es.Err(); e != nil {
		return toConnect(e)
	}
	return connect.NewError(connect.CodeUnavailable, errors.New("process stream ended without an end event"))
}

func sendStdin(ctx context.Context, cl *envdclient.Client, sel *procpb.ProcessSelector, data []byte, closeIn bool) error {
	for len(data) > 0 {
		n := min(len(data), 1<<20)
		if _, err := cl.Process.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{
			Process: sel, Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: data[:n]}},
		})); err != nil {
			return err
		}
		data = data[n:]
	}
	if closeIn {
		if _, err := cl.Process.CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{Process: sel})); err != nil {
			return err
		}
	}
	return nil
}

func (s service) ReadFile(ctx context.Context, req *connect.Request[pb.ReadFileRequest]) (*connect.Response[pb.ReadFileResponse], error) {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	body, size, err := cl.Download(ctx, req.Msg.GetPath(), req.Msg.GetUser())
	if err != nil {
		return nil, toConnect(err)
	}
	defer func() { _ = body.Close() }()
	if size > maxUnaryFile {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("file is %d bytes; ReadFile returns at most %d: use ReadFileStream", size, maxUnaryFile))
	}
	b, err := io.ReadAll(io.LimitReader(body, maxUnaryFile+1))
	if err != nil {
		return nil, toConnect(err)
	}
	if len(b) > maxUnaryFile {
		return nil, connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("file is larger than %d bytes: use ReadFileStream", maxUnaryFile))
	}
	return connect.NewResponse(&pb.ReadFileResponse{Content: b}), nil
}

func (s service) ReadFileStream(ctx context.Context, req *connect.Request[pb.ReadFileRequest], stream *connect.ServerStream[pb.ReadFileStreamResponse]) error {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return toConnect(err)
	}
	body, _, err := cl.Download(ctx, req.Msg.GetPath(), req.Msg.GetUser())
	if err != nil {
		return toConnect(err)
	}
	defer func() { _ = body.Close() }()
	buf := make([]byte, fileChunk)
	for {
		n, rerr := io.ReadFull(body, buf)
		if n > 0 {
			if err := stream.Send(&pb.ReadFileStreamResponse{Data: buf[:n]}); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			return nil
		}
		if rerr != nil {
			return toConnect(rerr)
		}
	}
}

func entryFromUpload(es []envdclient.EntryInfo, path string) *pb.FileEntry {
	if len(es) == 0 {
		return &pb.FileEntry{Path: path, Type: "file"}
	}
	return &pb.FileEntry{Name: es[0].Name, Path: es[0].Path, Type: es[0].Type}
}

// writtenEntry is the metadata of a file an upload wrote: envd's upload
// answer names it only, so it is stat'ed (as the writing user) for its
// size, mode and owner; the name-only entry stands if the stat fails.
func writtenEntry(ctx context.Context, cl *envdclient.Client, user string, es []envdclient.EntryInfo, path string) *pb.FileEntry {
	e := entryFromUpload(es, path)
	st, err := cl.Filesystem.Stat(envdclient.WithUser(ctx, user), connect.NewRequest(&fspb.StatRequest{Path: e.GetPath()}))
	if err != nil || st.Msg.GetEntry() == nil {
		return e
	}
	return FileEntry(st.Msg.GetEntry())
}

func (s service) WriteFile(ctx context.Context, req *connect.Request[pb.WriteFileRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	if req.Msg.GetPath() == "" {
		return nil, invalid("path is required")
	}
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	es, err := cl.Upload(ctx, req.Msg.GetPath(), req.Msg.GetUser(), strings.NewReader(string(req.Msg.GetContent())))
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.WriteFileResponse{Entry: writtenEntry(ctx, cl, req.Msg.GetUser(), es, req.Msg.GetPath())}), nil
}

func (s service) WriteFileStream(ctx context.Context, stream *connect.ClientStream[pb.WriteFileStreamRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, err
		}
		return nil, invalid("empty stream: the first message must be a header")
	}
	h := stream.Msg().GetHeader()
	if h == nil || h.GetPath() == "" {
		return nil, invalid("the first message must be a header with a path")
	}
	_, cl, err := s.a.running(h.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for stream.Receive() {
			if _, err := pw.Write(stream.Msg().GetData()); err != nil {
				return
			}
		}
		_ = pw.CloseWithError(stream.Err())
	}()
	es, err := cl.Upload(ctx, h.GetPath(), h.GetUser(), pr)
	_ = pr.CloseWithError(errors.New("upload finished"))
	// The stream must not be read after the handler returns.
	<-done
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.WriteFileResponse{Entry: writtenEntry(ctx, cl, h.GetUser(), es, h.GetPath())}), nil
}

// FileEntry converts envd's entry to the agent's (nil for nil); the API's
// file routes convert envd's answers with it too.
func FileEntry(e *fspb.EntryInfo) *pb.FileEntry {
	if e == nil {
		return nil
	}
	out := &pb.FileEntry{
		Name: e.GetName(), Path: e.GetPath(), Size: e.GetSize(), Mode: e.GetMode(),
		Permissions: e.GetPermissions(), Owner: e.GetOwner(), Group: e.GetGroup(),
		SymlinkTarget: e.GetSymlinkTarget(),
	}
	switch e.GetType() {
	case fspb.FileType_FILE_TYPE_FILE:
		out.Type = "file"
	case fspb.FileType_FILE_TYPE_DIRECTORY:
		out.Type = "dir"
	case fspb.FileType_FILE_TYPE_SYMLINK:
		out.Type = "symlink"
	}
	if t := e.GetModifiedTime(); t != nil {
		out.ModifiedAt = t.GetSeconds()
	}
	return out
}

func (s service) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	depth := max(req.Msg.GetDepth(), 1)
	res, err := cl.Filesystem.ListDir(envdclient.WithUser(ctx, req.Msg.GetUser()),
		connect.NewRequest(&fspb.ListDirRequest{Path: req.Msg.GetPath(), Depth: depth}))
	if err != nil {
		return nil, toConnect(err)
	}
	out := &pb.ListDirResponse{}
	for _, e := range res.Msg.GetEntries() {
		out.Entries = append(out.Entries, FileEntry(e))
	}
	return connect.NewResponse(out), nil
}

func (s service) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	uctx := envdclient.WithUser(ctx, req.Msg.GetUser())
	res, err := cl.Filesystem.MakeDir(uctx, connect.NewRequest(&fspb.MakeDirRequest{Path: req.Msg.GetPath()}))
	if connect.CodeOf(err) == connect.CodeAlreadyExists {
		st, serr := cl.Filesystem.Stat(uctx, connect.NewRequest(&fspb.StatRequest{Path: req.Msg.GetPath()}))
		if serr != nil {
			return nil, toConnect(serr)
		}
		if st.Msg.GetEntry().GetType() != fspb.FileType_FILE_TYPE_DIRECTORY {
			return nil, toConnect(err)
		}
		return connect.NewResponse(&pb.MakeDirResponse{Entry: FileEntry(st.Msg.GetEntry())}), nil
	}
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: FileEntry(res.Msg.GetEntry()), Created: true}), nil
}

func (s service) RemovePath(ctx context.Context, req *connect.Request[pb.RemovePathRequest]) (*connect.Response[pb.RemovePathResponse], error) {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	if _, err := cl.Filesystem.Remove(envdclient.WithUser(ctx, req.Msg.GetUser()),
		connect.NewRequest(&fspb.RemoveRequest{Path: req.Msg.GetPath()})); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.RemovePathResponse{}), nil
}

func pidSel(pid uint32) *procpb.ProcessSelector {
	return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}}
}

func selector(s *pb.ProcessSelector) (*procpb.ProcessSelector, error) {
	switch v := s.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		return pidSel(v.Pid), nil
	case *pb.ProcessSelector_Tag:
		return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Tag{Tag: v.Tag}}, nil
	}
	return nil, invalid("process selector (pid or tag) is required")
}

func ptyEvents(recv func() (*procpb.ProcessEvent, bool), send func(*pb.PtyOutput) error) error {
	_, _, err := forwardEvents(recv, func(r *pb.ExecStreamResponse) error {
		var out *pb.PtyOutput
		switch e := r.GetEvent().(type) {
		case *pb.ExecStreamResponse_StartedPid:
			out = &pb.PtyOutput{Event: &pb.PtyOutput_StartedPid{StartedPid: e.StartedPid}}
		case *pb.ExecStreamResponse_Stdout:
			out = &pb.PtyOutput{Event: &pb.PtyOutput_Data{Data: e.Stdout}}
		case *pb.ExecStreamResponse_Stderr:
			out = &pb.PtyOutput{Event: &pb.PtyOutput_Data{Data: e.Stderr}}
		case *pb.ExecStreamResponse_End:
			out = &pb.PtyOutput{Event: &pb.PtyOutput_End{End: e.End}}
		}
		return send(out)
	})
	return err
}

func (s service) PtyStart(ctx context.Context, req *connect.Request[pb.PtyStartRequest], stream *connect.ServerStream[pb.PtyOutput]) error {
	m := req.Msg
	_, cl, err := s.a.running(m.GetCapsuleId())
	if err != nil {
		return toConnect(err)
	}
	uctx := envdclient.WithUser(ctx, m.GetUser())
	cmd := m.GetCmd()
	if cmd == "" {
		cmd = "/bin/sh"
		if _, err := cl.Filesystem.Stat(uctx, connect.NewRequest(&fspb.StatRequest{Path: "/bin/bash"})); err == nil {
			cmd = "/bin/bash"
		}
	}
	env := map[string]string{"TERM": "xterm-256color"}
	for k, v := range m.GetEnv() {
		env[k] = v
	}
	cols, rows := m.GetCols(), m.GetRows()
	if cols == 0 {
		cols = 80
	}
	if rows == 0 {
		rows = 24
	}
	sr := &procpb.StartRequest{
		Process: procConfig(cmd, m.GetArgs(), env, m.GetCwd()),
		Pty:     &procpb.PTY{Size: &procpb.PTY_Size{Cols: cols, Rows: rows}},
	}
	if m.GetTag() != "" {
		tag := m.GetTag()
		sr.Tag = &tag
	}
	es, err := cl.OneStream().Start(uctx, connect.NewRequest(sr))
	if err != nil {
		return toConnect(err)
	}
	defer func() { _ = es.Close() }()
	err = ptyEvents(func() (*procpb.ProcessEvent, bool) {
		if !es.Receive() {
			return nil, false
		}
		return es.Msg().GetEvent(), true
	}, stream.Send)
	if err == nil {
		err = es.Err()
	}
	return toConnect(err)
}

func (s service) PtyAttach(ctx context.Context, req *connect.Request[pb.PtyAttachRequest], stream *connect.ServerStream[pb.PtyOutput]) error {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return toConnect(err)
	}
	es, err := cl.OneStream().Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: pidSel(req.Msg.GetPid())}))
	if err != nil {
		return toConnect(err)
	}
	defer func() { _ = es.Close() }()
	err = ptyEvents(func() (*procpb.ProcessEvent, bool) {
		if !es.Receive() {
			return nil, false
		}
		return es.Msg().GetEvent(), true
	}, stream.Send)
	if err == nil {
		err = es.Err()
	}
	return toConnect(err)
}

func (s service) PtyInput(ctx context.Context, req *connect.Request[pb.PtyInputRequest]) (*connect.Response[pb.PtyInputResponse], error) {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	if _, err := cl.Process.SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{
		Process: pidSel(req.Msg.GetPid()), Input: &procpb.ProcessInput{Input: &procpb.ProcessInput_Pty{Pty: req.Msg.GetData()}},
	})); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PtyInputResponse{}), nil
}

func (s service) PtyResize(ctx context.Context, req *connect.Request[pb.PtyResizeRequest]) (*connect.Response[pb.PtyResizeResponse], error) {
	if req.Msg.GetCols() == 0 || req.Msg.GetRows() == 0 {
		return nil, invalid("cols and rows must be positive")
	}
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	if _, err := cl.Process.Update(ctx, connect.NewRequest(&procpb.UpdateRequest{
		Process: pidSel(req.Msg.GetPid()),
		Pty:     &procpb.PTY{Size: &procpb.PTY_Size{Cols: req.Msg.GetCols(), Rows: req.Msg.GetRows()}},
	})); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PtyResizeResponse{}), nil
}

func (s service) PtyKill(ctx context.Context, req *connect.Request[pb.PtyKillRequest]) (*connect.Response[pb.PtyKillResponse], error) {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	if err := cl.Signal(ctx, req.Msg.GetPid(), procpb.Signal_SIGNAL_SIGKILL); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.PtyKillResponse{}), nil
}

func (s service) StartProcess(ctx context.Context, req *connect.Request[pb.StartProcessRequest]) (*connect.Response[pb.StartProcessResponse], error) {
	m := req.Msg
	if m.GetCmd() == "" {
		return nil, invalid("cmd is required")
	}
	if m.GetReadyPort() != 0 || len(m.GetReadyCmd()) > 0 { // a template build's START + READY
		pid, err := s.startReady(ctx, m)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return nil, connect.NewError(connect.CodeDeadlineExceeded, err)
		}
		if err != nil {
			return nil, toConnect(err)
		}
		return connect.NewResponse(&pb.StartProcessResponse{Pid: pid}), nil
	}
	_, cl, err := s.a.running(m.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	sctx, cancel := context.WithCancel(envdclient.WithUser(ctx, m.GetUser()))
	defer cancel()
	withStdin := m.GetStdin()
	sr := &procpb.StartRequest{Process: procConfig(m.GetCmd(), m.GetArgs(), m.GetEnv(), m.GetCwd()), Stdin: &withStdin}
	if m.GetTag() != "" {
		tag := m.GetTag()
		sr.Tag = &tag
	}
	es, err := cl.Process.Start(sctx, connect.NewRequest(sr))
	if err != nil {
		return nil, toConnect(err)
	}
	defer func() { _ = es.Close() }()
	// envd keeps the process running when this stream goes away; output
	// stays in its backlog for ConnectProcess.
	for es.Receive() {
		if st := es.Msg().GetEvent().GetStart(); st != nil {
			return connect.NewResponse(&pb.StartProcessResponse{Pid: st.GetPid()}), nil
		}
	}
	if err := es.Err(); err != nil {
		return nil, toConnect(err)
	}
	return nil, connect.NewError(connect.CodeUnavailable, errors.New("envd sent no start event"))
}

func (s service) ListProcesses(ctx context.Context, req *connect.Request[pb.ListProcessesRequest]) (*connect.Response[pb.ListProcessesResponse], error) {
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	res, err := cl.Process.List(ctx, connect.NewRequest(&procpb.ListRequest{}))
	if err != nil {
		return nil, toConnect(err)
	}
	out := &pb.ListProcessesResponse{}
	for _, p := range res.Msg.GetProcesses() {
		out.Processes = append(out.Processes, &pb.ProcessInfo{
			Pid: p.GetPid(), Tag: p.GetTag(), Cmd: p.GetConfig().GetCmd(), Args: p.GetConfig().GetArgs(),
			Cwd: p.GetConfig().GetCwd(), Env: p.GetConfig().GetEnvs(),
		})
	}
	return connect.NewResponse(out), nil
}

func (s service) KillProcess(ctx context.Context, req *connect.Request[pb.KillProcessRequest]) (*connect.Response[pb.KillProcessResponse], error) {
	sel, err := selector(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	sig := procpb.Signal_SIGNAL_SIGKILL
	if req.Msg.GetSignal() == pb.Signal_SIGNAL_SIGTERM {
		sig = procpb.Signal_SIGNAL_SIGTERM
	}
	if _, err := cl.Process.SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{Process: sel, Signal: sig})); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.KillProcessResponse{}), nil
}

func (s service) ConnectProcess(ctx context.Context, req *connect.Request[pb.ConnectProcessRequest], stream *connect.ServerStream[pb.ExecStreamResponse]) error {
	sel, err := selector(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return toConnect(err)
	}
	es, err := cl.OneStream().Connect(ctx, connect.NewRequest(&procpb.ConnectRequest{Process: sel}))
	if err != nil {
		return toConnect(err)
	}
	defer func() { _ = es.Close() }()
	_, _, err = forwardEvents(func() (*procpb.ProcessEvent, bool) {
		if !es.Receive() {
			return nil, false
		}
		return es.Msg().GetEvent(), true
	}, stream.Send)
	if err == nil {
		err = es.Err()
	}
	return toConnect(err)
}

func (s service) SendProcessInput(ctx context.Context, req *connect.Request[pb.SendProcessInputRequest]) (*connect.Response[pb.SendProcessInputResponse], error) {
	sel, err := selector(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	_, cl, err := s.a.running(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	if err := sendStdin(ctx, cl, sel, req.Msg.GetData(), req.Msg.GetCloseStdin()); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.SendProcessInputResponse{}), nil
}

func (s service) GetCapsuleMetrics(ctx context.Context, req *connect.Request[pb.GetCapsuleMetricsRequest]) (*connect.Response[pb.GetCapsuleMetricsResponse], error) {
	c, err := s.a.lookup(req.Msg.GetCapsuleId())
	if err != nil {
		return nil, toConnect(err)
	}
	tier := 0
	switch req.Msg.GetWindow() {
	case pb.MetricsWindow_METRICS_WINDOW_2H:
		tier = 1
	case pb.MetricsWindow_METRICS_WINDOW_24H:
		tier = 2
	}
	c.mu.Lock()
	series := c.series
	c.mu.Unlock()
	out := &pb.GetCapsuleMetricsResponse{Network: s.a.networkCounters(ctx, req.Msg.GetCapsuleId())}
	if series == nil {
		return connect.NewResponse(out), nil
	}
	tiers := series.Tiers()
	if tier >= len(tiers) {
		tier = len(tiers) - 1
	}
	out.ResolutionSec = int32(tiers[tier].Resolution / time.Second) //nolint:gosec // small
	for _, p := range series.Points(tier, time.Now()) {
		out.Points = append(out.Points, &pb.MetricPoint{
			TsMs: p.Time.UnixMilli(), CpuUsedPct: p.CPUUsedPct, CpuCount: int32(p.CPUCount), //nolint:gosec // small
			MemUsedBytes: p.MemUsed, MemTotalBytes: p.MemTotal, DiskUsedBytes: p.DiskUsed, DiskTotalBytes: p.DiskTotal,
		})
	}
	return connect.NewResponse(out), nil
}

func (s service) CreateSnapshot(ctx context.Context, req *connect.Request[pb.CreateSnapshotRequest]) (*connect.Response[pb.CreateSnapshotResponse], error) {
	var rc template.RunConfig
	if raw := req.Msg.GetRunConfig(); raw != "" {
		if err := json.Unmarshal([]byte(raw), &rc); err != nil {
			return nil, toConnect(fmt.Errorf("%w: run_config: %w", runtime.ErrInvalidSpec, err))
		}
	}
	// rc: the build's START/READY and defaults (template.RunConfig), kept
	// with the template here and in the shared store.
	res, err := s.a.snapshotToTemplate(ctx, req.Msg.GetCapsuleId(), req.Msg.GetTemplate(), req.Msg.GetMemory(), rc)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.CreateSnapshotResponse{
		Template: res.Template.Name, SizeBytes: res.Template.SizeBytes,
		Checksum: res.Checksum, Memory: res.Memory, MemoryReason: res.MemoryReason,
	}), nil
}
