"""Video upward: a superior platform's INVITE is answered with MPEG-PS over RTP from what this center
already has, never transcoded.

- **Live** (``s=Play``): the camera's live segments, the ones the wall plays (the main stream, or the
  sub stream when ``a=streamnumber:1`` asks for it and it is live), starting with the newest segment
  so the first packet leaves as soon as the ACK arrives. Every superior and viewer of a camera
  reads the same segments: one intake from the camera, however many look at it.
- When the camera's media stops (no new segment within ``stale_after_s``), the superior is told
  with a BYE, and may invite again once the camera is back.
- **Recordings** (``s=Playback``, ``s=Download`` with ``t=START STOP``): the archive's segments of
  the range, span by span (the gaps are skipped, not waited through), in real time or, for a
  download, at ``a=downloadspeed`` times; at the end the owner sends MediaStatus 121 and keeps the
  session until the superior's BYE.
- BYE either way; over UDP, TCP active or TCP passive (RFC 4571), as the offer asks.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from vms.gb28181 import sdp, sip
from vms.media.sender import CLOCK, FINISHED, AccessUnit, RtpSender, SourceEnded, Target, Units, media_socket

log = logging.getLogger(__name__)

#: (sequence, file, start, end) of each live segment of a camera's stream, oldest first; [] if none is live.
LiveSegments = Callable[[str, str], list[tuple[int, Path, float, float]]]
#: (file, start, end) of each archived segment of a camera overlapping [start, end), oldest first.
Recorded = Callable[[str, float, float], list[tuple[Path, float, float]]]
#: Our own segments say what they hold in their first packets: FFmpeg's stream probe reads no further,
#: and its decoder decodes nothing (``skip_frame``): decoding the first keyframe cost more than the sending.
OPEN_OPTIONS = {"probesize": "32", "analyzeduration": "0", "skip_frame": "all"}
#: Segments closer than this are one span of a recording (a longer gap is skipped in playback).
SPAN_GAP_S = 1.0


def spans_of(segments: list[tuple[Path, float, float]]) -> list[list[tuple[Path, float, float]]]:
    """Segments grouped into spans without gaps (RecordInfo items, playback spans)."""
    out: list[list[tuple[Path, float, float]]] = []
    for seg in segments:
        if out and seg[1] - out[-1][-1][2] <= SPAN_GAP_S:
            out[-1].append(seg)
        else:
            out.append([seg])
    return out


def recorded_units(spans: list[list[tuple[Path, float, float]]]) -> Units:
    """A source for a sender's spans: each call gives the next span's frames, timed from its start."""
    todo = iter(spans)

    def units(_length: int | None) -> Iterator[tuple[int, AccessUnit]]:
        segs = next(todo, [])
        if not segs:
            return
        first = segs[0][1]
        for path, start, _end in segs:
            base = round((start - first) * CLOCK)
            try:
                for au in segment_units(path):
                    yield base + au.dts, au
            except (OSError, av.error.FFmpegError, IndexError) as exc:
                log.warning("GB/T 28181 upward: archived segment %s skipped: %s", path.name, exc)

    return units


def segment_units(path: Path) -> list[AccessUnit]:
    """A segment's video access units, decoding times in 90 kHz ticks from its first (demuxed, not decoded)."""
    units: list[AccessUnit] = []
    with av.open(str(path), options=OPEN_OPTIONS) as container:
        stream = container.streams.video[0]
        tb = stream.time_base or Fraction(1, CLOCK)
        first: int | None = None
        for pkt in container.demux(stream):
            if pkt.size == 0 or pkt.pts is None:
                continue
            dts = pkt.dts if pkt.dts is not None else pkt.pts
            if first is None:
                first = dts
            units.append(AccessUnit(bytes(pkt), round((pkt.pts - first) * tb * CLOCK),
                                    round((dts - first) * tb * CLOCK), bool(pkt.is_keyframe)))
    return units


def live_units(segments: Callable[[], list[tuple[int, Path, float, float]]], stopped: Callable[[], bool],
               stale_after_s: float, poll_s: float = 0.2) -> Units:
    """A source of access units that follows a camera's live segments (from the newest when called)
    and ends with ``SourceEnded`` once no new segment came for ``stale_after_s``."""

    def units(_length: int | None) -> Iterator[tuple[int, AccessUnit]]:
        last: int | None = None
        offset = 0  # ticks: each segment continues where the one before ended
        fresh = time.monotonic()
        while not stopped():
            entries = segments()
            new = [e for e in entries if last is None or e[0] > last]
            if last is None:
                new = new[-1:]
            if not new:
                if time.monotonic() - fresh > stale_after_s:
                    raise SourceEnded(f"no live media for {stale_after_s:g} s")
                time.sleep(poll_s)
                continue
            for seq, path, start, end in new:
                try:
                    for au in segment_units(path):
                        yield offset + au.dts, au
                except (OSError, av.error.FFmpegError, IndexError) as exc:  # gone (retention) or unreadable
                    log.warning("GB/T 28181 upward: segment %s skipped: %s", path.name, exc)
                offset += max(1, round((end - start) * CLOCK))
                last = seq
            fresh = time.monotonic()

    return units


@dataclass
class UpSession:
    """One stream to a superior: its INVITE dialog and its sender."""

    call_id: str
    device_id: str
    superior: str
    peer: Any  # transport.Peer the INVITE came from
    local: str  # our side of the dialog (the INVITE's To, with our tag)
    remote: str  # the superior's From
    target: str  # the superior's Contact: where our BYE goes
    sender: RtpSender
    started: float = field(default_factory=time.monotonic)
    cseq: int = 0


class Upward:
    """The streams this center sends its superiors; ``invite``/``ack``/``bye`` come from the SIP loop."""

    def __init__(self, media_host: str, live: LiveSegments, stale_after_s: float,
                 ended: Callable[[UpSession, str], None], recorded: Recorded | None = None) -> None:
        """``ended(session, reason)`` runs in the sender's thread when a stream ends by itself (a
        recording sent in full ends with ``FINISHED``)."""
        self.media_host = media_host
        self.live = live
        self.recorded = recorded
        self.stale_after_s = stale_after_s
        self.ended = ended
        self.sessions: dict[str, UpSession] = {}
        self._lock = threading.Lock()
        self.counters = dict.fromkeys(("invites", "streams", "refused_offers", "media_ended"), 0)

    def invite(self, req: sip.Request, peer: Any, superior: str, device_id: str) -> sip.Response:
        """Answer an INVITE: 200 with our SDP (media starts at the ACK), or 488 with the reason."""
        call_id = req.headers.get("Call-ID") or ""
        with self._lock:
            known = self.sessions.get(call_id)
        self.counters["invites"] += 1
        try:
            offer = sdp.parse(req.body)
        except sdp.SdpError as exc:
            self.counters["refused_offers"] += 1
            return sip.response_to(req, 488, f"Not Acceptable Here ({exc})"[:120])
        ps = [pt for pt, enc in offer.payloads if enc.upper().startswith("PS/")]
        playback = offer.session in ("Playback", "Download")
        problem = (f"unknown session s={offer.session}"[:60] if offer.session != "Play" and not playback
                   else "the offer does not receive" if offer.direction not in ("recvonly", "sendrecv")
                   else "no PS payload type" if not ps else None)
        if problem is None and playback:
            spans, problem = self._spans(device_id, offer)
        if problem is not None:
            self.counters["refused_offers"] += 1
            return sip.response_to(req, 488, f"Not Acceptable Here ({problem})")
        stream = "sub" if not playback and offer.stream_number == 1 and self.live(device_id, "sub") else "main"
        if not playback and not self.live(device_id, stream):
            return sip.response_to(req, 480, f"Temporarily Unavailable (no live media for {device_id})")
        tcp = offer.transport == "TCP"
        target = Target(offer.address, offer.port, offer.transport, connect=not tcp or offer.setup != "active")
        sock = media_socket(self.media_host, target)
        ssrc = offer.ssrc or sdp.ssrc_for(playback, device_id[:10], secrets.randbelow(10_000))
        answer = sdp.Sdp(session=offer.session, user=device_id, address=self.media_host, port=sock.getsockname()[1],
                         transport=offer.transport, direction="sendonly",
                         setup=("active" if target.connect else "passive") if tcp else None, ssrc=ssrc,
                         payloads=((ps[0], "PS/90000"),), stream_number=None if playback else offer.stream_number,
                         start=offer.start, stop=offer.stop, uri=offer.uri if playback else None)
        if known is not None:  # a re-INVITE: the stream stays as it is
            known.sender.stop()
        holder: list[UpSession] = []
        ticks: list[tuple[int, int]] | None = None
        speed = 1.0
        if playback:
            source = recorded_units(spans)
            codec = _codec([(0, spans[0][0][0], 0.0, 0.0)])
            # Each span's place from the range's start; the sender skips what lies between them.
            ticks = [(round((sp[0][1] - offer.start) * CLOCK), round((sp[-1][2] - offer.start) * CLOCK))
                     for sp in spans]
            speed = float(offer.download_speed or 1) if offer.session == "Download" else 1.0
        else:
            source = live_units(lambda: self.live(device_id, stream),
                                lambda: bool(holder) and holder[0].sender.stopped, self.stale_after_s)
            codec = _codec(self.live(device_id, stream))
        sender = RtpSender(f"up-{device_id[-6:]}-{call_id[:6]}", codec, source, int(ssrc), sock, target,
                           lambda: "send", lambda why: self._ended(call_id, why), payload_type=ps[0],
                           spans=ticks, speed=speed)
        tag = sip.new_tag()
        to = req.headers.get("To") or ""
        contact = req.headers.get("Contact")
        session = UpSession(call_id, device_id, superior, peer,
                            f"{to};tag={tag}" if sip.parse_name_addr(to).tag is None else to,
                            req.headers.get("From") or "", sip.parse_name_addr(contact).uri if contact else req.uri,
                            sender)
        holder.append(session)
        with self._lock:
            self.sessions[call_id] = session
        sender.start()
        resp = sip.response_to(req, 200, to_tag=tag)
        resp.headers.set("Contact", f"<sip:{device_id}@{self.media_host}>")
        resp.headers.set("Content-Type", "APPLICATION/SDP")
        resp.body = sdp.build(answer)
        log.info("GB/T 28181 upward: %s invites %s (%s, %s stream, %s)", superior, device_id, offer.session, stream,
                 offer.transport)
        return resp

    def _spans(self, device_id: str, offer: sdp.Sdp) -> tuple[list[list[tuple[Path, float, float]]], str | None]:
        """The recorded spans of an offer's range, or why it cannot be played."""
        if self.recorded is None:
            return [], "no recordings are served here"
        if offer.stop <= offer.start:
            return [], "no time range (t=START STOP)"
        spans = spans_of(self.recorded(device_id, float(offer.start), float(offer.stop)))
        return spans, None if spans else "no recording in the range"

    def ack(self, call_id: str) -> bool:
        """The ACK of our 200: media starts."""
        with self._lock:
            s = self.sessions.get(call_id)
        if s is None:
            return False
        if not s.sender.go.is_set():
            self.counters["streams"] += 1
            s.sender.go.set()
        return True

    def bye(self, call_id: str) -> bool:
        """The superior hung up: the stream stops."""
        with self._lock:
            s = self.sessions.pop(call_id, None)
        if s is None:
            return False
        s.sender.stop()
        return True

    def _ended(self, call_id: str, why: str) -> None:
        with self._lock:
            s = self.sessions.get(call_id) if why == FINISHED else self.sessions.pop(call_id, None)
        if s is not None:
            self.counters["media_ended"] += 1
            log.info("GB/T 28181 upward: stream of %s to %s ended: %s", s.device_id, s.superior, why)
            self.ended(s, why)

    def stop_all(self) -> list[UpSession]:
        """Stop every stream (the center stops); the caller says BYE."""
        with self._lock:
            gone = list(self.sessions.values())
            self.sessions.clear()
        for s in gone:
            with contextlib.suppress(Exception):
                s.sender.stop()
        return gone

    def view(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"device_id": s.device_id, "superior": s.superior, "frames": s.sender.frames_sent,
                     "packets": s.sender.packets_sent, "since_s": round(time.monotonic() - s.started, 1)}
                    for s in self.sessions.values()]


def _codec(entries: list[tuple[int, Path, float, float]]) -> str:
    """The codec of a stream's newest segment (h264 or hevc), for the stream map."""
    with contextlib.suppress(Exception), av.open(str(entries[-1][1]), options=OPEN_OPTIONS) as c:
        return str(c.streams.video[0].codec_context.name)
    return "h264"
