"""Server-sent events for the web pages: device states, center figures and alerts, pushed.

``GET /api/v1/events`` opens a ``text/event-stream``. The first message is a ``snapshot`` (the
center tree, the dark or degraded cameras longest first, active alerts); after it come

- ``devices``: the devices whose state changed in a tick (full device views);
- ``summary``: the center tree and the problem list again, after any device change;
- ``alerts``: alerts opened, grown, acknowledged or resolved, with the active count;
- ``sites``: a site became covered or uncovered: the blind spots now, longest first (``layout``:
  sites or camera placements were edited, the map reloads them);
- ``resync``: the client fell behind; it reconnects and gets a fresh snapshot.

A comment line every 15 s keeps proxies from closing the stream; the token is checked again then,
so a revoked or expired token loses its stream within seconds. One token may have at most
``server.max_event_streams_per_token`` streams open (429 beyond), so a leaked token cannot take
every stream of the hub.

The browser's ``EventSource`` cannot send an ``Authorization`` header, so this route also takes a
*ticket* as ``?token=``: a short-lived signed token for the event stream only, fetched with the
person's token in the header (``POST /api/v1/events/ticket``), so no person's token goes in a URL
(browser history, proxy logs). A person's token in the query is refused (401, saying what to do).
The ticket is worth no more than the token it was issued to: the stream checks that token again
every 15 s. A header still works and wins when both are given.

Payloads are built once per change by one feed task and shared by every client; each client has
a bounded queue, and one that falls behind is told to resync rather than buffered without limit.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from sqlalchemy import func, select
from starlette.types import Receive, Scope, Send

from vms.api.alerts import alert_view
from vms.api.deps import bearer, get_hub, require, unauthorized
from vms.api.live import media_tokens, signed_reader
from vms.auth import READERS, MediaTokenInvalid, MediaTokenScope, Principal, Unauthenticated
from vms.db.models import Alert
from vms.events import Event, EventBus
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1", tags=["events"])

PING_S = 15.0
MAX_CLIENTS = 64
PROBLEMS_SHOWN = 100
ALERTS_SHOWN = 100
MAX_DEVICES_PER_EVENT = 500
BLIND_SPOTS_SHOWN = 100
_check_reader = require(*READERS)


#: The scope of an event-stream ticket (a media token whose "device" is no device: IDs are 20 digits).
EVENTS = "events"
USE_TICKET = ("a bearer token is not accepted in the URL: get a ticket (POST /api/v1/events/ticket) and pass "
              "it as ?token=, or send the token in the Authorization header")


def reader_by_header_or_query(
    request: Request,
    token: str | None = Query(None, max_length=4096, description="A ticket (POST /api/v1/events/ticket): "
                              "EventSource cannot send headers"),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    """A reader by the bearer header, or by an event-stream ticket in ``?token=``. Blocking on a token
    cache miss (a sync dependency: a worker thread)."""
    if creds is not None or not token:
        return _check_reader(request, creds)
    try:
        return signed_reader(request, token, EVENTS, EVENTS, "read the event stream")
    except MediaTokenInvalid as exc:
        raise unauthorized(USE_TICKET if token.startswith("vms_") else f"ticket refused: {exc}") from None
    except MediaTokenScope as exc:
        raise unauthorized(f"ticket refused: {exc}") from None


reader_by_header_or_query.roles = _check_reader.roles  # type: ignore[attr-defined]


class Ticket(BaseModel):
    """A ticket for ``GET /api/v1/events?token=``: fetch one right before opening the stream."""

    ticket: str
    expires_at: str
    ttl_s: float


@router.post("/events/ticket", response_model=Ticket)
def events_ticket(request: Request, who: Principal = Depends(_check_reader)) -> Ticket:
    """A short-lived ticket to open the event stream with (EventSource sends no headers, and no person's
    token may go in a URL). Not audited: it grants only what the caller's token already may."""
    signer = media_tokens(request)
    grant = signer.issue(who, EVENTS, (EVENTS,))
    return Ticket(ticket=signer.encode(grant), expires_at=iso(grant.expires_at), ttl_s=signer.ttl_s)


def sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


# -- payloads ------------------------------------------------------------------------------------
def summary(hub: Hub) -> dict[str, Any]:
    """The center tree, counters and the dark or degraded cameras, longest first."""
    total, problems, counts = hub.snapshots.problems(PROBLEMS_SHOWN)
    return {
        "now": iso(hub.clock()),
        "centers": hub.snapshots.centers(),
        "counts": counts,
        "problems": {"total": total, "devices": [d.model_dump() for d in problems]},
    }


def alerts_payload(hub: Hub, ids: list[int] | None) -> dict[str, Any]:
    """Alerts by id (or the active ones, newest first) and the active count."""
    with hub.sessions() as s:
        q = select(Alert)
        q = q.where(Alert.id.in_(ids)) if ids is not None else q.where(Alert.state != "resolved")
        rows = s.scalars(q.order_by(Alert.id.desc()).limit(ALERTS_SHOWN)).all()
        active = s.scalar(select(func.count()).select_from(Alert).where(Alert.state != "resolved"))
        return {"active": active, "alerts": [alert_view(r) for r in rows]}


def snapshot(hub: Hub, who: Principal) -> dict[str, Any]:
    return {"me": {"name": who.name, "role": who.role.value}, **summary(hub), **alerts_payload(hub, None)}


def render_change(hub: Hub, data: dict[str, Any], at: float) -> list[str]:
    """SSE messages for one raw change notice from the hub, published at ``at`` (Unix s)."""
    out: list[str] = []
    changed: list[str] = data.get("devices") or []
    if len(changed) > MAX_DEVICES_PER_EVENT:
        return [sse("resync", {"reason": f"{len(changed)} devices changed at once"})]
    if changed:
        views = [d.model_dump() for d in hub.snapshots.devices_by_id(changed)]
        out.append(sse("devices", {"at": at, "devices": views}))
        out.append(sse("summary", summary(hub)))
    if "sites" in data:
        out.append(sse("sites", {"changed": data["sites"][:MAX_DEVICES_PER_EVENT], "layout": bool(data.get("layout")),
                                 "blind_spots": hub.coverage.blind_spots(BLIND_SPOTS_SHOWN)}))
    alert_ids = [a for a in (data.get("alerts") or []) if a is not None]
    if alert_ids:
        out.append(sse("alerts", alerts_payload(hub, sorted(set(alert_ids)))))
    return out


# -- the feed: one per app -------------------------------------------------------------------------
class Feed:
    """Reads the hub's change notices and publishes rendered messages to the clients' bus."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.clients = EventBus()
        self.task: asyncio.Task[None] | None = None
        self.per_token: dict[str, int] = {}  # open streams by token ID (touched on the event loop only)

    def take(self, who: Principal) -> Callable[[], None]:
        """Count a stream against ``who``'s token; the returned callable gives it back. 429 over the limit."""
        limit = self.hub.cfg.server.max_event_streams_per_token
        if self.per_token.get(who.token_id, 0) >= limit:
            raise HTTPException(429, f"token {who.name!r} has {limit} event streams open "
                                "(server.max_event_streams_per_token); close a page first",
                                headers={"Retry-After": "5"})
        self.per_token[who.token_id] = self.per_token.get(who.token_id, 0) + 1

        def give_back() -> None:
            left = self.per_token.pop(who.token_id, 1) - 1
            if left > 0:
                self.per_token[who.token_id] = left

        return give_back

    def ensure_running(self) -> None:
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run(), name="vms-web-feed")

    async def run(self) -> None:
        sub = self.hub.events.subscribe(1024)
        try:
            while True:
                ev = await sub.get()
                if ev.kind == "overflow":
                    self.hub.events.unsubscribe(sub)
                    sub = self.hub.events.subscribe(1024)
                    self.clients.publish("message", sse("resync", {"reason": "feed fell behind"}))
                    continue
                for msg in await asyncio.to_thread(render_change, self.hub, ev.data or {}, ev.at):
                    self.clients.publish("message", msg)
        finally:
            self.hub.events.unsubscribe(sub)


class _CountedStream(StreamingResponse):
    """A stream that gives its slot back when the response ends, however it ends (even before the
    body starts, which a generator's ``finally`` would miss)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def feed_of(request: Request) -> Feed:
    feed: Feed | None = getattr(request.app.state, "web_feed", None)
    if feed is None:
        feed = Feed(get_hub(request))
        request.app.state.web_feed = feed
    feed.ensure_running()
    return feed


@router.get("/events", response_class=StreamingResponse, include_in_schema=False)
async def events(request: Request, who: Principal = Depends(reader_by_header_or_query)) -> StreamingResponse:
    """The push stream (``text/event-stream``); see the module docstring for the messages.

    Left out of the OpenAPI schema: it never ends, so generated clients and fuzzers would hang.
    """
    hub = get_hub(request)
    feed = feed_of(request)
    if feed.clients.subscribers >= MAX_CLIENTS:
        raise HTTPException(503, f"at most {MAX_CLIENTS} event streams at once", headers={"Retry-After": "5"})
    release = feed.take(who)

    async def stream() -> AsyncIterator[str]:
        sub = feed.clients.subscribe(64)  # before the snapshot, so no change falls between them
        try:
            yield f"retry: 2000\n: {' ' * 2048}\n\n"  # padding flushes small-buffering proxies
            yield sse("snapshot", await asyncio.to_thread(snapshot, hub, who))
            while True:
                try:
                    ev: Event = await asyncio.wait_for(sub.get(), PING_S)
                except TimeoutError:
                    try:  # the person's token (header, or the one the ticket was issued to) still valid
                        await asyncio.to_thread(hub.tokens.holder, who.token_id)
                    except Unauthenticated as exc:
                        yield sse("auth", {"reason": str(exc)})
                        return
                    yield f": ping {math.floor(hub.clock())}\n\n"
                    continue
                if ev.kind == "overflow":
                    yield sse("resync", {"reason": "client fell behind"})
                    return
                yield ev.data
        finally:
            feed.clients.unsubscribe(sub)

    return _CountedStream(
        stream(),
        release,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
