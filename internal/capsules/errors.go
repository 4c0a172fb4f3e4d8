package capsules

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
)

// Kind classifies a service error; the HTTP layer maps each kind to one
// status in one place (internal/api/errors.go).
type Kind string

// Error kinds.
const (
	KindInvalid        Kind = "invalid_argument"
	KindNotFound       Kind = "not_found"
	KindConflict       Kind = "conflict"
	KindUnavailable    Kind = "unavailable"
	KindNotImplemented Kind = "not_implemented"
	KindTooLarge       Kind = "too_large"
	// KindExhausted: the capsule is out of a resource it may free (its
	// process limit); 409, not 413, since nothing in the request was too
	// large.
	KindExhausted        Kind = "resource_exhausted"
	KindPermissionDenied Kind = "permission_denied"
	// KindIsolationUnavailable: no host the team may use runs the
	// isolation the capsule asks for (the fleet lacks it: waiting does not
	// help, choosing another isolation or adding a host does).
	KindIsolationUnavailable Kind = "isolation_unavailable"
	// KindResumeFailed: a paused capsule with auto_resume could not be
	// resumed for the request that used it (503 capsule_resume_failed).
	KindResumeFailed Kind = "capsule_resume_failed"
	// KindVolumesUnsupported: the capsule's isolation cannot mount
	// volumes (422 volumes_unsupported).
	KindVolumesUnsupported Kind = "volumes_unsupported"
	// KindVolumeFull: a write does not fit in the volume's size (507
	// volume_full).
	KindVolumeFull Kind = "volume_full"
)

// Error is what the service returns for anything a caller can act on: a
// kind and a message safe to show. Err, when set, is the internal cause
// (logged, never shown). Errors that are not *Error (store failures) are
// internal.
type Error struct {
	Kind    Kind
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(k Kind, format string, args ...any) *Error {
	return &Error{Kind: k, Message: fmt.Sprintf(format, args...)}
}

// Friendly messages for unavailability; they never carry internal detail.
const (
	MsgNoCapacity       = "no capacity is available to run this capsule right now; please try again in a moment"
	MsgAgentUnavailable = "the capsule's host is not reachable right now; please try again in a moment"
)

// AgentError maps an error from a host agent call to an *Error: codes that
// describe the request keep the agent's (clipped) message; transport
// failures become a friendly unavailable.
func AgentError(err error) error {
	if err == nil {
		return nil
	}
	var se *Error
	if errors.As(err, &se) {
		return se
	}
	var ce *connect.Error
	if !errors.As(err, &ce) {
		if errors.Is(err, context.DeadlineExceeded) {
			return &Error{Kind: KindUnavailable, Message: "the operation timed out; please try again", Err: err}
		}
		return &Error{Kind: KindUnavailable, Message: MsgAgentUnavailable, Err: err}
	}
	msg := clip(ce.Message())
	switch ce.Code() {
	case connect.CodeNotFound:
		return &Error{Kind: KindNotFound, Message: msg, Err: err}
	case connect.CodeInvalidArgument, connect.CodeOutOfRange:
		return &Error{Kind: KindInvalid, Message: msg, Err: err}
	case connect.CodeFailedPrecondition, connect.CodeAlreadyExists, connect.CodeAborted:
		return &Error{Kind: KindConflict, Message: msg, Err: err}
	case connect.CodeResourceExhausted:
		return &Error{Kind: KindExhausted, Message: msg, Err: err}
	case connect.CodePermissionDenied:
		return &Error{Kind: KindPermissionDenied, Message: msg, Err: err}
	case connect.CodeUnimplemented:
		return &Error{Kind: KindNotImplemented, Message: "this host's runtime does not support the operation", Err: err}
	case connect.CodeCanceled:
		return &Error{Kind: KindUnavailable, Message: "the request was cancelled", Err: err}
	case connect.CodeDeadlineExceeded:
		return &Error{Kind: KindUnavailable, Message: "the operation timed out; please try again", Err: err}
	case connect.CodeDataLoss:
		// A template whose archive in the shared store is damaged: say so.
		return &Error{Kind: KindUnavailable, Message: msg, Err: err}
	}
	return &Error{Kind: KindUnavailable, Message: MsgAgentUnavailable, Err: err}
}

// clip bounds a message coming from an agent or a caller.
func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}
