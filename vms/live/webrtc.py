"""WebRTC live view: the camera's own H.264 access units, re-timed and sent by aiortc.

Nothing is decoded or encoded at the hub. Per camera and stream, one :class:`PacketSource` reads each new
segment from the live window and releases its packets at the pace of their decode timestamps;
every viewer's :class:`PacketTrack` gets the same ``av.Packet`` objects, which aiortc's H.264
sender packs into RTP as they are (``RTCRtpSender`` calls ``encoder.pack`` for packets).

Latency: a segment reaches the hub only once the agent has closed it, so the picture is about one
segment length (plus upload time) behind the camera; shorter agent segments mean lower latency.

Timestamps are rewritten onto one continuous 90 kHz line per source, so a camera reconnect (PTS
back to zero) or a gap never makes RTP timestamps jump backwards. A viewer starts at a keyframe
and, if it falls behind (queue full), drops to the next keyframe rather than showing a smeared
picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aioice.ice
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription

from vms.errors import DomainError, Unavailable

if TYPE_CHECKING:
    from vms.live.relay import LiveRelay

log = logging.getLogger(__name__)

TB = fractions.Fraction(1, 90_000)
#: Packets a viewer may lag behind before it skips to the next keyframe (about 10 s at 25 fps).
QUEUE_PACKETS = 250
#: A segment that starts this late (seconds) against the pacing clock re-anchors the clock.
LATE_S = 0.5
#: Largest believable step between consecutive decode timestamps; more is a discontinuity.
MAX_STEP = 5 * 90_000
#: A peer connection not connected this long after the answer is closed.
CONNECT_TIMEOUT_S = 20.0


class OfferError(DomainError, ValueError):
    """The offer cannot be answered; the message says why (a plain refusal: HTTP 400)."""


class ViewerLimit(Unavailable):
    """Too many viewers for now."""


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer only ``addresses`` as ICE host candidates in this process (empty: every interface).

    aioice otherwise offers every interface address except loopback; a hub with several networks
    should offer only the one duty officers reach.
    """
    if addresses:
        fixed = list(addresses)
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(fixed)


@dataclass(frozen=True)
class _Pkt:
    data: bytes
    pts: int
    dts: int
    key: bool


def read_packets(path: Path) -> tuple[str, list[_Pkt]]:
    """The codec and the video packets of a segment file, timestamps in 90 kHz."""
    out: list[_Pkt] = []
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        codec = st.codec_context.name
        tb = st.time_base or TB
        for p in c.demux(st):
            if not p.size or p.pts is None:
                continue
            pts = round(p.pts * tb / TB)
            dts = round(p.dts * tb / TB) if p.dts is not None else pts
            out.append(_Pkt(bytes(p), pts, dts, p.is_keyframe))
    return codec, out


def _from_keyframe(pkts: list[_Pkt], behind_s: float) -> list[_Pkt]:
    """The packets from the last keyframe at most ``behind_s`` seconds into the segment."""
    if not pkts or behind_s <= 0:
        return pkts
    limit = pkts[0].dts + behind_s * 90_000
    start = 0
    for i, p in enumerate(pkts):
        if p.dts > limit:
            break
        if p.key:
            start = i
    return pkts[start:]


class PacketTrack(MediaStreamTrack):
    """One viewer's video track: encoded packets from the camera's shared source."""

    kind = "video"

    def __init__(self, source: PacketSource) -> None:
        super().__init__()
        self.source = source
        self._q: asyncio.Queue[av.Packet | None] = asyncio.Queue(QUEUE_PACKETS)
        self._need_key = True
        self.sent = 0
        self.skipped = 0

    def push(self, pkt: av.Packet, key: bool) -> None:
        if self._need_key and not key:
            return
        if self._q.full():
            self.skipped += 1
            self._need_key = True
            while not self._q.empty():
                self._q.get_nowait()
            if not key:
                return
        self._need_key = False
        self._q.put_nowait(pkt)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        pkt = await self._q.get()
        if pkt is None:
            raise MediaStreamError
        self.sent += 1
        return pkt

    def stop(self) -> None:
        if self.readyState == "live":
            self.source.unsubscribe(self)
            while not self._q.empty():
                self._q.get_nowait()
            self._q.put_nowait(None)
        super().stop()


class PacketSource:
    """Paces one camera's packets from its live segments and fans them out to its viewers."""

    def __init__(self, relay: LiveRelay, device_id: str, stream: str = "main") -> None:
        self.relay = relay
        self.device_id = device_id
        self.stream = stream
        self.tracks: set[PacketTrack] = set()
        self.task: asyncio.Task[None] | None = None
        self.packets = 0
        self.stalls = 0
        # Output timeline (90 kHz): out = in + shift, continuous across segments and restarts.
        self._shift: int | None = None
        self._last_in: int | None = None
        self._last_out = 0
        self._step = 3600
        self._anchor: tuple[float, int] | None = None  # (loop time, output DTS) paired

    def subscribe(self) -> PacketTrack:
        t = PacketTrack(self)
        self.tracks.add(t)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(), name=f"live-{self.device_id}-{self.stream}")
        return t

    def unsubscribe(self, t: PacketTrack) -> None:
        self.tracks.discard(t)
        if not self.tracks and self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_seq: int | None = None
        try:
            while self.tracks:
                seen = self.relay.version(self.device_id, self.stream)
                w = await asyncio.to_thread(self.relay.sync, self.device_id, self.stream)
                with w.lock:
                    entries = list(w.entries)
                todo = entries[-1:] if next_seq is None else [e for e in entries if e.seq >= next_seq]
                if not todo:
                    await self.relay.wait_news(
                        self.device_id, self.relay.cfg.stale_after_s, since=seen, stream=self.stream
                    )
                    continue
                for e in todo:
                    if next_seq is not None and (e.discontinuity or e.seq != next_seq):
                        self._last_in = None  # a new timeline follows
                    next_seq = e.seq + 1
                    try:
                        codec, pkts = await asyncio.to_thread(read_packets, e.seg.path)
                    except (OSError, av.FFmpegError, IndexError) as exc:
                        log.warning("live %s: cannot read segment %s: %s", self.device_id, e.seg.id, exc)
                        continue
                    if codec != "h264":
                        log.warning(
                            "live %s: segment %s is %s; WebRTC passes H.264 only", self.device_id, e.seg.id, codec
                        )
                        continue
                    if self._anchor is None:
                        # Joining: this segment's content is behind by the time since it arrived;
                        # start at the keyframe nearest the live edge instead of its beginning.
                        pkts = _from_keyframe(pkts, self.relay.clock() - e.seg.received_at)
                    await self._play(pkts, loop)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("live %s: packet source failed", self.device_id)
            for t in list(self.tracks):
                t.stop()

    async def _play(self, pkts: list[_Pkt], loop: asyncio.AbstractEventLoop) -> None:
        for i, p in enumerate(pkts):
            step = None if self._last_in is None else p.dts - self._last_in
            if self._shift is None or step is None or not 0 < step <= MAX_STEP:
                # A new timeline: continue one frame after the last packet sent.
                self._shift = self._last_out + self._step - p.dts
                self._anchor = None
            else:
                self._step = min(step, 9000)
            self._last_in = p.dts
            out_dts = p.dts + self._shift
            now = loop.time()
            late = self._anchor is not None and self._anchor[0] + (out_dts - self._anchor[1]) / 90_000 < now - LATE_S
            if self._anchor is None or (i == 0 and late):
                self.stalls += self._anchor is not None  # the segment came later than its turn
                self._anchor = (now, out_dts)
            due = self._anchor[0] + (out_dts - self._anchor[1]) / 90_000
            if due > now:
                await asyncio.sleep(due - now)
            pkt = av.Packet(p.data)
            pkt.pts, pkt.dts, pkt.time_base = p.pts + self._shift, out_dts, TB
            self._last_out = out_dts
            self.packets += 1
            for t in list(self.tracks):
                t.push(pkt, p.key)


@dataclass(eq=False)
class _Session:
    device_id: str
    stream: str
    pc: RTCPeerConnection
    track: PacketTrack
    timer: asyncio.TimerHandle | None = None
    closed: bool = field(default=False)


class Viewers:
    """All WebRTC sessions of the hub: bounded, one packet source per camera."""

    def __init__(self, relay: LiveRelay) -> None:
        self.relay = relay
        self.sources: dict[tuple[str, str], PacketSource] = {}  # (device ID, stream)
        self.sessions: set[_Session] = set()
        self._closed_stalls = 0
        restrict_host_addresses(relay.cfg.ice_addresses)

    def stalls(self) -> int:
        """Segments that reached a source later than their turn to play (the picture paused)."""
        return self._closed_stalls + sum(src.stalls for src in self.sources.values())

    def count(self, device_id: str | None = None) -> int:
        return sum(1 for s in self.sessions if device_id is None or s.device_id == device_id)

    async def answer(self, device_id: str, sdp: str, stream: str = "main") -> str:
        """Answer a viewer's offer with a session sending the H.264 of ``device_id``'s ``stream`` as it is."""
        cfg = self.relay.cfg
        if self.count() >= cfg.max_viewers:
            raise ViewerLimit(f"the hub serves {cfg.max_viewers} WebRTC viewers already (live.max_viewers)")
        if self.count(device_id) >= cfg.max_viewers_per_device:
            raise ViewerLimit(
                f"camera {device_id} has {cfg.max_viewers_per_device} WebRTC viewers already "
                "(live.max_viewers_per_device); use HLS"
            )
        _check_offer(sdp)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(u) for u in cfg.ice_servers]))
        source = self.sources.get((device_id, stream))
        if source is None:
            source = self.sources[(device_id, stream)] = PacketSource(self.relay, device_id, stream)
        track = source.subscribe()
        sess = _Session(device_id, stream, pc, track)
        self.sessions.add(sess)
        try:
            # Codec preferences apply when the offer is read, so the transceiver comes first.
            video = pc.addTransceiver(track, direction="sendonly")
            video.setCodecPreferences(
                [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType in ("video/H264", "video/rtx")]
            )
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self._close(sess)
            raise OfferError(f"cannot answer the offer: {exc}") from None

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState == "connected" and sess.timer is not None:
                sess.timer.cancel()
            elif pc.connectionState in ("failed", "closed"):
                await self._close(sess)

        loop = asyncio.get_running_loop()
        sess.timer = loop.call_later(CONNECT_TIMEOUT_S, lambda: loop.create_task(self._close_if_idle(sess)))
        log.info("live %s: WebRTC viewer of the %s stream joined (%d watching)", device_id, stream,
                 self.count(device_id))
        return pc.localDescription.sdp

    async def _close_if_idle(self, sess: _Session) -> None:
        if sess.pc.connectionState != "connected":
            await self._close(sess)

    async def _close(self, sess: _Session) -> None:
        if sess.closed:
            return
        sess.closed = True
        self.sessions.discard(sess)
        if sess.timer is not None:
            sess.timer.cancel()
        sess.track.stop()
        src = self.sources.get((sess.device_id, sess.stream))
        if src is not None and not src.tracks:
            self._closed_stalls += src.stalls
            del self.sources[(sess.device_id, sess.stream)]
        with contextlib.suppress(Exception):
            await sess.pc.close()
        log.info("live %s: WebRTC viewer left (%d watching)", sess.device_id, self.count(sess.device_id))

    async def close_all(self) -> None:
        for s in list(self.sessions):
            await self._close(s)


def _check_offer(sdp: str) -> None:
    """Precise reasons an offer cannot work, before any resources are set up."""
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:
        raise OfferError(f"offer is not valid SDP: {exc}") from None
    video = [m for m in desc.media if m.kind == "video"]
    if not video:
        raise OfferError("offer has no video section; add a recvonly video transceiver")
    m = video[0]
    if m.direction not in (None, "recvonly", "sendrecv"):
        raise OfferError(f"offer's video direction is {m.direction}; it must be able to receive")
    if not any(c.mimeType.lower() == "video/h264" for c in m.rtp.codecs):
        raise OfferError("offer does not accept H.264; the hub passes camera H.264 through without transcoding")
