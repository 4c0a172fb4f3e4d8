package filesystem

import (
	"errors"
	"net/http"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"

	"github.com/wrenn-dev/wrenn/internal/envd/identity"
)

// errNotDir and errRoot are request errors detected by envd itself.
var (
	errNotDir = errors.New("not a directory")
	errRoot   = errors.New("refusing to operate on /")
)

// Classify maps an error from path resolution, user lookup or a system call
// to the Connect code that describes it. It is shared with the /files
// handler, which turns the code into an HTTP status with HTTPStatus.
func Classify(err error) connect.Code {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code()
	}
	switch {
	case errors.Is(err, ErrInvalidPath), errors.Is(err, errNotDir), errors.Is(err, errRoot):
		return connect.CodeInvalidArgument
	case errors.Is(err, identity.ErrUnknownUser):
		return connect.CodeUnauthenticated
	}
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return connect.CodeInternal
	}
	switch errno {
	case unix.ENOENT:
		return connect.CodeNotFound
	case unix.EEXIST:
		return connect.CodeAlreadyExists
	case unix.EACCES, unix.EPERM:
		return connect.CodePermissionDenied
	case unix.ENOTDIR, unix.EISDIR, unix.ENAMETOOLONG, unix.ELOOP, unix.EINVAL:
		return connect.CodeInvalidArgument
	case unix.ENOTEMPTY, unix.EXDEV, unix.EROFS, unix.EBUSY, unix.ETXTBSY:
		return connect.CodeFailedPrecondition
	case unix.ENOSPC, unix.EDQUOT:
		return connect.CodeResourceExhausted
	}
	return connect.CodeInternal
}

// toConnect wraps err in a connect error with its classified code. The
// message keeps the operation and path ("mkdir /x: file exists").
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	return connect.NewError(Classify(err), err)
}

// HTTPStatus maps a connect code to the HTTP status the /files endpoint
// answers with (507 for a full disk, as E2B clients expect).
func HTTPStatus(code connect.Code) int {
	switch code {
	case connect.CodeInvalidArgument, connect.CodeFailedPrecondition:
		return http.StatusBadRequest
	case connect.CodeUnauthenticated:
		return http.StatusUnauthorized
	case connect.CodePermissionDenied:
		return http.StatusForbidden
	case connect.CodeNotFound:
		return http.StatusNotFound
	case connect.CodeAlreadyExists:
		return http.StatusConflict
	case connect.CodeResourceExhausted:
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}
