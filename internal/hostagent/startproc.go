package hostagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/wrenn-dev/wrenn/internal/envdclient"
	"github.com/wrenn-dev/wrenn/internal/runtime"
	"github.com/wrenn-dev/wrenn/internal/template"
	procpb "github.com/wrenn-dev/wrenn/proto/envd/process"
)

// StartTag is the envd tag of a template's START process.
const StartTag = "wrenn-start"

// defaultReadyTimeout bounds a READY wait without its own timeout.
const defaultReadyTimeout = 60 * time.Second

// readyCheck is a START process's READY condition.
type readyCheck struct {
	port    int
	cmd     []string
	timeout time.Duration
}

// startProcess starts argv in the capsule through envd (tagged tag; envd
// keeps it running after this returns) and returns its pid.
func startProcess(ctx context.Context, cl *envdclient.Client, argv []string, env map[string]string, cwd, user, tag string) (uint32, error) {
	if len(argv) == 0 || argv[0] == "" {
		return 0, fmt.Errorf("%w: empty command", runtime.ErrInvalidSpec)
	}
	sctx, cancel := context.WithCancel(envdclient.WithUser(ctx, user))
	defer cancel()
	no := false
	sr := &procpb.StartRequest{Process: procConfig(argv[0], argv[1:], env, cwd), Stdin: &no}
	if tag != "" {
		sr.Tag = &tag
	}
	es, err := cl.Process.Start(sctx, connect.NewRequest(sr))
	if err != nil {
		return 0, err
	}
	defer func() { _ = es.Close() }()
	for es.Receive() {
		if st := es.Msg().GetEvent().GetStart(); st != nil {
			return st.GetPid(), nil
		}
	}
	if err := es.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("envd ended the start stream before the process started")
}

// waitReady polls the READY condition every 100 ms until it holds or its
// timeout passes: a TCP connect from the host to the capsule's address
// (what the port proxy does), or the command exiting 0.
func waitReady(ctx context.Context, cl *envdclient.Client, ip netip.Addr, user string, rc readyCheck) error {
	if rc.timeout <= 0 {
		rc.timeout = defaultReadyTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, rc.timeout)
	defer cancel()
	var last string
	for {
		if rc.port > 0 {
			d := net.Dialer{Timeout: time.Second}
			conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(rc.port)))
			if err == nil {
				_ = conn.Close()
				return nil
			}
			last = err.Error()
		} else {
			res, err := cl.Exec(envdclient.WithUser(ctx, user), procConfig(rc.cmd[0], rc.cmd[1:], nil, ""), envdclient.ExecOptions{Timeout: 10 * time.Second, Limit: 4096})
			if err == nil && res.Error == "" && res.ExitCode == 0 {
				return nil
			}
			if err != nil {
				last = err.Error()
			} else {
				last = fmt.Sprintf("exit code %d: %s", res.ExitCode, clipBytes(res.Stderr, 512))
			}
		}
		select {
		case <-ctx.Done():
			what := fmt.Sprintf("port %d", rc.port)
			if rc.port == 0 {
				what = fmt.Sprintf("command %q", rc.cmd)
			}
			return fmt.Errorf("%w: START process not ready (READY %s) within %s: %s", context.DeadlineExceeded, what, rc.timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func clipBytes(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// startReady serves StartProcess with a READY condition.
func (s service) startReady(ctx context.Context, m interface {
	GetCapsuleId() string
	GetCmd() string
	GetArgs() []string
	GetEnv() map[string]string
	GetCwd() string
	GetUser() string
	GetTag() string
	GetReadyPort() int32
	GetReadyCmd() []string
	GetReadyTimeoutSec() int32
},
) (uint32, error) {
	if p := m.GetReadyPort(); p < 0 || p > 65535 {
		return 0, fmt.Errorf("%w: ready_port %d", runtime.ErrInvalidSpec, p)
	}
	c, cl, err := s.a.running(m.GetCapsuleId())
	if err != nil {
		return 0, err
	}
	_, info, _ := c.snapshot()
	pid, err := startProcess(ctx, cl, append([]string{m.GetCmd()}, m.GetArgs()...), m.GetEnv(), m.GetCwd(), m.GetUser(), m.GetTag())
	if err != nil {
		return 0, err
	}
	rc := readyCheck{port: int(m.GetReadyPort()), cmd: m.GetReadyCmd(), timeout: time.Duration(m.GetReadyTimeoutSec()) * time.Second}
	if err := waitReady(ctx, cl, info.IP, m.GetUser(), rc); err != nil {
		return pid, err
	}
	return pid, nil
}

// startTemplateProcess runs a template's START (run.json) in a capsule
// just created from it and waits for its READY. The process runs as the
// template's user in its working directory, with the capsule's env.
func (a *Agent) startTemplateProcess(ctx context.Context, c *capsule, rc template.RunConfig) error {
	rec, info, cl := c.snapshot()
	if _, err := startProcess(ctx, cl, rc.Start, nil, rc.Workdir, rc.User, StartTag); err != nil {
		return fmt.Errorf("capsule %s: template START: %w", rec.ID, err)
	}
	if rc.ReadyPort == 0 && len(rc.ReadyCmd) == 0 {
		return nil
	}
	chk := readyCheck{port: rc.ReadyPort, cmd: rc.ReadyCmd, timeout: time.Duration(rc.ReadyTimeoutSec) * time.Second}
	if err := waitReady(ctx, cl, info.IP, rc.User, chk); err != nil {
		return fmt.Errorf("capsule %s: %w", rec.ID, err)
	}
	return nil
}

// templateRunConfig reads a template's run.json (zero without a template
// store or file).
func (a *Agent) templateRunConfig(name string) (template.RunConfig, error) {
	if a.cfg.Templates == nil || name == "" {
		return template.RunConfig{}, nil
	}
	rc, err := a.cfg.Templates.RunConfigOf(name)
	if errors.Is(err, template.ErrNotFound) {
		return template.RunConfig{}, nil // the driver reports the missing template
	}
	return rc, err
}
