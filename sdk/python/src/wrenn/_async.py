"""The asynchronous Wrenn client (asyncio, httpx and websockets)."""

from __future__ import annotations

import base64
import inspect
import json
import os
import secrets
from typing import Any, AsyncIterator, Callable, Dict, IO, Iterable, List, Optional, Union
from urllib.parse import quote, urlencode, urlsplit

import httpx

from ._errors import (
    APIError,
    CommandExitError,
    ConnectionError,
    StreamClosedError,
    TimeoutError,
    api_error,
)
from ._models import (
    Build,
    BuildLogRecord,
    BuildSpec,
    CapsuleInfo,
    CapsuleMetrics,
    CapsulePage,
    ExecEvent,
    ExecResult,
    ForkResult,
    ExitStatus,
    FileEntry,
    Me,
    MkdirResult,
    Network,
    Process,
    ProcessStarted,
    SnapshotTemplate,
    Team,
    Template,
    Volume,
    VolumeMount,
)

try:  # websockets >= 13: the new asyncio client
    from websockets.asyncio.client import connect as _ws_connect  # type: ignore

    _WS_HEADERS = "additional_headers"
except ImportError:  # websockets 10.x-12.x (Debian 12 ships 10.4)
    from websockets.legacy.client import connect as _ws_connect  # type: ignore

    _WS_HEADERS = "extra_headers"
import websockets.exceptions as _wsx

from ._events import AsyncEvents, AsyncWebhooks

__all__ = ["AsyncClient", "AsyncCapsule", "AsyncCapsules", "AsyncFiles", "AsyncProcesses", "AsyncPty",
           "AsyncTemplates", "AsyncBuilds", "DEFAULT_URL", "OutputCallback"]

DEFAULT_URL = "http://127.0.0.1:9725"
"""The URL of a local ``wrenn up`` (used when neither ``url`` nor ``WRENN_URL`` is given)."""

OutputCallback = Callable[[bytes], Any]
"""A function called with each chunk of a stream's output (its result, if awaitable, is awaited)."""

_CHUNK = 1 << 20
_USER_AGENT = "wrenn-python/0.1.0"

FileData = Union[bytes, bytearray, memoryview, str, IO[bytes], Iterable[bytes]]


def _fold(v: Optional[Union[float, httpx.Timeout]]) -> httpx.Timeout:
    if isinstance(v, httpx.Timeout):
        return v
    return httpx.Timeout(v, connect=min(v, 10.0) if v else 10.0)


async def _call_back(cb: Optional[OutputCallback], data: bytes) -> None:
    if cb is None:
        return
    r = cb(data)
    if inspect.isawaitable(r):
        await r


class AsyncClient:
    """Asynchronous client of a Wrenn control plane.

    ``url`` and ``api_key`` default to the ``WRENN_URL`` and ``WRENN_API_KEY``
    environment variables (and ``url`` to ``http://127.0.0.1:9725``).
    ``timeout`` bounds connecting and each wait for data (seconds, None for
    no limit); transfers and streams may last longer as long as data flows.
    Nothing is retried: a failed call raises, and the caller decides.

    Use as ``async with wrenn.AsyncClient() as c:`` or call :meth:`aclose`.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        api_key: Optional[str] = None,
        *,
        timeout: Optional[float] = 120.0,
        http_client: Optional[httpx.AsyncClient] = None,
        user_agent: Optional[str] = None,
    ):
        self.url = (url or os.environ.get("WRENN_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("WRENN_API_KEY", "")
        self.timeout = timeout
        self._headers = {"User-Agent": user_agent or _USER_AGENT}
        if self.api_key:
            self._headers["X-API-Key"] = self.api_key
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=_fold(timeout))
        self.capsules = AsyncCapsules(self)
        """Capsules: create, list, get (:class:`AsyncCapsules`)."""
        self.templates = AsyncTemplates(self)
        """Templates (:class:`AsyncTemplates`)."""
        self.builds = AsyncBuilds(self)
        """Template builds, platform admins only (:class:`AsyncBuilds`)."""
        self.events = AsyncEvents(self)
        """The team's event log and live stream (:class:`AsyncEvents`)."""
        self.webhooks = AsyncWebhooks(self)
        """The team's webhook endpoints (:class:`AsyncWebhooks`)."""
        self.volumes = AsyncVolumes(self)
        """Persistent volumes (:class:`AsyncVolumes`)."""

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections the client opened."""
        if self._owns_http:
            await self._http.aclose()

    # ---- transport ----

    def _endpoint(self, path: str, query: Optional[Dict[str, Any]] = None) -> str:
        u = self.url + path
        if query:
            q = {k: v for k, v in query.items() if v is not None and v != ""}
            if q:
                u += "?" + urlencode({k: (str(v).lower() if isinstance(v, bool) else v) for k, v in q.items()})
        return u

    async def _send(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Dict[str, Any]] = None,
        json_body: Any = None,
        content: Any = None,
        content_type: Optional[str] = None,
        stream: bool = False,
        timeout: Any = None,
    ) -> httpx.Response:
        url = self._endpoint(path, query)
        headers = dict(self._headers)
        if json_body is not None:
            content = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type:
            headers["Content-Type"] = content_type
        req = self._http.build_request(method, url, headers=headers, content=content,
                                       timeout=_fold(timeout) if timeout is not None else httpx.USE_CLIENT_DEFAULT)
        try:
            resp = await self._http.send(req, stream=True)
        except httpx.TimeoutException as e:
            raise TimeoutError(url, e) from e
        except httpx.TransportError as e:
            raise ConnectionError(self.url, e) from e
        if resp.status_code // 100 != 2:
            try:
                body = await resp.aread()
            except httpx.HTTPError:
                body = b""
            finally:
                await resp.aclose()
            raise _decode_error(resp.status_code, body, resp.headers.get("X-Request-Id"))
        if not stream:
            try:
                await resp.aread()
            except httpx.TimeoutException as e:
                raise TimeoutError(url, e) from e
            except httpx.TransportError as e:
                raise ConnectionError(self.url, e) from e
            finally:
                await resp.aclose()
        return resp

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self._send(method, path, **kw)
        if not resp.content:
            return None
        return resp.json()

    async def _ws(self, path: str, query: Optional[Dict[str, Any]] = None):
        url = self._endpoint(path, query)
        parts = urlsplit(url)
        ws_url = ("wss" if parts.scheme == "https" else "ws") + url[len(parts.scheme):]
        kw: Dict[str, Any] = {_WS_HEADERS: list(self._headers.items()), "max_size": None,
                              "open_timeout": self.timeout, "ping_interval": None}
        if _WS_HEADERS == "extra_headers":
            kw["user_agent_header"] = None
        try:
            return await _ws_connect(ws_url, **kw)
        except _wsx.InvalidStatusCode as e:  # websockets < 14
            raise _decode_error(e.status_code, b"", e.headers.get("X-Request-Id")) from e
        except _wsx.InvalidHandshake as e:
            resp = getattr(e, "response", None)
            if resp is not None and getattr(resp, "status_code", None):
                raise _decode_error(resp.status_code, resp.body or b"", resp.headers.get("X-Request-Id")) from e
            raise ConnectionError(self.url, e) from e
        except (OSError, EOFError) as e:
            raise ConnectionError(self.url, e) from e
        except Exception as e:  # asyncio.TimeoutError on open_timeout
            if type(e).__name__ == "TimeoutError":
                raise TimeoutError(ws_url, e) from e
            raise

    # ---- account ----

    async def me(self) -> Me:
        """Who the credential acts as (``GET /v1/me``)."""
        return Me.from_dict(await self._json("GET", "/v1/me"))

    async def health(self) -> Dict[str, Any]:
        """The server's health (``GET /health``)."""
        return await self._json("GET", "/health")

    async def set_team_isolation(self, isolation: str, team_id: Optional[str] = None) -> Team:
        """Set the default isolation of the team's new capsules (``"container"``, ``"gvisor"``,
        ``"microvm"``; ``""`` clears it). ``team_id`` defaults to the credential's team. Needs the
        team's admin role."""
        if team_id is None:
            team_id = (await self.me()).team_id
        return Team.from_dict(await self._json("PATCH", "/v1/teams/" + quote(team_id, safe=""),
                                               json_body={"default_isolation": isolation}))


def _decode_error(status: int, body: bytes, request_id: Optional[str]) -> APIError:
    code, message = "", ""
    try:
        d = json.loads(body)
        code, message = d.get("code", ""), d.get("message", "")
        request_id = d.get("request_id") or request_id
    except (ValueError, AttributeError):
        message = body.decode(errors="replace").strip()
    if not code:
        code = {400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
                409: "conflict", 413: "payload_too_large", 429: "rate_limited", 503: "unavailable"}.get(
            status, "internal" if status >= 500 else "unknown")
        message = message or f"HTTP {status}"
    return api_error(status, code, message, request_id)


def _exec_body(cmd: str, args: Iterable[str], env: Optional[Dict[str, str]], cwd: Optional[str],
               user: Optional[str], timeout: Optional[int], stdin: Optional[Union[str, bytes]]) -> Dict[str, Any]:
    b: Dict[str, Any] = {"cmd": cmd}
    if args:
        b["args"] = list(args)
    if env:
        b["env"] = env
    if cwd:
        b["cwd"] = cwd
    if user:
        b["user"] = user
    if timeout is not None:
        b["timeout_sec"] = int(timeout)
    if stdin is not None:
        b["stdin"] = stdin.decode() if isinstance(stdin, (bytes, bytearray)) else stdin
    return b


def _event_bytes(ev: ExecEvent) -> bytes:
    if ev.data_b64:
        return base64.b64decode(ev.data_b64)
    return (ev.data or "").encode()


# Asks exec and process streams for output as binary frames instead of
# JSON events (a server that does not know the parameter sends JSON).
_BINARY_FRAMES = {"frames": "binary"}


async def _pump(ws, on_stdout: Optional[OutputCallback], on_stderr: Optional[OutputCallback]) -> ExitStatus:
    pid = 0
    try:
        async for msg in ws:
            if isinstance(msg, bytes):
                # A binary output frame (frames=binary): the stream's byte
                # (1 stdout, 2 stderr), then the raw bytes.
                if msg[:1] == b"\x01":
                    await _call_back(on_stdout, msg[1:])
                elif msg[:1] == b"\x02":
                    await _call_back(on_stderr, msg[1:])
                continue
            ev = ExecEvent.from_dict(json.loads(msg))
            if ev.type == "start":
                pid = ev.pid or 0
            elif ev.type == "stdout":
                await _call_back(on_stdout, _event_bytes(ev))
            elif ev.type == "stderr":
                await _call_back(on_stderr, _event_bytes(ev))
            elif ev.type == "end":
                return ExitStatus(exit_code=ev.exit_code or 0, exited=bool(ev.exited), status=ev.status or "", pid=pid)
            elif ev.type == "error":
                raise api_error(0, ev.code or "internal", ev.message or "", None)
    except _wsx.ConnectionClosedError as e:
        raise StreamClosedError(f"wrenn: stream broke before the exit status: {e}") from e
    finally:
        await ws.close()
    raise StreamClosedError("wrenn: stream ended without an exit status")


class AsyncCapsules:
    """Capsule operations of an :class:`AsyncClient` (``client.capsules``)."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(
        self,
        template: Optional[str] = None,
        *,
        vcpus: Optional[int] = None,
        memory_mb: Optional[int] = None,
        disk_size_mb: Optional[int] = None,
        timeout: Optional[int] = None,
        env: Optional[Dict[str, str]] = None,
        public: Optional[bool] = None,
        allow_internet: Optional[bool] = None,
        metadata: Optional[Dict[str, str]] = None,
        network: Optional[Union[Network, Dict[str, Any]]] = None,
        isolation: Optional[str] = None,
        on_timeout: Optional[str] = None,
        auto_resume: Optional[bool] = None,
        volume_mounts: Optional[List[Union[VolumeMount, Dict[str, Any]]]] = None,
    ) -> "AsyncCapsule":
        """Create a capsule (``POST /v1/capsules``); omitted fields take the server's defaults.

        ``volume_mounts`` mounts the team's volumes, e.g.
        ``[VolumeMount("data", "/data")]`` (one read-write mount of a volume at a
        time, any number read-only; container isolation only).

        ``metadata`` is string key/values returned with the capsule and
        filterable in list (``metadata={"k": "v"}``).

        ``network`` is the egress policy and rate limits (a :class:`Network`
        or its dict), e.g. ``Network(deny_out=["0.0.0.0/0"], allow_out=["pypi.org"])``.
        ``allow_internet`` omitted takes the team's default (on unless a team
        admin turned it off).

        ``isolation`` is ``"container"``, ``"gvisor"`` or ``"microvm"``
        (omitted: the template's default, else the team's, else the
        platform's). One no host of the team runs raises an :class:`APIError`
        with ``code == "isolation_unavailable"`` (HTTP 422) naming what the
        hosts lack.
        ``on_timeout`` is what the end of the timeout does: ``"kill"`` or ``"pause"`` (to disk,
        processes kept where the host can); ``auto_resume`` makes any use of the paused capsule
        resume it first. Omitted, both take the template's default, else the team's, else
        kill / off. The answer's ``memory_kept`` says whether the host keeps processes.

        ``timeout`` is the time to live in seconds. Not retried: a failure may
        still have created a capsule (it is then listed in ``error``).
        """
        body = {k: v for k, v in dict(template=template, vcpus=vcpus, memory_mb=memory_mb,
                                      disk_size_mb=disk_size_mb, timeout_sec=timeout, env=env, public=public,
                                      allow_internet=allow_internet, metadata=metadata,
                                      network=_network_dict(network), isolation=isolation, on_timeout=on_timeout,
                                      auto_resume=auto_resume).items() if v is not None}
        if volume_mounts is not None:
            body["volume_mounts"] = [m.to_dict() if isinstance(m, VolumeMount) else m for m in volume_mounts]
        d = await self._c._json("POST", "/v1/capsules", json_body=body)
        return AsyncCapsule(self._c, CapsuleInfo.from_dict(d))

    async def get(self, capsule_id: str) -> "AsyncCapsule":
        """The capsule with this id (``GET /v1/capsules/{id}``)."""
        return AsyncCapsule(self._c, await self._get_info(capsule_id))

    async def _get_info(self, capsule_id: str) -> CapsuleInfo:
        return CapsuleInfo.from_dict(await self._c._json("GET", _cpath(capsule_id)))

    async def list_page(self, status: Optional[str] = None, limit: Optional[int] = None,
                        cursor: Optional[str] = None, metadata: Optional[Dict[str, str]] = None) -> CapsulePage:
        """One page of the team's capsules, newest first; pass ``next_cursor`` back as ``cursor``.

        ``metadata`` keeps only capsules whose metadata holds every given key with that value.
        """
        query: Dict[str, Any] = {"status": status, "limit": limit, "cursor": cursor}
        for k, v in (metadata or {}).items():
            query["metadata." + k] = v
        d = await self._c._json("GET", "/v1/capsules", query=query)
        return CapsulePage.from_dict(d)

    async def list(self, status: Optional[str] = None, limit: Optional[int] = None) -> List[CapsuleInfo]:
        """Every capsule of the team (following every cursor), optionally only those in ``status``."""
        out: List[CapsuleInfo] = []
        cursor = None
        while True:
            page = await self.list_page(status=status, limit=limit, cursor=cursor)
            out.extend(page.capsules)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    async def delete(self, capsule_id: str) -> None:
        """Destroy a capsule by id (``DELETE /v1/capsules/{id}``)."""
        await self._c._send("DELETE", _cpath(capsule_id))


def _network_dict(n: Optional[Union[Network, Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    if n is None:
        return None
    return n.to_dict() if isinstance(n, Network) else {k: v for k, v in dict(n).items() if v is not None}


def _cpath(capsule_id: str) -> str:
    return "/v1/capsules/" + quote(capsule_id, safe="")


class AsyncCapsule:
    """A capsule and the calls that act on it; attributes of :class:`CapsuleInfo` (``id``, ``status``, …) read through.

    ``async with await client.capsules.create(...) as cap:`` deletes the capsule on exit.
    """

    def __init__(self, client: AsyncClient, info: CapsuleInfo):
        self._c = client
        self.info = info
        """The capsule's last known state (:class:`CapsuleInfo`)."""
        self.files = AsyncFiles(client, info.id)
        """Files in the capsule (:class:`AsyncFiles`)."""
        self.processes = AsyncProcesses(client, info.id)
        """Background processes (:class:`AsyncProcesses`)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["info"], name)

    def __repr__(self) -> str:
        return f"<AsyncCapsule {self.info.id} {self.info.status}>"

    async def __aenter__(self) -> "AsyncCapsule":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.delete()
        except APIError as e:
            if e.code != "not_found":
                raise

    @property
    def id(self) -> str:
        """The capsule's id (``cl-…``)."""
        return self.info.id

    @property
    def _path(self) -> str:
        return _cpath(self.info.id)

    async def refresh(self) -> CapsuleInfo:
        """Fetch the capsule's current state into :attr:`info` and return it."""
        self.info = CapsuleInfo.from_dict(await self._c._json("GET", self._path))
        return self.info

    async def delete(self) -> None:
        """Destroy the capsule."""
        await self._c._send("DELETE", self._path)

    async def pause(self, to_disk: bool = False) -> CapsuleInfo:
        """Pause the capsule (warm, or to disk); ``info.memory_kept`` says whether processes survive."""
        self.info = CapsuleInfo.from_dict(await self._c._json("POST", self._path + "/pause",
                                                              json_body={"to_disk": True} if to_disk else {}))
        return self.info

    async def snapshot(self, name: str, memory: bool = True) -> SnapshotTemplate:
        """Turn the running capsule into a team template ``name`` (``name`` or ``name:tag``).

        With ``memory`` (default) the processes are kept too where the host can, so capsules
        created from the template start with them running. The capsule keeps running.
        """
        return SnapshotTemplate.from_dict(await self._c._json("POST", self._path + "/snapshot",
                                                              json_body={"name": name, "memory": bool(memory)}))

    async def fork(self, count: int = 1) -> ForkResult:
        """Copy the running or paused capsule ``count`` times (1 to 20): files and, where the host
        keeps memory, running processes. Each copy has its own id, network and disk; the
        original keeps running. The copies share one base template.
        """
        return ForkResult.from_dict(await self._c._json("POST", self._path + "/fork", json_body={"count": int(count)}))

    async def resume(self, timeout: Optional[int] = None) -> CapsuleInfo:
        """Resume a paused or hibernated capsule, optionally with a new time to live (seconds)."""
        body = {"timeout_sec": int(timeout)} if timeout is not None else {}
        self.info = CapsuleInfo.from_dict(await self._c._json("POST", self._path + "/resume", json_body=body))
        return self.info

    async def set_timeout(self, timeout: int) -> CapsuleInfo:
        """Set the time to live to ``timeout`` seconds from now."""
        self.info = CapsuleInfo.from_dict(await self._c._json("POST", self._path + "/timeout",
                                                              json_body={"timeout_sec": int(timeout)}))
        return self.info

    async def set_public(self, public: bool) -> CapsuleInfo:
        """Make the capsule's ports reachable through the proxy without the access token (or not)."""
        self.info = CapsuleInfo.from_dict(await self._c._json("PUT", self._path + "/public",
                                                              json_body={"public": bool(public)}))
        return self.info

    async def set_network(self, network: Optional[Union[Network, Dict[str, Any]]] = None, *,
                          allow_internet: Optional[bool] = None) -> CapsuleInfo:
        """Replace the capsule's egress policy and rate limits, live (``PUT /v1/capsules/{id}/network``).

        ``network`` is the whole new policy (None: the defaults); established
        connections keep flowing. ``allow_internet`` switches outbound internet
        on or off (None: unchanged). An invalid policy raises
        :class:`InvalidArgumentError` naming the rule, and the old policy stays.
        """
        body = _network_dict(network) or {}
        if allow_internet is not None:
            body["allow_internet"] = bool(allow_internet)
        self.info = CapsuleInfo.from_dict(await self._c._json("PUT", self._path + "/network", json_body=body))
        return self.info

    async def metrics(self, window: str = "10m") -> CapsuleMetrics:
        """Resource use over ``window`` (10m, 2h or 24h)."""
        return CapsuleMetrics.from_dict(await self._c._json("GET", self._path + "/metrics", query={"window": window}))

    async def exec(
        self,
        cmd: str,
        *args: str,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[int] = None,
        stdin: Optional[Union[str, bytes]] = None,
        check: bool = False,
    ) -> ExecResult:
        """Run ``cmd args…`` to completion and return its output (``POST …/exec``).

        ``timeout`` (seconds) bounds the command in the capsule. With
        ``check=True`` a non-zero exit raises :class:`~wrenn.CommandExitError`.
        """
        body = _exec_body(cmd, args, env, cwd, user, timeout, stdin)
        wait = None if timeout is None or self._c.timeout is None else max(self._c.timeout, timeout + 30)
        r = ExecResult.from_dict(await self._c._json("POST", self._path + "/exec", json_body=body, timeout=wait))
        if check and r.exit_code != 0:
            raise CommandExitError(r)
        return r

    async def exec_stream(
        self,
        cmd: str,
        *args: str,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[int] = None,
        stdin: Optional[Union[str, bytes]] = None,
        check: bool = False,
    ) -> ExitStatus:
        """Run ``cmd args…`` and deliver its output live to ``on_stdout``/``on_stderr`` (WebSocket ``…/exec/stream``).

        Returns the :class:`~wrenn.ExitStatus`; with ``check=True`` a non-zero exit raises
        :class:`~wrenn.CommandExitError` (its result carries no output).
        """
        ws = await self._c._ws(self._path + "/exec/stream", _BINARY_FRAMES)
        await ws.send(json.dumps(_exec_body(cmd, args, env, cwd, user, timeout, stdin)))
        st = await _pump(ws, on_stdout, on_stderr)
        if check and st.exit_code != 0:
            raise CommandExitError(ExecResult(exit_code=st.exit_code, pid=st.pid, error=st.status))
        return st

    async def pty(self, cols: int = 80, rows: int = 24, cmd: Optional[str] = None,
                  pid: Optional[int] = None) -> "AsyncPty":
        """Open a terminal running ``cmd`` (default the capsule's shell), or attach to process ``pid``."""
        ws = await self._c._ws(self._path + "/pty", {"cols": cols, "rows": rows, "cmd": cmd, "pid": pid})
        return AsyncPty(ws)


class AsyncPty:
    """An open terminal in a capsule: :meth:`send` keystrokes, :meth:`recv` output, :meth:`resize`, :meth:`close`."""

    def __init__(self, ws):
        self._ws = ws
        self.pid: Optional[int] = None
        """The terminal process's pid (known after its start message)."""
        self.exit_code: Optional[int] = None
        """The exit code once the session ended, else None."""

    async def __aenter__(self) -> "AsyncPty":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def send(self, data: Union[str, bytes]) -> None:
        """Send keystrokes."""
        await self._ws.send(data.encode() if isinstance(data, str) else bytes(data))

    async def resize(self, cols: int, rows: int) -> None:
        """Resize the terminal."""
        await self._ws.send(json.dumps({"type": "resize", "cols": cols, "rows": rows}))

    async def recv(self) -> Optional[bytes]:
        """The next chunk of terminal output, or None when the session ended (then :attr:`exit_code` is set)."""
        while True:
            try:
                msg = await self._ws.recv()
            except _wsx.ConnectionClosedOK:
                return None
            except _wsx.ConnectionClosedError as e:
                raise StreamClosedError(f"wrenn: terminal connection broke: {e}") from e
            if isinstance(msg, bytes):
                return msg
            ev = json.loads(msg)
            if ev.get("type") == "start":
                self.pid = ev.get("pid")
            elif ev.get("type") == "end":
                self.exit_code = ev.get("exit_code", 0)
            elif ev.get("type") == "error":
                raise api_error(0, ev.get("code") or "internal", ev.get("message") or "", None)

    async def close(self) -> None:
        """Close the terminal (a shell it started is killed)."""
        await self._ws.close()


class AsyncProcesses:
    """Background processes of one capsule (``capsule.processes``)."""

    def __init__(self, client: AsyncClient, capsule_id: str):
        self._c = client
        self._path = _cpath(capsule_id) + "/processes"

    async def start(
        self,
        cmd: str,
        *args: str,
        tag: Optional[str] = None,
        open_stdin: bool = False,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
        user: Optional[str] = None,
        timeout: Optional[int] = None,
        stdin: Optional[Union[str, bytes]] = None,
    ) -> ProcessStarted:
        """Start ``cmd args…`` in the background and return its pid; ``open_stdin`` keeps stdin open for :meth:`attach`."""
        body = _exec_body(cmd, args, env, cwd, user, timeout, stdin)
        if tag:
            body["tag"] = tag
        if open_stdin:
            body["open_stdin"] = True
        return ProcessStarted.from_dict(await self._c._json("POST", self._path, json_body=body))

    async def list(self) -> List[Process]:
        """The capsule's background processes."""
        d = await self._c._json("GET", self._path)
        return [Process.from_dict(p) for p in d.get("processes", [])]

    async def kill(self, pid: int, signal: str = "SIGKILL") -> None:
        """Send ``signal`` (SIGKILL or SIGTERM) to process ``pid``."""
        await self._c._send("DELETE", f"{self._path}/{int(pid)}", query={"signal": signal})

    async def attach(
        self,
        pid: int,
        on_stdout: Optional[OutputCallback] = None,
        on_stderr: Optional[OutputCallback] = None,
        stdin: Optional[Union[str, bytes]] = None,
        close_stdin: bool = False,
    ) -> ExitStatus:
        """Follow process ``pid``'s output until it exits; first send ``stdin`` (and close it with ``close_stdin``)."""
        ws = await self._c._ws(f"{self._path}/{int(pid)}/stream", _BINARY_FRAMES)
        if stdin is not None:
            data = stdin.decode() if isinstance(stdin, (bytes, bytearray)) else stdin
            await ws.send(json.dumps({"type": "stdin", "data": data}))
        if close_stdin:
            await ws.send(json.dumps({"type": "close_stdin"}))
        return await _pump(ws, on_stdout, on_stderr)


class AsyncFiles:
    """Files of one capsule (``capsule.files``). Transfers are streamed both ways."""

    def __init__(self, client: AsyncClient, capsule_id: str):
        self._c = client
        self._path = _cpath(capsule_id) + "/files"

    async def write(self, path: str, data: FileData) -> FileEntry:
        """Write ``data`` (bytes, str, a binary file object or an iterable of bytes) to ``path``; parents are created.

        File objects and iterables are streamed, never read whole into memory.
        """
        if isinstance(data, str):
            content: Any = data.encode()
        elif isinstance(data, (bytes, bytearray, memoryview)):
            content = bytes(data)
        elif hasattr(data, "read"):
            content = _aiter_file(data)  # type: ignore[arg-type]
        elif hasattr(data, "__aiter__"):
            content = data
        else:
            content = _aiter_iter(data)
        d = await self._c._json("PUT", self._path, query={"path": path}, content=content,
                                content_type="application/octet-stream")
        return FileEntry.from_dict(d)

    async def upload(self, local_path: Union[str, "os.PathLike[str]"], path: str) -> FileEntry:
        """Stream the local file ``local_path`` to ``path`` in the capsule."""
        with open(local_path, "rb") as f:
            return await self.write(path, f)

    async def stream(self, path: str, chunk_size: int = _CHUNK) -> AsyncIterator[bytes]:
        """Yield the file's bytes in chunks as they arrive (a body cut short raises, never looks like a short file)."""
        resp = await self._c._send("GET", self._path, query={"path": path}, stream=True)
        try:
            async for chunk in resp.aiter_raw(chunk_size):
                yield chunk
        except httpx.TimeoutException as e:
            raise TimeoutError(self._c.url, e) from e
        except httpx.TransportError as e:
            raise ConnectionError(self._c.url, e) from e
        finally:
            await resp.aclose()

    async def read(self, path: str) -> bytes:
        """The whole file's bytes (use :meth:`download` or :meth:`stream` for large files)."""
        parts = [c async for c in self.stream(path)]
        return b"".join(parts)

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The whole file, decoded as text."""
        return (await self.read(path)).decode(encoding)

    async def download(self, path: str, dest: Union[str, "os.PathLike[str]", IO[bytes]]) -> int:
        """Stream the file at ``path`` into ``dest`` (a local path or a binary file object); returns the byte count."""
        if hasattr(dest, "write"):
            return await self._copy_to(path, dest)  # type: ignore[arg-type]
        with open(dest, "wb") as f:  # type: ignore[arg-type]
            return await self._copy_to(path, f)

    async def _copy_to(self, path: str, f: IO[bytes]) -> int:
        n = 0
        async for chunk in self.stream(path):
            f.write(chunk)
            n += len(chunk)
        return n

    async def list(self, path: str, depth: int = 1) -> List[FileEntry]:
        """The entries of directory ``path`` (``depth`` 1 = direct children, up to 10)."""
        d = await self._c._json("GET", self._path + "/list", query={"path": path, "depth": depth})
        return [FileEntry.from_dict(e) for e in d.get("entries", [])]

    async def mkdir(self, path: str) -> MkdirResult:
        """Create directory ``path`` and its parents (``created`` is False when it existed)."""
        return MkdirResult.from_dict(await self._c._json("POST", self._path + "/mkdir", json_body={"path": path}))

    async def remove(self, path: str) -> None:
        """Remove a file or a directory tree."""
        await self._c._send("DELETE", self._path, query={"path": path})

    async def exists(self, path: str) -> bool:
        """Whether ``path`` exists (by listing its parent)."""
        parent, _, name = path.rstrip("/").rpartition("/")
        try:
            return any(e.name == name for e in await self.list(parent or "/"))
        except APIError as e:
            if e.code == "not_found":
                return False
            raise


async def _aiter_file(f: IO[bytes]) -> AsyncIterator[bytes]:
    while True:
        b = f.read(_CHUNK)
        if not b:
            return
        yield b


async def _aiter_iter(it: Iterable[bytes]) -> AsyncIterator[bytes]:
    for b in it:
        yield b


class AsyncTemplates:
    """Templates visible to the team (``client.templates``)."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def list(self) -> List[Template]:
        """The team's templates and the public ones."""
        d = await self._c._json("GET", "/v1/templates")
        return [Template.from_dict(t) for t in d.get("templates", [])]

    async def get(self, template_id: str) -> Template:
        """One template by id (`tpl-…`; names are in list())."""
        return Template.from_dict(await self._c._json("GET", "/v1/templates/" + quote(template_id, safe="")))

    async def set_isolation(self, template_id: str, isolation: str) -> Template:
        """Set the default isolation of capsules created from one of the team's templates
        (``"container"``, ``"gvisor"``, ``"microvm"``; ``""`` clears it). Needs the team's admin role."""
        return Template.from_dict(await self._c._json("PATCH", "/v1/templates/" + quote(template_id, safe=""),
                                                      json_body={"isolation": isolation}))

    async def build(self, name: str, recipe: Optional[str] = None, context: Any = None, image: Any = None,
                    registry_auth: Optional[Dict[str, str]] = None, timeout_sec: Optional[int] = None) -> Build:
        """Start a team build of template ``name``: a Wrennfile ``recipe`` with an optional build ``context``
        (a tar: bytes or a binary file object), or an ``image`` tarball to import. The multipart body is
        streamed (files are read in chunks). Follow it with build_logs()."""
        boundary = "wrenn-" + secrets.token_hex(16)
        fields = [("name", name)]
        if recipe is not None:
            fields.append(("recipe", recipe))
        if registry_auth is not None:
            fields.append(("registry_auth", json.dumps(registry_auth)))
        if timeout_sec:
            fields.append(("timeout_sec", str(timeout_sec)))

        async def body() -> AsyncIterator[bytes]:
            for k, v in fields:
                yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n").encode() + v.encode() + b"\r\n"
            for k, src in (("context", context), ("image", image)):
                if src is None:
                    continue
                yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; filename=\"{k}.tar\"\r\n"
                       "Content-Type: application/octet-stream\r\n\r\n").encode()
                if isinstance(src, (bytes, bytearray, memoryview)):
                    yield bytes(src)
                else:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        yield chunk
                yield b"\r\n"
            yield f"--{boundary}--\r\n".encode()

        d = await self._c._json("POST", "/v1/templates/builds", content=body(),
                                content_type=f"multipart/form-data; boundary={boundary}")
        return Build.from_dict(d)

    async def builds(self) -> List[Build]:
        """The team's builds, newest first."""
        d = await self._c._json("GET", "/v1/templates/builds")
        return [Build.from_dict(b) for b in d.get("builds", [])]

    async def get_build(self, build_id: str) -> Build:
        """One of the team's builds."""
        return Build.from_dict(await self._c._json("GET", "/v1/templates/builds/" + quote(build_id, safe="")))

    async def cancel_build(self, build_id: str) -> Build:
        """Cancel a pending or running build (``conflict`` once it finished)."""
        return Build.from_dict(await self._c._json("POST", f"/v1/templates/builds/{quote(build_id, safe='')}/cancel"))

    async def build_logs(self, build_id: str, follow: bool = False) -> AsyncIterator[BuildLogRecord]:
        """Yield the build's log records; with ``follow`` as the build runs, until it ends."""
        resp = await self._c._send("GET", f"/v1/templates/builds/{quote(build_id, safe='')}/logs",
                                   query={"follow": "1" if follow else None}, stream=True, timeout=None)
        try:
            async for line in resp.aiter_lines():
                if line.strip():
                    yield BuildLogRecord.from_dict(json.loads(line))
        finally:
            await resp.aclose()
    async def delete(self, template_id: str) -> None:
        """Delete one of the team's own templates by id; capsules using it keep running."""
        await self._c._send("DELETE", "/v1/templates/" + quote(template_id, safe=""))


class AsyncBuilds:
    """Template builds (``client.builds``; platform admins only)."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(self, template_name: str, spec: BuildSpec, team_id: Optional[str] = None) -> Build:
        """Queue a build producing template ``template_name`` from ``spec`` (for ``team_id``, default the platform team)."""
        body: Dict[str, Any] = {"template_name": template_name, "spec": spec.to_dict()}
        if team_id:
            body["team_id"] = team_id
        return Build.from_dict(await self._c._json("POST", "/v1/admin/builds", json_body=body))

    async def list(self) -> List[Build]:
        """Every team's builds."""
        d = await self._c._json("GET", "/v1/admin/builds")
        return [Build.from_dict(b) for b in d.get("builds", [])]

    async def cancel(self, build_id: str) -> Build:
        """Cancel a pending or running build (``conflict`` when it already finished)."""
        return Build.from_dict(await self._c._json("POST", f"/v1/admin/builds/{quote(build_id, safe='')}/cancel"))


def _vpath(name: str) -> str:
    return "/v1/volumes/" + quote(name, safe="")


class AsyncVolumes:
    """The team's persistent volumes (``client.volumes``; docs/VOLUMES.md)."""

    def __init__(self, client: AsyncClient):
        self._c = client

    async def create(self, name: str, size_mb: Optional[int] = None) -> Volume:
        """Create an empty volume of ``size_mb`` (the quota; default 1024)."""
        body: Dict[str, Any] = {"name": name}
        if size_mb is not None:
            body["size_mb"] = size_mb
        return Volume.from_dict(await self._c._json("POST", "/v1/volumes", json_body=body))

    async def list(self) -> List[Volume]:
        """The team's volumes, by name."""
        d = await self._c._json("GET", "/v1/volumes")
        return [Volume.from_dict(v) for v in d.get("volumes", [])]

    async def get(self, name: str) -> Volume:
        """One volume, where it lives and the mounts holding it."""
        return Volume.from_dict(await self._c._json("GET", _vpath(name)))

    async def delete(self, name: str) -> None:
        """Delete the volume and its files (a :class:`ConflictError` while a capsule mounts it)."""
        await self._c._send("DELETE", _vpath(name))

    async def read(self, name: str, path: str) -> bytes:
        """A file of the volume (at most 64 MiB), with or without a capsule holding it."""
        resp = await self._c._send("GET", _vpath(name) + "/files", query={"path": path})
        return resp.content

    async def write(self, name: str, path: str, data: Union[bytes, str]) -> FileEntry:
        """Create or replace a file (at most 64 MiB; parents created). Data that does not
        fit raises an :class:`APIError` with ``code == "volume_full"`` (HTTP 507)."""
        if isinstance(data, str):
            data = data.encode()
        d = await self._c._json("PUT", _vpath(name) + "/files", query={"path": path}, content=data,
                                content_type="application/octet-stream")
        return FileEntry.from_dict(d)

    async def list_files(self, name: str, path: str = "/") -> List[FileEntry]:
        """The entries of a directory of the volume."""
        d = await self._c._json("GET", _vpath(name) + "/files/list", query={"path": path})
        return [FileEntry.from_dict(e) for e in d.get("entries", [])]

    async def remove(self, name: str, path: str) -> None:
        """Remove a file or directory tree of the volume."""
        await self._c._send("DELETE", _vpath(name) + "/files", query={"path": path})
