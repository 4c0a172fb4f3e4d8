"""Verifying Wrenn webhook deliveries (docs/EVENTS.md)."""

import hashlib
import hmac
import time
from typing import Optional, Union

__all__ = ["verify_webhook", "WebhookVerificationError"]


class WebhookVerificationError(Exception):
    """A webhook delivery whose Wrenn-Signature does not verify: wrong
    secret, changed body, malformed header or a timestamp outside the
    tolerance."""


def verify_webhook(secret: str, header: Optional[str], body: Union[bytes, str],
                   tolerance: float = 300, now: Optional[float] = None) -> None:
    """Check a webhook delivery; raise :class:`WebhookVerificationError` if
    it does not verify.

    ``header`` is the request's ``Wrenn-Signature`` header,
    ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` (several
    ``v1`` values may be present); ``body`` the raw request body, before any
    JSON parsing; ``tolerance`` the accepted clock skew in seconds. Deliveries
    are at least once: deduplicate by the ``Wrenn-Event-Id`` header.
    """
    if isinstance(body, str):
        body = body.encode()
    ts, sigs = None, []
    for part in (header or "").split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookVerificationError("malformed Wrenn-Signature header")
        if key == "t":
            ts = value
        elif key == "v1":
            sigs.append(value)
    if ts is None or not ts.isdigit() or not sigs:
        raise WebhookVerificationError("malformed Wrenn-Signature header")
    now = time.time() if now is None else now
    if abs(now - int(ts)) > tolerance:
        raise WebhookVerificationError("timestamp outside the tolerance")
    want = hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(want, s) for s in sigs):
        raise WebhookVerificationError("signature does not match")
