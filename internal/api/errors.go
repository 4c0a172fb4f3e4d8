package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"

	"github.com/wrenn-dev/wrenn/internal/capsules"
	"github.com/wrenn-dev/wrenn/internal/scheduler"
	"github.com/wrenn-dev/wrenn/internal/store"
	"github.com/wrenn-dev/wrenn/pkg/wrennapi"
)

// Error codes, the "code" field of every error response.
const (
	CodeInvalidArgument  = "invalid_argument"
	CodeUnauthenticated  = "unauthenticated"
	CodePermissionDenied = "permission_denied"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeConflict         = "conflict"
	CodeAlreadyExists    = "already_exists"
	CodePayloadTooLarge  = "payload_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeNotImplemented   = "not_implemented"
	CodeUnavailable      = "unavailable"
	CodeRateLimited      = "rate_limited"
	CodeInternal         = "internal"
	// CodeResourceExhausted: the capsule is out of a resource it is limited
	// to (its process limit, its disk): the request is fine, the capsule's
	// state is not (409).
	CodeResourceExhausted = "resource_exhausted"
	// CodeRequestTimeout: the request body did not arrive in time (408).
	CodeRequestTimeout = "request_timeout"
	// CodeIsolationUnavailable: the request is valid but no host the team
	// may use runs the isolation it asks for (422; the message names what
	// the fleet lacks and what it runs).
	CodeIsolationUnavailable = "isolation_unavailable"
	// CodeCapsuleResumeFailed: a paused capsule with auto_resume could not
	// be resumed for the request that used it (503).
	CodeCapsuleResumeFailed = "capsule_resume_failed"
	// CodeVolumesUnsupported: the capsule's isolation cannot mount
	// volumes (422).
	CodeVolumesUnsupported = "volumes_unsupported"
	// CodeVolumeFull: a write does not fit in the volume (507).
	CodeVolumeFull = "volume_full"
)

// Error is the one error type handlers return to clients: a code from the
// list above and a message safe to show. Err, when set, is the internal
// cause; it is logged, never sent.
type Error struct {
	Code    string
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Code + ": " + e.Message + ": " + e.Err.Error()
	}
	return e.Code + ": " + e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// errorf builds an *Error with a formatted message.
func errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// httpStatus is the only place an error code becomes an HTTP status.
func httpStatus(code string) int {
	switch code {
	case CodeInvalidArgument:
		return http.StatusBadRequest
	case CodeUnauthenticated:
		return http.StatusUnauthorized
	case CodePermissionDenied:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeConflict, CodeAlreadyExists, CodeResourceExhausted:
		return http.StatusConflict
	case CodeRequestTimeout:
		return http.StatusRequestTimeout
	case CodePayloadTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeUnsupportedMedia:
		return http.StatusUnsupportedMediaType
	case CodeNotImplemented:
		return http.StatusNotImplemented
	case CodeUnavailable, CodeCapsuleResumeFailed:
		return http.StatusServiceUnavailable
	case CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeIsolationUnavailable, CodeVolumesUnsupported:
		return http.StatusUnprocessableEntity
	case CodeVolumeFull:
		return http.StatusInsufficientStorage
	default:
		return http.StatusInternalServerError
	}
}

// Friendly messages for unavailability; they never carry internal detail.
const (
	msgNoCapacity       = capsules.MsgNoCapacity
	msgAgentUnavailable = capsules.MsgAgentUnavailable
)

// toAPIError maps any error to an *Error. Unknown errors become internal.
func toAPIError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var se *capsules.Error
	if errors.As(err, &se) {
		return &Error{Code: serviceCode(se.Kind), Message: se.Message, Err: se.Err}
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return &Error{Code: CodePayloadTooLarge, Message: fmt.Sprintf("request body is larger than %d bytes", mbe.Limit)}
	case errors.Is(err, store.ErrNotFound):
		return &Error{Code: CodeNotFound, Message: "not found"}
	case errors.Is(err, store.ErrAlreadyExists):
		return &Error{Code: CodeAlreadyExists, Message: "already exists"}
	case errors.Is(err, store.ErrLastAdmin):
		return &Error{Code: CodeConflict, Message: "this change would leave no active platform admin"}
	case errors.Is(err, store.ErrConflict):
		return &Error{Code: CodeConflict, Message: "the resource is not in a state that allows this change"}
	case errors.Is(err, store.ErrInvalidCursor):
		return &Error{Code: CodeInvalidArgument, Message: "invalid cursor"}
	case errors.Is(err, store.ErrInvalid):
		return &Error{Code: CodeInvalidArgument, Message: "invalid value"}
	case errors.Is(err, scheduler.ErrNoHosts), errors.Is(err, scheduler.ErrNoCapacity):
		return &Error{Code: CodeUnavailable, Message: msgNoCapacity, Err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeUnavailable, Message: "the operation timed out; please try again", Err: err}
	case errors.Is(err, store.ErrUnavailable):
		return &Error{Code: CodeUnavailable, Message: "the database is unavailable; please try again", Err: err}
	}
	return &Error{Code: CodeInternal, Message: "internal error", Err: err}
}

// serviceCode is the API code of a capsule service error kind.
func serviceCode(k capsules.Kind) string {
	switch k {
	case capsules.KindInvalid:
		return CodeInvalidArgument
	case capsules.KindNotFound:
		return CodeNotFound
	case capsules.KindConflict:
		return CodeConflict
	case capsules.KindUnavailable:
		return CodeUnavailable
	case capsules.KindNotImplemented:
		return CodeNotImplemented
	case capsules.KindExhausted:
		return CodeResourceExhausted
	case capsules.KindTooLarge:
		return CodePayloadTooLarge
	case capsules.KindPermissionDenied:
		return CodePermissionDenied
	case capsules.KindIsolationUnavailable:
		return CodeIsolationUnavailable
	case capsules.KindResumeFailed:
		return CodeCapsuleResumeFailed
	case capsules.KindVolumesUnsupported:
		return CodeVolumesUnsupported
	case capsules.KindVolumeFull:
		return CodeVolumeFull
	}
	return CodeInternal
}

// agentError maps an error from a host agent call (capsules.AgentError):
// codes that describe the request become 4xx; transport failures become a
// friendly 503.
func agentError(err error) *Error { return toAPIError(capsules.AgentError(err)) }

// clip bounds a message coming from an agent.
func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

// writeError writes err as {"code","message"} with its status. Internal
// errors are logged with the request ID and shown as "internal error".
func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	e := toAPIError(err)
	rid := requestID(r.Context())
	status := httpStatus(e.Code)
	msg := e.Message
	switch {
	case e.Code == CodeInternal:
		a.log.ErrorContext(r.Context(), "internal error", "request_id", rid, "method", r.Method, "path", r.URL.Path, "err", err)
		msg = "internal error (request id " + rid + ")"
	case e.Err != nil && status >= 500:
		a.log.WarnContext(r.Context(), "request failed", "request_id", rid, "code", e.Code, "err", e.Err)
	}
	writeJSON(w, status, wrennapi.Error{Code: e.Code, Message: msg, RequestID: rid})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decodeJSON reads one JSON object into v: unknown fields, trailing data,
// wrong types and oversized bodies are 4xx errors. An empty body is
// accepted when optional.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, limit int64, optional bool) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return errorf(CodeUnsupportedMedia, "Content-Type must be application/json")
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if e := (*Error)(nil); errors.As(err, &e) {
			return e // e.g. the body did not arrive in time (BodyDeadlines)
		}
		var (
			syn  *json.SyntaxError
			typ  *json.UnmarshalTypeError
			mbe  *http.MaxBytesError
			inv  *json.InvalidUnmarshalError
			unkn = strings.HasPrefix(err.Error(), "json: unknown field ")
		)
		switch {
		case errors.Is(err, io.EOF):
			if optional {
				return nil
			}
			return errorf(CodeInvalidArgument, "request body is empty; a JSON object is required")
		case errors.As(err, &mbe):
			return errorf(CodePayloadTooLarge, "request body is larger than %d bytes", mbe.Limit)
		case errors.As(err, &syn), errors.Is(err, io.ErrUnexpectedEOF):
			return errorf(CodeInvalidArgument, "request body is not valid JSON")
		case errors.As(err, &typ):
			if typ.Field != "" {
				return errorf(CodeInvalidArgument, "field %q must be of type %s", typ.Field, jsonType(typ.Type.Kind().String()))
			}
			return errorf(CodeInvalidArgument, "request body must be a JSON object")
		case unkn:
			return errorf(CodeInvalidArgument, "unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		case errors.As(err, &inv):
			return err
		}
		return errorf(CodeInvalidArgument, "request body could not be decoded")
	}
	if dec.More() {
		return errorf(CodeInvalidArgument, "request body must hold exactly one JSON object")
	}
	return nil
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "string"
	case "bool":
		return "boolean"
	case "map", "struct":
		return "object"
	case "slice", "array":
		return "array"
	}
	return "number"
}

// discard logs nothing; used where a logger is optional.
var discard = slog.New(slog.DiscardHandler)
