"""The event log, the live event stream and webhook endpoints (docs/EVENTS.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, List, Optional
from urllib.parse import quote

from ._models import Event, EventPage, Webhook, WebhookDelivery, WebhookDeliveryPage

if TYPE_CHECKING:  # pragma: no cover
    from ._async import AsyncClient

__all__ = ["AsyncEvents", "AsyncWebhooks"]


class AsyncEvents:
    """The team's life-cycle events (``client.events``): the ordered log and the live stream."""

    def __init__(self, client: "AsyncClient"):
        self._c = client

    async def list_page(self, type: Optional[str] = None, subject: Optional[str] = None,
                        cursor: Optional[str] = None, limit: Optional[int] = None) -> EventPage:
        """One page of the log, oldest first after ``cursor`` (an event id), filtered by ``type`` (e.g.
        ``capsule.created``) and ``subject`` (a capsule, build or host id)."""
        d = await self._c._json("GET", "/v1/events",
                                query={"type": type, "subject": subject, "cursor": cursor, "limit": limit})
        return EventPage.from_dict(d)

    async def list(self, type: Optional[str] = None, subject: Optional[str] = None,
                   cursor: Optional[str] = None) -> List[Event]:
        """Every event of the log after ``cursor`` (all pages), oldest first."""
        out: List[Event] = []
        while True:
            page = await self.list_page(type=type, subject=subject, cursor=cursor, limit=1000)
            out.extend(page.events)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor

    async def stream(self, type: Optional[str] = None, subject: Optional[str] = None,
                     last_event_id: Optional[str] = None) -> AsyncIterator[Event]:
        """Yield events as they happen (Server-Sent Events), after ``last_event_id`` when given (the
        stream first replays what the log holds after it). The stream never ends by itself: break out
        of the loop to stop. To resume after a disconnection, pass the last event's ``id``."""
        resp = await self._c._send("GET", "/v1/events/stream",
                                   query={"type": type, "subject": subject, "last_event_id": last_event_id},
                                   stream=True, timeout=None)
        try:
            data: List[str] = []
            async for line in resp.aiter_lines():
                line = line.rstrip("\r\n")  # httpx < 0.24 keeps the line ending
                if line == "":
                    if data:
                        yield Event.from_dict(json.loads("\n".join(data)))
                    data = []
                elif line.startswith(":"):
                    continue  # keep-alive comment
                else:
                    key, _, value = line.partition(":")
                    if key == "data":
                        data.append(value[1:] if value.startswith(" ") else value)
        finally:
            await resp.aclose()


class AsyncWebhooks:
    """The team's webhook endpoints (``client.webhooks``; team admins and owners)."""

    def __init__(self, client: "AsyncClient"):
        self._c = client

    @staticmethod
    def _path(webhook_id: str, tail: str = "") -> str:
        return "/v1/webhooks/" + quote(webhook_id, safe="") + tail

    async def create(self, url: str, event_types: Optional[List[str]] = None, enabled: bool = True) -> Webhook:
        """Add an endpoint. The answer's ``secret`` signs every delivery and is shown this once.
        ``event_types`` empty or None: every type."""
        body: Dict[str, Any] = {"url": url, "enabled": enabled}
        if event_types:
            body["event_types"] = list(event_types)
        return Webhook.from_dict(await self._c._json("POST", "/v1/webhooks", json_body=body))

    async def list(self) -> List[Webhook]:
        """The team's endpoints (no secrets)."""
        d = await self._c._json("GET", "/v1/webhooks")
        return [Webhook.from_dict(w) for w in d.get("webhooks", [])]

    async def get(self, webhook_id: str) -> Webhook:
        """One endpoint (no secret)."""
        return Webhook.from_dict(await self._c._json("GET", self._path(webhook_id)))

    async def update(self, webhook_id: str, url: Optional[str] = None, event_types: Optional[List[str]] = None,
                     enabled: Optional[bool] = None) -> Webhook:
        """Change the URL, the event types (``[]``: every type) or enabled; None leaves a field as it is."""
        body: Dict[str, Any] = {}
        if url is not None:
            body["url"] = url
        if event_types is not None:
            body["event_types"] = list(event_types)
        if enabled is not None:
            body["enabled"] = enabled
        return Webhook.from_dict(await self._c._json("PATCH", self._path(webhook_id), json_body=body))

    async def delete(self, webhook_id: str) -> None:
        """Remove the endpoint and its queued deliveries."""
        await self._c._send("DELETE", self._path(webhook_id))

    async def test(self, webhook_id: str) -> WebhookDelivery:
        """Queue a signed ``webhook.test`` delivery to the endpoint."""
        return WebhookDelivery.from_dict(await self._c._json("POST", self._path(webhook_id, "/test")))

    async def rotate_secret(self, webhook_id: str) -> str:
        """Replace the signing secret and return the new one (shown this once)."""
        d = await self._c._json("POST", self._path(webhook_id, "/rotate-secret"))
        return d["secret"]

    async def deliveries_page(self, webhook_id: str, cursor: Optional[str] = None,
                              limit: Optional[int] = None) -> WebhookDeliveryPage:
        """One page of the endpoint's deliveries, newest first."""
        d = await self._c._json("GET", self._path(webhook_id, "/deliveries"), query={"cursor": cursor, "limit": limit})
        return WebhookDeliveryPage.from_dict(d)

    async def deliveries(self, webhook_id: str) -> List[WebhookDelivery]:
        """Every delivery of the endpoint still kept, newest first."""
        out: List[WebhookDelivery] = []
        cursor: Optional[str] = None
        while True:
            page = await self.deliveries_page(webhook_id, cursor=cursor, limit=500)
            out.extend(page.deliveries)
            if not page.next_cursor:
                return out
            cursor = page.next_cursor
