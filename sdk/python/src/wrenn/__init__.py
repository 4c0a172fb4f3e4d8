"""Wrenn: Python SDK for disposable Linux sandboxes (capsules).

>>> import wrenn
>>> c = wrenn.Client(url="http://127.0.0.1:9725", api_key="wrn_…")  # or WRENN_URL / WRENN_API_KEY
>>> cap = c.capsules.create(template="minimal")
>>> r = cap.exec("echo", "hi")
>>> r.stdout, r.stderr, r.exit_code
('hi\\n', '', 0)
>>> cap.delete()

:class:`AsyncClient` is the asyncio twin (``await c.capsules.create(...)``).
"""

from ._async import (
    DEFAULT_URL,
    AsyncBuilds,
    AsyncCapsule,
    AsyncCapsules,
    AsyncClient,
    AsyncFiles,
    AsyncProcesses,
    AsyncPty,
    AsyncTemplates,
    AsyncVolumes,
    OutputCallback,
)
from ._events import AsyncEvents, AsyncWebhooks
from ._errors import (
    APIError,
    CommandExitError,
    ConflictError,
    ConnectionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    StreamClosedError,
    TimeoutError,
    UnauthenticatedError,
    UnavailableError,
    WrennError,
)
from ._models import (
    Build,
    BuildLogRecord,
    Event,
    EventPage,
    Webhook,
    WebhookDelivery,
    WebhookDeliveryPage,
    BuildSpec,
    CapsuleInfo,
    CapsuleMetrics,
    CapsulePage,
    ExecEvent,
    ExecResult,
    ExitStatus,
    FileEntry,
    Me,
    MetricPoint,
    MkdirResult,
    Network,
    Process,
    ProcessStarted,
    Team,
    SnapshotTemplate,
    ForkResult,
    Template,
    Volume,
    VolumeMount,
    VolumeMountStatus,
)
from ._sync import Builds, Capsule, Capsules, Client, Events, Files, Processes, Pty, Templates, Volumes, Webhooks
from ._webhooks import WebhookVerificationError, verify_webhook

__version__ = "0.1.0"
"""The SDK's version."""

__all__ = [
    "Client", "Capsules", "Capsule", "Files", "Processes", "Pty", "Templates", "Builds",
    "AsyncClient", "AsyncCapsules", "AsyncCapsule", "AsyncFiles", "AsyncProcesses", "AsyncPty", "AsyncTemplates",
    "AsyncBuilds", "DEFAULT_URL", "OutputCallback",
    "WrennError", "APIError", "InvalidArgumentError", "UnauthenticatedError", "PermissionDeniedError",
    "NotFoundError", "ConflictError", "PayloadTooLargeError", "RateLimitedError", "UnavailableError",
    "InternalError", "ConnectionError", "TimeoutError", "StreamClosedError", "CommandExitError",
    "Build", "BuildLogRecord", "BuildSpec", "CapsuleInfo", "CapsuleMetrics", "CapsulePage", "ExecEvent", "ExecResult", "ExitStatus",
    "FileEntry", "Me", "MetricPoint", "MkdirResult", "Network", "Process", "ProcessStarted", "Team", "Template", "SnapshotTemplate",
    "ForkResult", "Volumes", "AsyncVolumes", "Volume", "VolumeMount", "VolumeMountStatus",
    "Events", "Webhooks", "AsyncEvents", "AsyncWebhooks", "Event", "EventPage", "Webhook", "WebhookDelivery",
    "WebhookDeliveryPage",
    "verify_webhook", "WebhookVerificationError",
]
