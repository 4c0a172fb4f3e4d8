"""Data types of the Wrenn API, as dataclasses.

Each class names the ``components.schemas`` entry of the API's
``openapi.yaml`` it models in ``__schema__``; ``tests/test_models.py``
checks that the fields and the schema's properties are the same set.
Times are kept as the RFC 3339 strings the API sends.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar

__all__ = [
    "CapsuleInfo",
    "CapsulePage",
    "Network",
    "Template",
    "ExecResult",
    "ExecEvent",
    "ExitStatus",
    "Process",
    "ProcessStarted",
    "FileEntry",
    "MkdirResult",
    "Me",
    "Team",
    "BuildSpec",
    "Build",
    "CapsuleMetrics",
    "MetricPoint",
    "Event",
    "EventPage",
    "Webhook",
    "WebhookDelivery",
    "WebhookDeliveryPage",
]

T = TypeVar("T")

# Models nested in others, by field name.
_NESTED: Dict[str, Any] = {}


def _from_dict(cls: Type[T], d: Optional[Dict[str, Any]]) -> Optional[T]:
    """Build ``cls`` from a JSON object, ignoring properties it does not model
    (servers may add properties; clients ignore unknown ones)."""
    if d is None:
        return None
    kw = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in d:
            continue
        v = d[f.name]
        sub = _NESTED.get(f"{cls.__name__}.{f.name}")
        if sub is not None and v is not None:
            v = [sub.from_dict(x) for x in v] if isinstance(v, list) else sub.from_dict(v)
        kw[f.name] = v
    return cls(**kw)  # type: ignore[call-arg]


class _Model:
    """Mixin: ``from_dict`` and ``to_dict``."""

    __schema__ = ""

    @classmethod
    def from_dict(cls, d):
        """Build the model from the API's JSON object."""
        return _from_dict(cls, d)

    def to_dict(self) -> Dict[str, Any]:
        """The model as the API's JSON object (None fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}  # type: ignore[call-overload]


@dataclass
class Network(_Model):
    """A capsule's egress policy and rate limits (schema ``CapsuleNetwork``).

    ``allow_out`` and ``deny_out`` hold IPv4 CIDRs, single addresses and
    domain names (``*.example.com`` for every name below example.com); an
    allow rule wins over a deny rule, and ``deny_out=["0.0.0.0/0"]`` with
    ``allow_out`` is an allow-list (domain names need it). Rates are megabytes
    per second, the burst megabytes (None or 0: 200 MB/s and 100 MB). At most
    1,000 rules; the host, other capsules, link-local and private ranges stay
    unreachable whatever the policy.
    """

    __schema__ = "CapsuleNetwork"
    allow_out: Optional[List[str]] = None
    deny_out: Optional[List[str]] = None
    egress_mbps: Optional[int] = None
    ingress_mbps: Optional[int] = None
    burst_mb: Optional[int] = None


@dataclass
class CapsuleInfo(_Model):
    """A capsule as the API describes it (schema ``Capsule``).

    ``status`` is one of pending, starting, running, paused, hibernated,
    stopped, error, missing. ``access_token`` is only set in the create
    answer; ``memory_kept`` only in pause and resume answers.
    """

    __schema__ = "Capsule"
    id: str
    status: str
    template_id: str = ""
    vcpus: int = 0
    memory_mb: int = 0
    disk_size_mb: int = 0
    timeout_sec: int = 0
    expires_at: Optional[str] = None
    public: bool = False
    created_at: str = ""
    updated_at: str = ""
    host_id: Optional[str] = None
    allow_internet: bool = True
    error_reason: Optional[str] = None
    metadata: Optional[Dict[str, str]] = None
    paused_at: Optional[str] = None
    access_token: Optional[str] = None
    memory_kept: Optional[bool] = None
    network: Optional[Network] = None
    # container, gvisor or microvm: chosen at create, kept for life.
    isolation: Optional[str] = None
    on_timeout: str = "kill"
    auto_resume: bool = False
    pause_reason: Optional[str] = None


@dataclass
class CapsulePage(_Model):
    """One page of ``GET /v1/capsules`` (schema ``CapsuleList``); ``next_cursor`` is empty on the last page."""

    __schema__ = "CapsuleList"
    capsules: List[CapsuleInfo] = field(default_factory=list)
    next_cursor: str = ""


@dataclass
class Template(_Model):
    """A template capsules start from (schema ``Template``)."""

    __schema__ = "Template"
    id: str
    name: str
    public: bool = False
    size_bytes: int = 0
    created_at: str = ""
    memory: bool = False
    shared: bool = False
    # The template's default for its capsules' internet (None: the team's).
    capsule_internet: Optional[bool] = None
    # The template's default isolation of its capsules (None: the team's).
    isolation: Optional[str] = None
    # The template's defaults for its capsules' on_timeout / auto_resume (None: the team's).
    on_timeout: Optional[str] = None
    auto_resume: Optional[bool] = None


@dataclass
class ForkResult(_Model):
    """The copies made by ``Capsule.fork`` (schema ``ForkResult``).

    ``capsules`` are the copies (each with its ``access_token``); ``base_template_id`` is the
    template they share (stored once); ``memory_kept`` says whether they run the original's
    processes (false: they booted again from its files).
    """

    __schema__ = "ForkResult"
    capsules: List[CapsuleInfo] = field(default_factory=list)
    base_template_id: str = ""
    memory_kept: bool = False


@dataclass
class SnapshotTemplate(_Model):
    """A template made from a capsule by ``Capsule.snapshot`` (schema ``SnapshotTemplate``).

    ``memory`` says the processes were kept (capsules from it start with them running);
    ``memory_reason`` says why not when memory was asked for.
    """

    __schema__ = "SnapshotTemplate"
    id: str = ""
    name: str = ""
    public: bool = False
    size_bytes: int = 0
    created_at: str = ""
    memory: bool = False
    shared: bool = False
    memory_reason: Optional[str] = None


@dataclass
class ExecResult(_Model):
    """The outcome of a command run to completion (schema ``ExecResult``).

    ``truncated`` says the output exceeded the server's buffer; ``error``
    describes a failure to start or a signal.
    """

    __schema__ = "ExecResult"
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    truncated: bool = False
    pid: int = 0


@dataclass
class ExecEvent(_Model):
    """One event of an exec or process stream (schema ``ExecEvent``): type is start, stdout, stderr, end or error."""

    __schema__ = "ExecEvent"
    type: str
    pid: Optional[int] = None
    data: Optional[str] = None
    data_b64: Optional[str] = None
    exit_code: Optional[int] = None
    exited: Optional[bool] = None
    status: Optional[str] = None
    code: Optional[str] = None
    message: Optional[str] = None


@dataclass
class ExitStatus:
    """How a streamed command ended: ``exit_code``, whether it ``exited`` normally, and its ``status`` text."""

    exit_code: int
    exited: bool = True
    status: str = ""
    pid: int = 0


@dataclass
class Process(_Model):
    """A background process in a capsule (schema ``Process``)."""

    __schema__ = "Process"
    pid: int
    cmd: str
    args: List[str] = field(default_factory=list)
    tag: Optional[str] = None
    cwd: Optional[str] = None
    env: Optional[Dict[str, str]] = None


@dataclass
class ProcessStarted(_Model):
    """The answer to starting a background process (schema ``ProcessStarted``)."""

    __schema__ = "ProcessStarted"
    pid: int
    tag: str = ""


@dataclass
class FileEntry(_Model):
    """A file or directory in a capsule (schema ``FileEntry``); ``modified_at`` is Unix seconds."""

    __schema__ = "FileEntry"
    name: str
    path: str
    type: str
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    modified_at: int = 0
    symlink_target: Optional[str] = None


@dataclass
class MkdirResult(_Model):
    """The answer to mkdir (schema ``MkdirResult``): ``created`` is False when the directory existed."""

    __schema__ = "MkdirResult"
    created: bool
    entry: FileEntry


@dataclass
class Team(_Model):
    """A team (schema ``Team``)."""

    __schema__ = "Team"
    id: str
    name: str
    is_byoc: bool = False
    created_at: str = ""
    role: Optional[str] = None
    capsule_internet: Optional[bool] = None
    # The team's default isolation of new capsules (None: the platform's).
    default_isolation: Optional[str] = None
    on_timeout: Optional[str] = None
    auto_resume: Optional[bool] = None


@dataclass
class Me(_Model):
    """Who the credential acts as (schema ``Me``)."""

    __schema__ = "Me"
    user_id: str
    email: str
    name: str
    team_id: str
    role: str
    is_admin: bool
    auth: str
    team: Optional[Team] = None
    api_key_id: Optional[str] = None


@dataclass
class BuildSpec(_Model):
    """What a template build runs (schema ``BuildSpec``): shell commands ``run`` in order, starting from template ``from_``.

    ``from`` is a Python keyword, so the field is ``from_`` (sent as ``from``).
    """

    __schema__ = "BuildSpec"
    run: List[str]
    from_: Optional[str] = None
    env: Optional[Dict[str, str]] = None
    workdir: Optional[str] = None
    vcpus: Optional[int] = None
    memory_mb: Optional[int] = None
    disk_size_mb: Optional[int] = None
    timeout_sec: Optional[int] = None
    allow_internet: Optional[bool] = None

    @classmethod
    def from_dict(cls, d):
        """Build the spec from the API's JSON object (``from`` becomes ``from_``)."""
        if d is None:
            return None
        d = dict(d)
        if "from" in d:
            d["from_"] = d.pop("from")
        return _from_dict(cls, d)

    def to_dict(self) -> Dict[str, Any]:
        """The spec as the API's JSON object."""
        d = super().to_dict()
        if "from_" in d:
            d["from"] = d.pop("from_")
        return d


@dataclass
class Build(_Model):
    """A template build (schema ``Build``): status pending, running, succeeded, failed or cancelled."""

    __schema__ = "Build"
    id: str
    team_id: str
    template_name: str
    status: str
    created_at: str = ""
    updated_at: str = ""
    template_id: Optional[str] = None
    spec: Optional[BuildSpec] = None
    recipe: Optional[str] = None
    kind: Optional[str] = None
    error: Optional[str] = None
    created_by: Optional[str] = None
    finished_at: Optional[str] = None


@dataclass
class BuildLogRecord(_Model):
    """One record of a build's log (schema ``BuildLogRecord``): a chunk of a step's stdout/stderr, or a ``system`` line."""

    __schema__ = "BuildLogRecord"
    seq: int
    time: str
    step: int
    stream: str
    data: str


@dataclass
class MetricPoint(_Model):
    """One sample of a capsule's resource use (schema ``MetricPoint``)."""

    __schema__ = "MetricPoint"
    ts_ms: int
    cpu_used_pct: float = 0.0
    cpu_count: int = 0
    mem_used_bytes: int = 0
    mem_total_bytes: int = 0
    disk_used_bytes: int = 0
    disk_total_bytes: int = 0


@dataclass
class CapsuleMetrics(_Model):
    """A capsule's metrics over a window (schema ``CapsuleMetrics``)."""

    __schema__ = "CapsuleMetrics"
    resolution_sec: int
    points: List[MetricPoint] = field(default_factory=list)


@dataclass
class VolumeMountStatus(_Model):
    """A mount that holds a volume now (schema ``VolumeMountStatus``)."""

    __schema__ = "VolumeMountStatus"
    capsule_id: str
    path: str
    read_only: bool = False


@dataclass
class Volume(_Model):
    """A team's persistent volume (schema ``Volume``; docs/VOLUMES.md).

    ``location`` is ``"store"`` (no capsule holds it: any host can mount it)
    or ``"host"`` (capsules on ``host_id`` mount it; ``mounts`` lists them)."""

    __schema__ = "Volume"
    id: str
    name: str
    size_mb: int
    created_at: str = ""
    updated_at: str = ""
    location: str = "store"
    host_id: Optional[str] = None
    mounts: List[VolumeMountStatus] = field(default_factory=list)


@dataclass
class VolumeMount(_Model):
    """Mounts a volume at create (schema ``VolumeMount``): one read-write mount at a time."""

    __schema__ = "VolumeMount"
    name: str
    path: str
    read_only: bool = False


_NESTED.update(
    {
        "Volume.mounts": VolumeMountStatus,
        "CapsulePage.capsules": CapsuleInfo,
        "CapsuleInfo.network": Network,
        "MkdirResult.entry": FileEntry,
        "Me.team": Team,
        "Build.spec": BuildSpec,
        "CapsuleMetrics.points": MetricPoint,
    }
)


# ---- events and webhooks (docs/EVENTS.md) ----


@dataclass
class Event(_Model):
    """One life-cycle event of the team's log (schema ``Event``).

    ``id`` orders the log (decimal, increasing) and is the cursor and the SSE id; ``subject`` is the
    capsule, build or host the event is about; ``type`` is e.g. ``capsule.created``.
    """

    __schema__ = "Event"
    id: str
    type: str
    time: str
    team_id: str
    subject: str
    data: Dict[str, Any] = field(default_factory=dict)


@dataclass
class EventPage(_Model):
    """A page of the event log (schema ``EventPage``); ``next_cursor`` is empty on the last page."""

    __schema__ = "EventPage"
    events: List[Event] = field(default_factory=list)
    next_cursor: Optional[str] = None


@dataclass
class Webhook(_Model):
    """A webhook endpoint (schema ``Webhook``).

    ``secret`` is set only in the answers of create and rotate-secret: keep it then, it is never shown
    again. ``event_types`` empty means every type.
    """

    __schema__ = "Webhook"
    id: str
    url: str
    event_types: List[str] = field(default_factory=list)
    enabled: bool = True
    created_at: str = ""
    updated_at: str = ""
    secret: Optional[str] = None


@dataclass
class WebhookDelivery(_Model):
    """One delivery of an event to an endpoint (schema ``WebhookDelivery``); ``status`` is ``pending``,
    ``delivered`` or ``failed``; ``response_status`` 0 means no answer."""

    __schema__ = "WebhookDelivery"
    id: int
    event_id: str
    event_type: str
    status: str
    attempts: int = 0
    next_attempt_at: str = ""
    response_status: int = 0
    created_at: str = ""
    last_attempt_at: Optional[str] = None
    last_error: Optional[str] = None


@dataclass
class WebhookDeliveryPage(_Model):
    """A page of an endpoint's deliveries, newest first (schema ``WebhookDeliveryPage``)."""

    __schema__ = "WebhookDeliveryPage"
    deliveries: List[WebhookDelivery] = field(default_factory=list)
    next_cursor: Optional[str] = None


_NESTED.update(
    {
        "EventPage.events": Event,
        "WebhookDeliveryPage.deliveries": WebhookDelivery,
    }
)
