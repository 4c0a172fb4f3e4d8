package api

// Team template builds (/v1/templates/builds): start one from a Wrennfile
// or an uploaded image (multipart, streamed to disk, never held in
// memory), list, get, cancel, and read or follow its log (NDJSON).

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/wrenn-dev/wrenn/internal/builds"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// BuildRunner runs builds with local inputs (internal/builds.Runner).
type BuildRunner interface {
	Submit(b store.Build, in builds.Inputs) error
}

// Build upload bounds.
const (
	// DefaultMaxContextBytes bounds a build context or image upload.
	DefaultMaxContextBytes = 8 << 30
	maxFieldBytes          = builds.MaxRecipeBytes
	logFollowPoll          = 250 * time.Millisecond
	logPage                = 500
)

var buildNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)

// buildKind tells what a stored build runs.
func buildKind(s *builds.Spec) wrennapi.BuildKind {
	switch {
	case s.Import:
		return wrennapi.BuildKindImport
	case s.Recipe != "":
		return wrennapi.BuildKindRecipe
	}
	return wrennapi.BuildKindSpec
}

// createTeamBuild reads the multipart form part by part: text fields
// first (name, recipe, registry_auth, timeout_sec), then one file part
// (context or image), streamed to a file in the build's scratch dir.
func (a *API) createTeamBuild(w http.ResponseWriter, r *http.Request) {
	p := caller(r.Context())
	if a.cfg.Builds == nil {
		a.writeError(w, r, errorf(CodeUnavailable, "this control plane does not run builds"))
		return
	}
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct != "multipart/form-data" {
		a.writeError(w, r, errorf(CodeUnsupportedMedia, "send the build as multipart/form-data (fields name, recipe, registry_auth; file part context or image)"))
		return
	}
	mr, err := r.MultipartReader()
	if err != nil {
		a.writeError(w, r, errorf(CodeInvalidArgument, "multipart body: %v", err))
		return
	}
	dir, err := os.MkdirTemp(a.cfg.BuildDir, "wrenn-build-")
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	keep := false
	defer func() {
		if !keep {
			_ = os.RemoveAll(dir)
		}
	}()
	var (
		name, recipeText string
		auth             *builds.RegistryAuth
		timeout          *int64
		in               = builds.Inputs{Dir: dir}
		spec             builds.Spec
	)
	validate := func() error {
		if !buildNameRE.MatchString(name) {
			return errorf(CodeInvalidArgument, "name must be a template name: lower-case letters, digits, . _ - (at most 64), sent before the file part")
		}
		if recipeText == "" && in.ImagePath == "" {
			return errorf(CodeInvalidArgument, "send a recipe (a Wrennfile, before the file part) or an image file part")
		}
		spec = builds.Spec{Recipe: recipeText, Import: in.ImagePath != "", TimeoutSec: timeout, LocalInputs: true}
		if err := spec.Normalize(); err != nil {
			var se *builds.SpecError
			if errors.As(err, &se) {
				return errorf(CodeInvalidArgument, "%s", se.Msg)
			}
			return err
		}
		return nil
	}
	maxFile := a.cfg.MaxContextBytes
	if maxFile <= 0 {
		maxFile = DefaultMaxContextBytes
	}
	files := 0
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			a.writeError(w, r, uploadErr(err))
			return
		}
		field := part.FormName()
		switch field {
		case "name", "recipe", "registry_auth", "timeout_sec":
			if files > 0 {
				a.writeError(w, r, errorf(CodeInvalidArgument, "field %s must come before the file part", field))
				return
			}
			b, err := io.ReadAll(io.LimitReader(part, maxFieldBytes+1))
			if err != nil {
				a.writeError(w, r, uploadErr(err))
				return
			}
			if len(b) > maxFieldBytes {
				a.writeError(w, r, errorf(CodePayloadTooLarge, "field %s is larger than %d bytes", field, maxFieldBytes))
				return
			}
			v := string(b)
			switch field {
			case "name":
				name = strings.TrimSpace(v)
			case "recipe":
				recipeText = v
			case "registry_auth":
				var ra builds.RegistryAuth
				dec := json.NewDecoder(strings.NewReader(v))
				dec.DisallowUnknownFields()
				if err := dec.Decode(&ra); err != nil || ra.Username == "" {
					a.writeError(w, r, errorf(CodeInvalidArgument, `registry_auth must be JSON {"username": "…", "password": "…"}`))
					return
				}
				auth = &ra
			case "timeout_sec":
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				if err != nil {
					a.writeError(w, r, errorf(CodeInvalidArgument, "timeout_sec must be a number of seconds"))
					return
				}
				timeout = &n
			}
		case "context", "image":
			files++
			if files > 1 {
				a.writeError(w, r, errorf(CodeInvalidArgument, "send one file part: context (with a recipe) or image (an import)"))
				return
			}
			if field == "image" {
				in.ImagePath = filepath.Join(dir, "image.tar")
			}
			// Check name and recipe before taking the bytes.
			if err := validate(); err != nil {
				a.writeError(w, r, err)
				return
			}
			if field == "context" {
				in.ContextPath = filepath.Join(dir, "context.tar")
				if _, err := builds.SaveContext(part, in.ContextPath, maxFile); err != nil {
					var ce *builds.ContextError
					if errors.As(err, &ce) {
						a.writeError(w, r, errorf(CodeInvalidArgument, "%s", ce.Error()))
						return
					}
					a.writeError(w, r, uploadErr(err))
					return
				}
			} else if err := saveFile(part, in.ImagePath, maxFile); err != nil {
				a.writeError(w, r, uploadErr(err))
				return
			}
		default:
			a.writeError(w, r, errorf(CodeInvalidArgument, "unknown form field %q (want name, recipe, registry_auth, timeout_sec, context or image)", clipStr(field)))
			return
		}
		_ = part.Close()
	}
	if err := validate(); err != nil {
		a.writeError(w, r, err)
		return
	}
	in.Auth = auth
	ctx := r.Context()
	if t, err := a.cfg.Store.GetTemplateByName(ctx, p.TeamID, name); err == nil && t.TeamID == p.TeamID {
		a.writeError(w, r, errorf(CodeAlreadyExists, "the team already has a template named %q", name))
		return
	}
	if existing, err := a.cfg.Store.ListBuilds(ctx, p.TeamID); err == nil {
		for _, b := range existing {
			if b.TemplateName == name && (b.Status == store.BuildPending || b.Status == store.BuildRunning) {
				a.writeError(w, r, errorf(CodeConflict, "build %s of template %q is already %s", b.ID, name, b.Status))
				return
			}
		}
	}
	specJSON, err := json.Marshal(spec)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	b, err := a.cfg.Store.CreateBuild(context.WithoutCancel(ctx), store.Build{
		ID: store.NewID(store.PrefixBuild), TeamID: p.TeamID, TemplateName: name,
		Status: store.BuildPending, Spec: specJSON, CreatedBy: p.UserID,
	})
	a.audit(r, p.TeamID, "build", b.ID, "create", err, map[string]any{"template_name": name, "kind": string(buildKind(&spec))})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	if err := a.cfg.Builds.Submit(b, in); err != nil {
		_, _ = a.cfg.Store.UpdateBuildStatus(context.WithoutCancel(ctx), b.TeamID, b.ID, []store.BuildStatus{store.BuildPending}, store.BuildFailed, "the control plane is stopping", "")
		a.writeError(w, r, errorf(CodeUnavailable, "the control plane is stopping; try again"))
		return
	}
	keep = true // the runner removes the inputs
	writeJSON(w, http.StatusCreated, toBuildJSON(b))
}

// saveFile streams r into a new file of at most max bytes.
func saveFile(r io.Reader, dst string, maxBytes int64) error {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(r, maxBytes+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if n > maxBytes {
		return &http.MaxBytesError{Limit: maxBytes}
	}
	if n == 0 {
		return errorf(CodeInvalidArgument, "the image file part is empty")
	}
	return nil
}

// uploadErr maps a failed read of the request body.
func uploadErr(err error) error {
	var e *Error
	var mbe *http.MaxBytesError
	if errors.As(err, &e) || errors.As(err, &mbe) {
		return err
	}
	if isTimeout(err) {
		return errorf(CodeRequestTimeout, "the upload was too slow")
	}
	return errorf(CodeInvalidArgument, "reading the upload: %v", err)
}

func clipStr(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

func (a *API) listTeamBuilds(w http.ResponseWriter, r *http.Request) {
	bs, err := a.cfg.Store.ListBuilds(r.Context(), caller(r.Context()).TeamID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	out := make([]wrennapi.Build, 0, len(bs))
	for _, b := range bs {
		out = append(out, toBuildJSON(b))
	}
	writeJSON(w, http.StatusOK, wrennapi.BuildList{Builds: out})
}

// teamBuild loads the caller's team's build named by the URL (404 for
// another team's).
func (a *API) teamBuild(r *http.Request) (store.Build, error) {
	id := chi.URLParam(r, "buildID")
	if err := validID(store.PrefixBuild, id); err != nil {
		return store.Build{}, err
	}
	b, err := a.cfg.Store.GetBuild(r.Context(), caller(r.Context()).TeamID, id)
	if errors.Is(err, store.ErrNotFound) {
		return b, errorf(CodeNotFound, "build %q not found", id)
	}
	return b, err
}

func (a *API) getTeamBuild(w http.ResponseWriter, r *http.Request) {
	b, err := a.teamBuild(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toBuildJSON(b))
}

func (a *API) cancelTeamBuild(w http.ResponseWriter, r *http.Request) {
	b, err := a.teamBuild(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	ctx := context.WithoutCancel(r.Context())
	ok, err := a.cfg.Store.UpdateBuildStatus(ctx, b.TeamID, b.ID,
		[]store.BuildStatus{store.BuildPending, store.BuildRunning}, store.BuildCancelled, "cancelled by a team member", "")
	if err == nil && !ok {
		err = errorf(CodeConflict, "build %s is already %s", b.ID, b.Status)
		if cur, gerr := a.cfg.Store.GetBuild(ctx, b.TeamID, b.ID); gerr == nil {
			err = errorf(CodeConflict, "build %s is already %s", b.ID, cur.Status)
		}
	}
	a.audit(r, b.TeamID, "build", b.ID, "cancel", err, map[string]any{"template_name": b.TemplateName})
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	cur, err := a.cfg.Store.GetBuild(ctx, b.TeamID, b.ID)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toBuildJSON(cur))
}

func (a *API) teamBuildLogs(w http.ResponseWriter, r *http.Request) {
	b, err := a.teamBuild(r)
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	a.streamBuildLogs(w, r, b)
}

func (a *API) adminBuildLogs(w http.ResponseWriter, r *http.Request) {
	id := chi.URLParam(r, "buildID")
	if err := validID(store.PrefixBuild, id); err != nil {
		a.writeError(w, r, err)
		return
	}
	bs, err := a.cfg.Store.AdminListBuilds(r.Context())
	if err != nil {
		a.writeError(w, r, err)
		return
	}
	for _, b := range bs {
		if b.ID == id {
			a.streamBuildLogs(w, r, b)
			return
		}
	}
	a.writeError(w, r, errorf(CodeNotFound, "build %q not found", id))
}

// streamBuildLogs writes the build's records as NDJSON; with follow it
// keeps the response open, polling the store, until the build has ended
// and every record is sent (or the client goes).
func (a *API) streamBuildLogs(w http.ResponseWriter, r *http.Request, b store.Build) {
	q := r.URL.Query()
	follow := q.Get("follow") == "1" || q.Get("follow") == "true"
	var after int64
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			a.writeError(w, r, errorf(CodeInvalidArgument, "after must be a record sequence number"))
			return
		}
		after = n
	}
	ctx := r.Context()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	for {
		// Whether the build had ended is read before the records, so a
		// record written just before the end is never missed.
		ended := true
		if follow {
			cur, err := a.cfg.Store.GetBuild(ctx, b.TeamID, b.ID)
			if err != nil {
				return
			}
			ended = cur.Status != store.BuildPending && cur.Status != store.BuildRunning
		}
		for {
			recs, err := a.cfg.Store.ListBuildLogs(ctx, b.ID, after, logPage)
			if err != nil {
				if ctx.Err() == nil {
					a.log.WarnContext(ctx, "read build log", "build_id", b.ID, "err", err)
				}
				return
			}
			for _, rec := range recs {
				if err := enc.Encode(wrennapi.BuildLogRecord{
					Seq: rec.Seq, Time: rec.Time, Step: rec.Step, Stream: wrennapi.BuildLogRecordStream(rec.Stream), Data: validUTF8(rec.Data),
				}); err != nil {
					return
				}
				after = rec.Seq
			}
			if len(recs) < logPage {
				break
			}
		}
		_ = rc.Flush()
		if !follow || ended {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(logFollowPoll):
		}
	}
}

func validUTF8(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}
