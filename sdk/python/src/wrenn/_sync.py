"""The synchronous Wrenn client.

websockets 10.4 (Debian 12) has only an asyncio client, so the sync client
runs an :class:`~wrenn.AsyncClient` on a private event loop in a daemon
thread and waits for each call: one code path, the same behaviour.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any, Dict, Iterator, List, Optional, Union

from . import _async, _events
from ._models import BuildLogRecord, CapsuleInfo, Event

__all__ = ["Client", "Capsules", "Capsule", "Files", "Processes", "Pty", "Templates", "Builds", "Events", "Webhooks", "Volumes"]


class _Loop:
    """An event loop running in its own daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="wrenn-sync", daemon=True)
        self.thread.start()

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _mirror(name: str, wrap=None):
    """A sync method that runs the async object's method ``name`` on the loop."""

    def method(self, *args: Any, **kwargs: Any) -> Any:
        r = self._loop.run(getattr(self._a, name)(*args, **kwargs))
        return wrap(self, r) if wrap else r

    return method


def _doc(async_cls: type, sync_cls: type) -> type:
    """Copy the async methods' docstrings onto the sync mirror."""
    for k, v in list(vars(sync_cls).items()):
        if callable(v) and not k.startswith("_") and not getattr(v, "__doc__", None):
            src = getattr(async_cls, k, None)
            v.__doc__ = (getattr(src, "__doc__", None) or "").replace("Async", "")
            v.__name__ = k
            v.__qualname__ = f"{sync_cls.__name__}.{k}"
    return sync_cls


class Client:
    """Synchronous client of a Wrenn control plane.

    ``url`` and ``api_key`` default to ``WRENN_URL`` and ``WRENN_API_KEY``
    (and ``url`` to ``http://127.0.0.1:9725``); ``timeout`` bounds connecting
    and each wait for data, in seconds. Nothing is retried.

    >>> c = wrenn.Client()
    >>> cap = c.capsules.create(template="minimal")
    >>> cap.exec("echo", "hi").stdout
    'hi\\n'
    >>> cap.delete()
    """

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *,
                 timeout: Optional[float] = 120.0, user_agent: Optional[str] = None):
        self._loop = _Loop()

        async def make() -> _async.AsyncClient:
            return _async.AsyncClient(url, api_key, timeout=timeout, user_agent=user_agent)

        self._a = self._loop.run(make())
        self.url = self._a.url
        """The control plane's base URL."""
        self.capsules = Capsules(self._loop, self._a.capsules)
        """Capsules: create, list, get (:class:`Capsules`)."""
        self.templates = Templates(self._loop, self._a.templates)
        """Templates (:class:`Templates`)."""
        self.builds = Builds(self._loop, self._a.builds)
        """Template builds, platform admins only (:class:`Builds`)."""
        self.events = Events(self._loop, self._a.events)
        """The team's event log and live stream (:class:`Events`)."""
        self.webhooks = Webhooks(self._loop, self._a.webhooks)
        """The team's webhook endpoints (:class:`Webhooks`)."""
        self.volumes = Volumes(self._loop, self._a.volumes)
        """Persistent volumes (:class:`Volumes`)."""
        self._closed = False

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections and stop its event-loop thread."""
        if self._closed:
            return
        self._closed = True
        self._loop.run(self._a.aclose())
        self._loop.stop()

    me = _mirror("me")
    health = _mirror("health")
    set_team_isolation = _mirror("set_team_isolation")


class _Wrapped:
    def __init__(self, loop: _Loop, a: Any):
        self._loop = loop
        self._a = a


def _capsule(self: _Wrapped, a: "_async.AsyncCapsule") -> "Capsule":
    return Capsule(self._loop, a)


class Capsules(_Wrapped):
    """Capsule operations of a :class:`Client` (``client.capsules``)."""

    create = _mirror("create", _capsule)
    get = _mirror("get", _capsule)
    list_page = _mirror("list_page")
    list = _mirror("list")
    delete = _mirror("delete")


class Capsule(_Wrapped):
    """A capsule and the calls that act on it; attributes of :class:`CapsuleInfo` (``id``, ``status``, …) read through.

    ``with client.capsules.create(...) as cap:`` deletes the capsule on exit.
    """

    def __init__(self, loop: _Loop, a: "_async.AsyncCapsule"):
        super().__init__(loop, a)
        self.files = Files(loop, a.files)
        """Files in the capsule (:class:`Files`)."""
        self.processes = Processes(loop, a.processes)
        """Background processes (:class:`Processes`)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_a"].info, name)

    def __repr__(self) -> str:
        return f"<Capsule {self._a.info.id} {self._a.info.status}>"

    def __enter__(self) -> "Capsule":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.run(self._a.__aexit__(*exc))

    @property
    def id(self) -> str:
        """The capsule's id (``cl-…``)."""
        return self._a.info.id

    @property
    def info(self) -> CapsuleInfo:
        """The capsule's last known state (:class:`CapsuleInfo`)."""
        return self._a.info

    refresh = _mirror("refresh")
    delete = _mirror("delete")
    pause = _mirror("pause")
    snapshot = _mirror("snapshot")
    fork = _mirror("fork")
    resume = _mirror("resume")
    set_timeout = _mirror("set_timeout")
    set_public = _mirror("set_public")
    set_network = _mirror("set_network")
    metrics = _mirror("metrics")
    exec = _mirror("exec")
    exec_stream = _mirror("exec_stream")
    pty = _mirror("pty", lambda self, a: Pty(self._loop, a))


class Pty(_Wrapped):
    """An open terminal in a capsule: :meth:`send` keystrokes, :meth:`recv` output, :meth:`resize`, :meth:`close`."""

    def __enter__(self) -> "Pty":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def pid(self) -> Optional[int]:
        """The terminal process's pid (known after its start message)."""
        return self._a.pid

    @property
    def exit_code(self) -> Optional[int]:
        """The exit code once the session ended, else None."""
        return self._a.exit_code

    send = _mirror("send")
    resize = _mirror("resize")
    recv = _mirror("recv")
    close = _mirror("close")


class Processes(_Wrapped):
    """Background processes of one capsule (``capsule.processes``)."""

    start = _mirror("start")
    list = _mirror("list")
    kill = _mirror("kill")
    attach = _mirror("attach")


class Files(_Wrapped):
    """Files of one capsule (``capsule.files``). Transfers are streamed both ways."""

    write = _mirror("write")
    upload = _mirror("upload")
    read = _mirror("read")
    read_text = _mirror("read_text")
    download = _mirror("download")
    list = _mirror("list")
    mkdir = _mirror("mkdir")
    remove = _mirror("remove")
    exists = _mirror("exists")

    def stream(self, path: str, chunk_size: int = _async._CHUNK) -> Iterator[bytes]:
        """Yield the file's bytes in chunks as they arrive (a body cut short raises, never looks like a short file)."""
        agen = self._a.stream(path, chunk_size)
        try:
            while True:
                try:
                    yield self._loop.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(agen.aclose())


class Templates(_Wrapped):
    """Templates visible to the team (``client.templates``)."""

    list = _mirror("list")
    get = _mirror("get")
    set_isolation = _mirror("set_isolation")
    build = _mirror("build")
    builds = _mirror("builds")
    get_build = _mirror("get_build")
    cancel_build = _mirror("cancel_build")

    def build_logs(self, build_id: str, follow: bool = False) -> Iterator["BuildLogRecord"]:
        """Yield the build's log records; with ``follow`` as the build runs, until it ends."""
        agen = self._a.build_logs(build_id, follow)
        try:
            while True:
                try:
                    yield self._loop.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(agen.aclose())
    delete = _mirror("delete")


class Builds(_Wrapped):
    """Template builds (``client.builds``; platform admins only)."""

    create = _mirror("create")
    list = _mirror("list")
    cancel = _mirror("cancel")


class Events(_Wrapped):
    """The team's life-cycle events (``client.events``): the ordered log and the live stream."""

    list_page = _mirror("list_page")
    list = _mirror("list")

    def stream(self, type: Optional[str] = None, subject: Optional[str] = None,
               last_event_id: Optional[str] = None) -> Iterator["Event"]:
        """Yield events as they happen (Server-Sent Events), after ``last_event_id`` when given. The
        stream never ends by itself: break out of the loop to stop (the connection is then closed)."""
        agen = self._a.stream(type, subject, last_event_id)
        try:
            while True:
                try:
                    yield self._loop.run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run(agen.aclose())


class Webhooks(_Wrapped):
    """The team's webhook endpoints (``client.webhooks``; team admins and owners)."""

    create = _mirror("create")
    list = _mirror("list")
    get = _mirror("get")
    update = _mirror("update")
    delete = _mirror("delete")
    test = _mirror("test")
    rotate_secret = _mirror("rotate_secret")
    deliveries_page = _mirror("deliveries_page")
    deliveries = _mirror("deliveries")


class Volumes(_Wrapped):
    """The team's persistent volumes (``client.volumes``; docs/VOLUMES.md)."""

    create = _mirror("create")
    list = _mirror("list")
    get = _mirror("get")
    delete = _mirror("delete")
    read = _mirror("read")
    write = _mirror("write")
    list_files = _mirror("list_files")
    remove = _mirror("remove")


for _a_cls, _s_cls in [(_events.AsyncEvents, Events), (_events.AsyncWebhooks, Webhooks), (_async.AsyncCapsules, Capsules), (_async.AsyncCapsule, Capsule), (_async.AsyncPty, Pty),
                       (_async.AsyncProcesses, Processes), (_async.AsyncFiles, Files),
                       (_async.AsyncTemplates, Templates), (_async.AsyncBuilds, Builds),
                       (_async.AsyncVolumes, Volumes),
                       (_async.AsyncClient, Client)]:
    _doc(_a_cls, _s_cls)
