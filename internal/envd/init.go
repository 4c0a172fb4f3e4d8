package envd

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// maxInitBody bounds the /init request body.
const maxInitBody = 1 << 20

// initRequest is the /init body. Wrenn's agent sends snake_case; E2B's
// camelCase spellings are accepted too.
type initRequest struct {
	CapsuleID      string            `json:"capsule_id"`
	TemplateID     string            `json:"template_id"`
	EnvVars        map[string]string `json:"env_vars"`
	DefaultUser    *string           `json:"default_user"`
	DefaultWorkdir *string           `json:"default_workdir"`
	Timestamp      *time.Time        `json:"timestamp"`
	AccessToken    *string           `json:"access_token"`

	EnvVarsCamel        map[string]string `json:"envVars"`
	DefaultUserCamel    *string           `json:"defaultUser"`
	DefaultWorkdirCamel *string           `json:"defaultWorkdir"`
	AccessTokenCamel    *string           `json:"accessToken"`
}

func (r *initRequest) normalise() {
	if r.EnvVars == nil {
		r.EnvVars = r.EnvVarsCamel
	}
	if r.DefaultUser == nil {
		r.DefaultUser = r.DefaultUserCamel
	}
	if r.DefaultWorkdir == nil {
		r.DefaultWorkdir = r.DefaultWorkdirCamel
	}
	if r.AccessToken == nil {
		r.AccessToken = r.AccessTokenCamel
	}
}

func validID(kind, id string) error {
	if len(id) > 128 {
		return fmt.Errorf("%s is longer than 128 bytes", kind)
	}
	for _, c := range id {
		ok := c == '-' || c == '_' || c == '.' || c == ':' ||
			(c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
		if !ok {
			return fmt.Errorf("%s contains %q: only letters, digits and -_.: are allowed", kind, c)
		}
	}
	return nil
}

func validEnvName(k string) error {
	if k == "" || strings.ContainsAny(k, "=\x00") || len(k) > 1024 {
		return fmt.Errorf("invalid environment variable name %q", k)
	}
	return nil
}

func (r *initRequest) validate() error {
	if err := validID("capsule_id", r.CapsuleID); err != nil {
		return err
	}
	if err := validID("template_id", r.TemplateID); err != nil {
		return err
	}
	for k, v := range r.EnvVars {
		if err := validEnvName(k); err != nil {
			return err
		}
		if strings.ContainsRune(v, 0) {
			return fmt.Errorf("environment variable %q contains a NUL byte", k)
		}
	}
	if r.DefaultWorkdir != nil && *r.DefaultWorkdir != "" && !filepath.IsAbs(*r.DefaultWorkdir) {
		return errors.New("default_workdir must be an absolute path")
	}
	return nil
}

// handleInit applies the capsule's identity and defaults in one round trip,
// re-enables everything /snapshot/prepare turned off and closes the
// connections that were open before the snapshot.
func (s *Server) handleInit(w http.ResponseWriter, r *http.Request) {
	var req initRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxInitBody))
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "malformed /init body: "+jsonErrMessage(err))
		return
	}
	req.normalise()
	if err := req.validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if req.DefaultUser != nil && *req.DefaultUser != "" {
		if _, err := s.defaults.ResolveUser(*req.DefaultUser); err != nil {
			writeError(w, http.StatusBadRequest, "default_user: "+err.Error())
			return
		}
	}

	if req.Timestamp != nil && time.Now().Before(*req.Timestamp) {
		if err := s.cfg.SetClock(*req.Timestamp); err != nil {
			s.log.Debug("cannot set the clock", "err", err)
		}
	}
	if len(req.EnvVars) > 0 {
		s.defaults.MergeEnvs(req.EnvVars)
	}
	if req.DefaultUser != nil && *req.DefaultUser != "" {
		s.defaults.SetUser(*req.DefaultUser)
	}
	if req.DefaultWorkdir != nil && *req.DefaultWorkdir != "" {
		s.defaults.SetWorkdir(*req.DefaultWorkdir)
	}
	if err := s.writeIdentity(req.TemplateID, req.CapsuleID); err != nil {
		s.log.Warn("cannot write capsule identity files", "err", err)
		writeError(w, http.StatusInternalServerError, "cannot write capsule identity files")
		return
	}
	if req.AccessToken != nil && *req.AccessToken != "" {
		s.token.setToken(*req.AccessToken)
	}
	closed := s.finishSnapshot(connFromContext(r.Context()))
	s.log.Debug("init applied", "capsule_id", req.CapsuleID, "template_id", req.TemplateID, "closed_conns", closed)
	w.WriteHeader(http.StatusNoContent)
}

// writeIdentity writes the template and capsule ids for programs in the
// capsule. Empty values are never written over existing ones.
func (s *Server) writeIdentity(templateID, capsuleID string) error {
	if templateID == "" && capsuleID == "" {
		return nil
	}
	if err := os.MkdirAll(s.cfg.RunDir, 0o755); err != nil {
		return err
	}
	for name, val := range map[string]string{".WRENN_TEMPLATE_ID": templateID, ".WRENN_CAPSULE_ID": capsuleID} {
		if val == "" {
			continue
		}
		if err := writeFileAtomic(filepath.Join(s.cfg.RunDir, name), []byte(val)); err != nil {
			return err
		}
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		_ = tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// handlePrepare quiesces envd before the VMM freezes the capsule: the
// reclaimer stops (waiting for a running drop to finish), dirty data is
// synced, keep-alives are disabled and idle connections closed. It answers
// only when all of that is done.
func (s *Server) handlePrepare(w http.ResponseWriter, _ *http.Request) {
	s.prepMu.Lock()
	s.reclaim.pause()
	s.prepEpoch = s.conns.bump()
	s.prepared = true
	if srv := s.server(); srv != nil {
		srv.SetKeepAlivesEnabled(false)
	}
	idle := s.conns.closeIdle()
	unix.Sync()
	if s.prepTimer != nil {
		s.prepTimer.Stop()
	}
	epoch := s.prepEpoch
	s.prepTimer = time.AfterFunc(s.cfg.PrepareTimeout, func() { s.expirePrepare(epoch) })
	s.prepMu.Unlock()
	// Return freed heap to the guest so the memory snapshot stays small.
	debug.FreeOSMemory()
	s.log.Debug("snapshot prepared", "closed_idle", idle)
	writeJSON(w, http.StatusOK, map[string]any{"status": "prepared", "closed_idle_connections": idle})
}

// expirePrepare undoes a prepare that no /init followed within the timeout.
func (s *Server) expirePrepare(epoch uint64) {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	if !s.prepared || s.prepEpoch != epoch {
		return
	}
	s.log.Info("snapshot prepare timed out; re-enabling keep-alives and the reclaimer")
	s.resumeLocked()
}

// finishSnapshot is /init's half: after a prepare it closes every
// connection accepted before the prepare except keep, then re-enables
// keep-alives and the reclaimer.
func (s *Server) finishSnapshot(keep net.Conn) int {
	s.prepMu.Lock()
	defer s.prepMu.Unlock()
	if !s.prepared {
		return 0
	}
	closed := s.conns.closeBefore(s.prepEpoch, keep)
	s.resumeLocked()
	return closed
}

func (s *Server) resumeLocked() {
	s.prepared = false
	if s.prepTimer != nil {
		s.prepTimer.Stop()
		s.prepTimer = nil
	}
	if srv := s.server(); srv != nil {
		srv.SetKeepAlivesEnabled(true)
	}
	s.reclaim.resume()
}

func jsonErrMessage(err error) string {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return fmt.Sprintf("body larger than %d bytes", mbe.Limit)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q has the wrong type (want %s)", te.Field, te.Type)
	}
	return err.Error()
}

func setSystemClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}
