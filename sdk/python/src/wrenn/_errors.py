"""Errors raised by the Wrenn SDK."""

from __future__ import annotations

from typing import Optional

__all__ = [
    "WrennError",
    "APIError",
    "InvalidArgumentError",
    "UnauthenticatedError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "UnavailableError",
    "InternalError",
    "ConnectionError",
    "TimeoutError",
    "StreamClosedError",
    "CommandExitError",
]


class WrennError(Exception):
    """Base class of every error the SDK raises."""


class APIError(WrennError):
    """An error answered by the Wrenn API (``{"code", "message", "request_id"}``).

    Attributes:
        status_code: HTTP status of the answer (0 for errors sent on a WebSocket).
        code: the API's error code, e.g. ``not_found`` or ``conflict``.
        message: the API's human-readable message.
        request_id: the request id the server logged (``X-Request-Id``), or None.
    """

    def __init__(self, status_code: int, code: str, message: str, request_id: Optional[str] = None):
        self.status_code = status_code
        self.code = code
        self.message = message
        self.request_id = request_id
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"wrenn: {code}: {message}{rid}")


class InvalidArgumentError(APIError):
    """``invalid_argument`` (400): the request was malformed or out of range."""


class UnauthenticatedError(APIError):
    """``unauthenticated`` (401): missing, invalid or expired credential."""


class PermissionDeniedError(APIError):
    """``permission_denied`` (403): the credential's role is too weak."""


class NotFoundError(APIError):
    """``not_found`` (404): unknown id, or another team's resource."""


class ConflictError(APIError):
    """``conflict`` / ``already_exists`` / ``resource_exhausted`` (409): wrong state or duplicate."""


class PayloadTooLargeError(APIError):
    """``payload_too_large`` (413)."""


class RateLimitedError(APIError):
    """``rate_limited`` (429)."""


class UnavailableError(APIError):
    """``unavailable`` (503): no capacity, or the capsule's host is unreachable; retry later."""


class InternalError(APIError):
    """``internal`` (500): a server failure, logged under ``request_id``."""


_BY_CODE = {
    "invalid_argument": InvalidArgumentError,
    "unauthenticated": UnauthenticatedError,
    "permission_denied": PermissionDeniedError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "already_exists": ConflictError,
    "resource_exhausted": ConflictError,
    "payload_too_large": PayloadTooLargeError,
    "rate_limited": RateLimitedError,
    "unavailable": UnavailableError,
    "internal": InternalError,
}


def api_error(status_code: int, code: str, message: str, request_id: Optional[str]) -> APIError:
    """Build the APIError subclass that matches ``code``."""
    return _BY_CODE.get(code, APIError)(status_code, code, message, request_id)


class ConnectionError(WrennError):  # noqa: A001 - deliberate, namespaced as wrenn.ConnectionError
    """Nothing answered at the URL, or the connection broke mid-call (no API answer)."""

    def __init__(self, url: str, cause: BaseException):
        self.url = url
        self.cause = cause
        super().__init__(f"wrenn: no answer from {url}: {cause}")


class TimeoutError(WrennError):  # noqa: A001 - deliberate, namespaced as wrenn.TimeoutError
    """The call did not finish within the client's or the call's timeout."""

    def __init__(self, url: str, cause: Optional[BaseException] = None):
        self.url = url
        self.cause = cause
        super().__init__(f"wrenn: timed out: {url}")


class StreamClosedError(WrennError):
    """An exec or process stream ended without an exit status."""


class CommandExitError(WrennError):
    """A command exited non-zero and the call asked for that to raise (``check=True``).

    Attributes:
        result: the :class:`~wrenn.ExecResult` with exit_code, stdout and stderr.
    """

    def __init__(self, result):
        self.result = result
        self.exit_code = result.exit_code
        super().__init__(f"wrenn: command exited with code {result.exit_code}: {result.stderr.strip()[:200]}")
