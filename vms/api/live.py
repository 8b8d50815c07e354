"""Live view: an HLS playlist of the relayed segments, and WebRTC with the camera's H.264 as it is.

Media tokens in the URL: a browser ``<video>`` element (native HLS) cannot send an Authorization
header, so the playlist and segment routes, and only these two, also accept ``?token=...`` -- but
only a media token from ``POST /{device_id}/media-token``: short-lived (``live.media_token_ttl_s``),
for one device and the stream(s) named, signed by this hub (``vms.auth.MediaTokens``). A person's own
token in the query is refused (401), so it never ends up in browser history or proxy logs. A
playlist fetched with a media token carries it on every segment URI it lists. Everything else,
WebRTC signalling included, takes the bearer header only; the header wins over a query token.

Streams: every media route takes ``stream=main|sub``. ``sub`` is the camera's sub stream (子码流),
relayed for multi-tile walls when the agent has one. WebRTC refuses a stream with B-frames (409,
saying so): browsers' WebRTC decoders do not reorder frames and show such a stream at keyframes
only, so the page goes straight to HLS for it, or asks for the sub stream.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path as PathType
from typing import Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field

from vms.api.deps import DeviceIdPath, bearer, get_hub, require, unauthorized
from vms.auth import READERS, MediaTokenInvalid, MediaTokens, MediaTokenScope, Principal, Unauthenticated
from vms.errors import Conflict, NotFound
from vms.hub import Hub
from vms.kernel.timeutil import iso
from vms.live import NoLiveMedia
from vms.live.window import Entry, render_playlist

#: How long a viewer of a camera streamed on demand waits for its first segment: the lower platform's
#: answer and one segment (2 s, cut at a keyframe), under hls.js's 10 s playlist timeout.
ON_DEMAND_WAIT_S = 8.0


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    hub: Hub = app.state.hub
    hub.live.attach(asyncio.get_running_loop())
    try:
        yield
    finally:
        await hub.live.close()


router = APIRouter(prefix="/api/v1/live", tags=["live"], lifespan=_lifespan)
Stream = Literal["main", "sub"]
StreamQuery = Query("main", description="main, or sub: the camera's sub stream (子码流) for multi-tile walls")
_reader = require(*READERS)


_signer_lock = threading.Lock()


def media_tokens(request: Request) -> MediaTokens:
    """The app's media token signer, made on first use with a random key (per hub start)."""
    app = request.app
    signer: MediaTokens | None = getattr(app.state, "media_tokens", None)
    if signer is None:
        with _signer_lock:  # sync dependencies run in worker threads: one key per app
            signer = getattr(app.state, "media_tokens", None)
            if signer is None:
                hub = get_hub(request)
                signer = MediaTokens(hub.cfg.live.media_token_ttl_s, clock=hub.clock)
                app.state.media_tokens = signer
    return signer


@dataclass(frozen=True)
class MediaAccess:
    """Who fetches a live media route, and the media token they used (None: the bearer header)."""

    principal: Principal
    media_token: str | None


def media_reader(
    request: Request,
    device_id: str = DeviceIdPath,
    stream: Stream = StreamQuery,
    token: str | None = Query(None, max_length=4096, description="Media token, for players that cannot set headers"),
    creds: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> MediaAccess:
    """``require(*READERS)`` by the bearer header, or a media token for this device and stream in ``?token=``.

    A media token's holder must still hold a valid token of a reader role: revoking it stops its
    media tokens too. Blocking on a token cache miss (a sync dependency: a worker thread)."""
    if creds is not None or not token:
        return MediaAccess(_reader(request, creds), None)
    try:
        who = signed_reader(request, token, device_id, stream, "watch live video")
    except MediaTokenScope as exc:
        raise HTTPException(403, str(exc)) from None
    except MediaTokenInvalid as exc:
        raise unauthorized(str(exc)) from None
    return MediaAccess(who, token)


def signed_reader(request: Request, token: str, scope: str, stream: str, may: str) -> Principal:
    """The reader a token signed by this hub (a media token, an event-stream ticket) was issued to, for
    ``stream`` of ``scope``, while that person's own token is valid: revoking it stops what it was
    issued too. Raises :class:`MediaTokenInvalid` or :class:`MediaTokenScope` for the caller to answer;
    401 when the person's token is revoked or expired, 403 for a role that may not ``may``."""
    grant = media_tokens(request).verify(token, scope, stream)
    try:
        who = get_hub(request).tokens.holder(grant.token_id)
    except Unauthenticated as exc:
        raise unauthorized(str(exc)) from None
    if who.role not in _reader.roles:  # type: ignore[attr-defined]
        raise HTTPException(403, f"role {who.role.value!r} may not {may}")
    request.state.principal = who
    return who


media_reader.roles = _reader.roles  # type: ignore[attr-defined]


def _known(hub: Hub, device_id: str) -> None:
    """Blocking (the registry's lock): call in a worker thread, like every store or lock of these routes."""
    if not hub.registry.known(device_id):
        raise NotFound(f"unknown device {device_id}")


def _window(hub: Hub, device_id: str, stream: Stream, check: bool) -> tuple[int, list[Entry], int]:
    """(version, entries, target duration) of a live stream, the version taken before the window is read;
    ``check`` first refuses an unknown device. Blocking: the registry's lock and a store read."""
    if check:
        _known(hub, device_id)
    seen = hub.live.version(device_id, stream)
    entries, target = hub.live.live_entries(device_id, stream)  # NoLiveMedia: 409
    return seen, entries, target


async def _window_waiting(hub: Hub, device_id: str, stream: Stream) -> tuple[int, list[Entry], int]:
    """``_window`` (unknown device refused); a camera streamed on demand (a lower platform's, through
    the cascade) gets up to ``ON_DEMAND_WAIT_S`` for its first segment before the viewer is told there
    is no live media."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ON_DEMAND_WAIT_S
    check = True
    while True:
        seen = hub.live.version(device_id, stream)
        try:
            return await asyncio.to_thread(_window, hub, device_id, stream, check)
        except NoLiveMedia:
            left = deadline - loop.time()
            if left <= 0 or not hub.live.on_demand(device_id, stream):
                raise
        check = False
        await hub.live.wait_news(device_id, left, since=seen, stream=stream)


@router.get(
    "/{device_id}/index.m3u8",
    response_class=Response,
    responses={
        200: {"content": {"application/vnd.apple.mpegurl": {}}, "description": "HLS media playlist"},
        404: {"description": "unknown device"},
        409: {"description": "no live media"},
    },
)
async def playlist(
    device_id: str = DeviceIdPath,
    hls_msn: int | None = Query(None, alias="_HLS_msn", ge=0, description="Blocking reload: wait for this segment"),
    stream: Stream = StreamQuery,
    hub: Hub = Depends(get_hub),
    access: MediaAccess = Depends(media_reader),
) -> Response:
    """The newest segments as a live HLS playlist; with ``_HLS_msn`` waits until that segment exists."""
    seen, entries, target = await _window_waiting(hub, device_id, stream)
    if hls_msn is not None:
        last = entries[-1].seq
        if hls_msn > last + 2:
            raise HTTPException(400, f"_HLS_msn {hls_msn} is too far ahead of the newest segment {last}")
        deadline = asyncio.get_running_loop().time() + 3 * target
        while hls_msn > last and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await hub.live.wait_news(device_id, left, since=seen, stream=stream)
            seen, entries, target = await asyncio.to_thread(_window, hub, device_id, stream, False)
            last = entries[-1].seq
    return Response(
        render_playlist(entries, target, access.media_token, stream),
        media_type="application/vnd.apple.mpegurl",
        headers={"Cache-Control": "no-cache"},
    )


@router.get(
    "/{device_id}/segments/{segment_id}.ts",
    response_class=FileResponse,
    responses={200: {"content": {"video/mp2t": {}}}, 404: {"description": "not a live segment of this device"}},
)
async def segment(
    device_id: str = DeviceIdPath,
    segment_id: int = Path(ge=1, le=2**62),
    stream: Stream = StreamQuery,
    hub: Hub = Depends(get_hub),
    _: MediaAccess = Depends(media_reader),
) -> FileResponse:
    """A segment listed in the live playlist; older footage is pulled through the archive."""

    def find() -> PathType:
        _known(hub, device_id)
        path = hub.live.segment_path(device_id, segment_id, stream)  # the window's lock
        if path is None:
            raise NotFound(f"segment {segment_id} is not in the live window of {device_id} ({stream} stream)")
        if not path.is_file():
            raise NotFound(f"segment {segment_id} of {device_id} is gone (deleted by retention?)")
        return path

    path = await asyncio.to_thread(find)
    return FileResponse(path, media_type="video/mp2t", headers={"Cache-Control": "private, max-age=60"})


class MediaToken(BaseModel):
    """A media token for the ``?token=`` of this device's playlist and segment URLs."""

    token: str
    device_id: str
    streams: list[Stream]
    expires_at: str
    ttl_s: float = Field(description="Lifetime in seconds: fetch a new token before half of it has passed")


@router.post(
    "/{device_id}/media-token",
    response_model=MediaToken,
    responses={404: {"description": "unknown device"}},
)
def media_token(
    request: Request,
    device_id: str = DeviceIdPath,
    stream: Stream | None = Query(None, description="The one stream the token allows; both when absent"),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(*READERS)),
) -> MediaToken:
    """A short-lived token for this device's live HLS URLs (``?token=``), so no person's token goes in a URL.

    Not audited: it grants only what the caller's own token already may (watch this camera live),
    and pages fetch one per tile every few minutes; the caller is in its payload. Sync: a worker thread."""
    _known(hub, device_id)
    signer = media_tokens(request)
    grant = signer.issue(who, device_id, (stream,) if stream else ("main", "sub"))
    return MediaToken(token=signer.encode(grant), device_id=device_id, streams=list(grant.streams),
                      expires_at=iso(grant.expires_at), ttl_s=signer.ttl_s)


class Offer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sdp: str = Field(min_length=10, max_length=100_000)
    type: Literal["offer"]


class Answer(BaseModel):
    sdp: str
    type: Literal["answer"] = "answer"


@router.post(
    "/{device_id}/webrtc",
    response_model=Answer,
    responses={
        400: {"description": "unusable offer"},
        404: {"description": "unknown device"},
        409: {"description": "no live media, or the stream has B-frames (use HLS or the sub stream)"},
        503: {"description": "viewer limit reached"},
    },
)
async def webrtc(
    body: Offer,
    device_id: str = DeviceIdPath,
    stream: Stream = StreamQuery,
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> Answer:
    """WebRTC signalling in one round trip: post the offer (ICE gathered), get the answer."""
    _v, entries, _t = await _window_waiting(hub, device_id, stream)
    fmt = entries[-1].fmt
    if fmt is not None and fmt.bframes:
        sub = "" if stream == "sub" else " or ask for its sub stream (stream=sub)"
        raise Conflict(
            f"the {stream} stream of {device_id} has B-frames, which browsers' WebRTC decoders show only at "
            f"keyframes, so the hub does not offer it over WebRTC: play it over HLS{sub}",
        )
    sdp = await hub.live.viewers.answer(device_id, body.sdp, stream)  # OfferError: 400, ViewerLimit: 503
    return Answer(sdp=sdp)


class StreamStatus(BaseModel):
    """One stream of a camera: live or why not, its newest segment, and where to play it."""

    live: bool
    reason: str | None = Field(description="Why the stream is not live (None when it is)")
    newest_segment_end: str | None
    age_s: float | None = Field(description="Seconds since the newest segment's end")
    width: int | None
    height: int | None
    bframes: bool | None = Field(description="True: WebRTC refuses this stream, play it over HLS")
    hls: str
    webrtc: str


class LiveStatus(BaseModel):
    """The main stream's status at the top level, the sub stream's under ``sub``."""

    device_id: str
    live: bool
    reason: str | None
    newest_segment_end: str | None
    age_s: float | None
    width: int | None
    height: int | None
    bframes: bool | None
    hls: str
    webrtc: str
    webrtc_viewers: int
    sub: StreamStatus


def _stream_status(hub: Hub, device_id: str, stream: Stream) -> StreamStatus:
    """Blocking (a store read): call in a worker thread."""
    live, reason, newest = True, None, None
    try:
        entries, _t = hub.live.live_entries(device_id, stream)
        newest = entries[-1]
    except NoLiveMedia as exc:
        live, reason = False, str(exc)
        newest = hub.live.sync(device_id, stream).newest
    seg, fmt = (newest.seg, newest.fmt) if newest else (None, None)
    age = hub.clock() - seg.end if seg else None
    query = "" if stream == "main" else "?stream=sub"
    return StreamStatus(
        live=live,
        reason=reason,
        newest_segment_end=iso(seg.end) if seg else None,
        age_s=round(age, 3) if age is not None and math.isfinite(age) else None,
        width=fmt.width if fmt else None,
        height=fmt.height if fmt else None,
        bframes=fmt.bframes if fmt else None,
        hls=f"/api/v1/live/{device_id}/index.m3u8{query}",
        webrtc=f"/api/v1/live/{device_id}/webrtc{query}",
    )


@router.get("/{device_id}", response_model=LiveStatus, responses={404: {"description": "unknown device"}})
async def status(
    device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))
) -> LiveStatus:
    """Whether the camera has live media now (main stream at the top level, ``sub`` for its sub stream).

    ``bframes`` true means WebRTC refuses that stream (browsers show it at keyframes only): use HLS.
    """

    def read() -> tuple[StreamStatus, StreamStatus]:
        _known(hub, device_id)
        return _stream_status(hub, device_id, "main"), _stream_status(hub, device_id, "sub")

    main, sub = await asyncio.to_thread(read)
    viewers = hub.live.viewer_count(device_id)  # the viewers live on this loop: counted here
    return LiveStatus(device_id=device_id, **main.model_dump(), webrtc_viewers=viewers, sub=sub)
