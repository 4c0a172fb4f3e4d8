package api

import (
	"errors"
	"net/http"
	"testing"

	"connectrpc.com/connect"
)

// TestResourceExhaustedIsConflict: an agent saying a capsule is out of a
// resource (its process limit) becomes 409 resource_exhausted with the
// agent's message, not 413 payload_too_large.
func TestResourceExhaustedIsConflict(t *testing.T) {
	msg := "start /bin/sh: the capsule is at its process limit (128 processes): wait for some to exit or kill some"
	e := agentError(connect.NewError(connect.CodeResourceExhausted, errors.New(msg)))
	if e.Code != CodeResourceExhausted || httpStatus(e.Code) != http.StatusConflict || e.Message != msg {
		t.Fatalf("got %s %d %q", e.Code, httpStatus(e.Code), e.Message)
	}
	if got := httpStatus(CodeRequestTimeout); got != http.StatusRequestTimeout {
		t.Fatalf("request_timeout → %d", got)
	}
}
