"""Live streams of GB/T 28181 channels: INVITE, ACK, BYE, and inviting again when media stops.

Every accepted channel of a registered device is streamed and recorded (``gb28181.record``): the
center sends INVITE (``s=Play``, its receive address and port, the SSRC in ``y=``), ACKs the 200
and starts a :class:`~vms.gb28181.media.MediaReceiver`. When the stream ends (no RTP, no video,
the device's BYE, a closed media connection), the channel's signal ends at once (offline at the
next tick, dated at its last frame) and the center invites again after a backoff: 1 s, doubling up
to ``invite_backoff_max_s``, and back to 1 s after a stream that ran for a minute.

Media, not keepalives, says whether a streamed channel is online: a camera whose video stops is
offline within seconds while its keepalives go on. A device all of whose streams stopped is asked
whether it is still there (``probe``); the service makes it offline when it does not answer.

Runs on the SIP loop; receivers report from their threads through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vms.config import Gb28181Config
from vms.gb28181 import sdp, sip
from vms.gb28181.media import ArchiveSink, MediaReceiver, MediaStats, PortPool
from vms.gb28181.transport import Peer, Transport
from vms.media.segmenter import Segmenter

log = logging.getLogger(__name__)

#: A stream that ran this long resets the backoff: its end is news, not a device that keeps failing.
STEADY_S = 60.0


@dataclass
class Stream:
    """One channel's live stream and its dialog."""

    channel: str
    device: str
    peer: Peer
    state: str = "idle"  # idle -> inviting -> playing -> idle
    receiver: MediaReceiver | None = None
    call_id: str = ""
    local_tag: str = ""
    remote_tag: str = ""
    remote_target: str = ""
    invite_uri: str = ""
    ssrc: str = ""
    failures: int = 0
    next_try: float = 0.0  # monotonic
    playing_since: float = 0.0  # monotonic
    reason: str = ""
    hung_up: bool = False  # the device sent BYE: no BYE back
    ends: int = 0  # streams of this channel lost so far (its "reconnects")
    lost_at: float | None = None  # wall clock of the last frame before the live video went missing
    watched_until: float | None = None  # monotonic; set: streamed while someone watches (``Player.watch``)

    @property
    def watched(self) -> bool:
        """Streamed on demand (a lower platform's camera someone here watches): its end says nothing
        about the camera, whose state the platform tells."""
        return self.watched_until is not None


class Player:
    def __init__(self, cfg: Gb28181Config, transport: Transport, sink: ArchiveSink,
                 signal: Callable[[str, float, float, int], None], silence: Callable[[list[str]], None],
                 probe: Callable[[str], None]) -> None:
        """``signal(channel, fps, bitrate, restarts)``: video arrived, with the stream's figures (0 until
        measured) and how often it was lost; ``silence(ids)``: their signal ended now;
        ``probe(device)``: all of the device's streams stopped, ask whether it is still there."""
        self.cfg = cfg
        self.transport = transport
        self.sink = sink
        self.signal = signal
        self.silence = silence
        self.probe = probe
        self.server_id = cfg.server_id or ""
        self.realm = cfg.realm
        self.media_host = cfg.media_host or cfg.host
        self.ports = PortPool(self.media_host, cfg.media_ports)
        self.streams: dict[str, Stream] = {}
        self.downloads: dict[str, Stream] = {}  # recordings being fetched, by channel
        #: ``backfill(device, channel, start, end)``: a gap in a channel's live video to fetch.
        self.backfill: Callable[[str, str, float, float], None] | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("invites", "invite_failures", "streams_ended", "device_hangups", "ssrc_duplicates", "downloads",
             "downloaded_s"), 0)
        self._ssrc_n = secrets.randbelow(10_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what should stream ---------------------------------------------------------------------------
    def want(self, device: str, peer: Peer, channels: list[str]) -> None:
        """These channels of ``device`` should stream (a registration at ``peer``); streams of the
        device's other channels are hung up."""
        for ch in channels:
            st = self.streams.get(ch)
            if st is None:
                self.streams[ch] = Stream(ch, device, peer)
            elif st.peer != peer:
                st.peer = peer
        for ch in [c for c, s in self.streams.items() if s.device == device and c not in channels]:
            self._drop(self.streams.pop(ch), "no longer wanted")

    def forget(self, device: str, why: str) -> None:
        """The device left (goodbye, expiry, closed connection): end its streams without a BYE."""
        for ch in [c for c, s in self.streams.items() if s.device == device]:
            st = self.streams.pop(ch)
            st.hung_up = True
            self._drop(st, why)

    def restart(self, device: str) -> None:
        """The device registered anew (a reboot): its old dialogs are gone, invite at once."""
        for st in self.streams.values():
            if st.device == device:
                st.hung_up = True
                self._drop(st, "the device registered again")
                st.failures, st.next_try = 0, 0.0

    def watch(self, device: str, peer: Peer, channel: str, for_s: float) -> None:
        """Someone watches ``channel`` of ``device`` (a lower platform) live: stream it for ``for_s``
        seconds more (invited at the next tick), then hang up unless watched again."""
        until = time.monotonic() + for_s
        st = self.streams.get(channel)
        if st is None:
            self.streams[channel] = Stream(channel, device, peer, watched_until=until)
        elif st.watched_until is not None:
            st.watched_until, st.peer = until, peer

    def streamed(self, device_id: str) -> bool:
        """Streamed to be recorded: its video is its signal (a watched stream is not)."""
        st = self.streams.get(device_id)
        return st is not None and not st.watched

    # -- the tick -------------------------------------------------------------------------------------
    def tick(self, reachable: Callable[[str], bool]) -> None:
        """Invite every idle stream whose time has come and whose device is reachable."""
        self._loop = asyncio.get_running_loop()
        now = time.monotonic()
        for st in list(self.streams.values()):
            if st.watched_until is not None and now >= st.watched_until:
                self._drop(self.streams.pop(st.channel), "nobody watches it any more")
                continue
            if st.state == "idle" and now >= st.next_try and reachable(st.device):
                st.state = "inviting"
                task = self._loop.create_task(self._invite(st))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # -- INVITE ---------------------------------------------------------------------------------------
    def _next_ssrc(self) -> str:
        used = {s.ssrc for s in self.streams.values() if s.state != "idle"}
        for _ in range(10_000):
            self._ssrc_n = (self._ssrc_n + 1) % 10_000
            ssrc = sdp.ssrc_for(False, self.realm, self._ssrc_n)
            if ssrc not in used:
                return ssrc
        raise RuntimeError("no free SSRC: 10,000 live streams")

    def _headers(self, st: Stream, method: str, cseq: int, branch: str) -> sip.Headers:
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/{st.peer.transport} {self.cfg.host}:{self.cfg.port};rport;branch={branch}")
        h.set("From", f"<sip:{self.server_id}@{self.realm}>;tag={st.local_tag}")
        to = f"<sip:{st.channel}@{st.channel[:10]}>"
        h.set("To", f"{to};tag={st.remote_tag}" if st.remote_tag else to)
        h.set("Call-ID", st.call_id)
        h.set("CSeq", f"{cseq} {method}")
        h.set("Max-Forwards", "70")
        return h

    def _offer(self, st: Stream, rx: MediaReceiver, session: str, **extra: Any) -> sdp.Sdp:
        mode = self.cfg.media_transport
        return sdp.Sdp(session=session, user=self.server_id, address=self.media_host, port=rx.port,
                       transport="UDP" if mode == "UDP" else "TCP", direction="recvonly",
                       setup=None if mode == "UDP" else ("passive" if mode == "TCP-passive" else "active"),
                       ssrc=st.ssrc, **extra)

    async def _dial(self, st: Stream, rx: MediaReceiver, offer: sdp.Sdp) -> sdp.Sdp | str:
        """INVITE with ``offer`` and ACK the answer: the device's SDP, or why there is none (after
        hanging up what was set up). ``st`` keeps the dialog."""
        st.call_id, st.local_tag, st.remote_tag, st.hung_up = sip.new_call_id(), sip.new_tag(), "", False
        st.invite_uri = f"sip:{st.channel}@{st.peer.host}:{st.peer.port}"
        branch = sip.new_branch()
        req = sip.Request("INVITE", st.invite_uri, self._headers(st, "INVITE", 1, branch), sdp.build(offer))
        req.headers.set("Contact", f"<sip:{self.server_id}@{self.cfg.host}:{self.cfg.port}>")
        req.headers.set("Subject", f"{st.channel}:{st.ssrc},{self.server_id}:0")
        req.headers.set("Content-Type", "application/sdp")
        try:
            resp = await self.transport.request(st.peer, req, self.cfg.invite_timeout_s)
        except (TimeoutError, ConnectionError) as exc:
            return f"no answer to INVITE ({type(exc).__name__})"
        st.remote_tag = sip.parse_name_addr(resp.headers.get("To") or "").tag or ""
        if resp.status >= 300:
            ack = sip.Request("ACK", st.invite_uri, self._headers(st, "ACK", 1, branch))
            self.transport.send(st.peer, ack)
            return f"INVITE answered {resp.status} {resp.reason}"
        contact = resp.headers.get("Contact")
        st.remote_target = sip.parse_name_addr(contact).uri if contact else st.invite_uri
        self._ack(st)
        try:
            answer = sdp.parse(resp.body)
        except sdp.SdpError as exc:
            self._bye(st)
            return f"unusable SDP answer: {exc}"
        ssrc = answer.ssrc or st.ssrc
        live = [*self.streams.values(), *self.downloads.values()]
        if ssrc != st.ssrc and any(s.ssrc == ssrc and s is not st and s.state != "idle" for s in live):
            self.counters["ssrc_duplicates"] += 1
            self._bye(st)
            return f"the device answered SSRC {ssrc}, already used by another stream"
        st.ssrc = ssrc
        return answer

    def _start(self, st: Stream, rx: MediaReceiver, answer: sdp.Sdp) -> None:
        remote = (answer.address, answer.port) if self.cfg.media_transport == "TCP-active" else None
        st.receiver = rx
        st.state = "playing"
        st.playing_since = time.monotonic()
        rx.start(int(st.ssrc) if self.cfg.ssrc_check else None, remote)

    async def _invite(self, st: Stream) -> None:
        self.counters["invites"] += 1
        seg = Segmenter(st.channel, self.sink, self.cfg.segment_seconds)

        def video(channel: str) -> None:
            if st.watched:
                return  # a platform's camera: the platform tells its state
            self.signal(channel, seg.fps, seg.bitrate_bps, st.ends)
            if st.lost_at is not None and self._loop is not None:  # back after a gap: fetch it
                lost, st.lost_at = st.lost_at, None
                self._loop.call_soon_threadsafe(self._gap, st, lost, time.time() - 0.5)

        try:
            rx = MediaReceiver(st.channel, self.cfg.media_transport, self.ports, seg, video, self._ended_threadsafe,
                               self.cfg.media_timeout_s)
        except OSError as exc:
            self._failed(st, f"no media port: {exc}")
            return
        st.ssrc = self._next_ssrc()
        answer = await self._dial(st, rx, self._offer(st, rx, "Play"))
        if st.state != "inviting":  # dropped while waiting
            rx.close_sockets()
            if isinstance(answer, sdp.Sdp):
                self._bye(st)
            return
        if isinstance(answer, str):
            rx.close_sockets()
            self._failed(st, answer)
            return
        self._start(st, rx, answer)
        log.info("GB/T 28181: %s streaming (%s, SSRC %s)", st.channel, self.cfg.media_transport, st.ssrc)

    # -- gaps: fetched from the device's own recording --------------------------------------------------
    def _gap(self, st: Stream, lost: float, back: float) -> None:
        """The channel's live video was missing from ``lost`` to ``back`` (wall clock)."""
        if back - lost >= self.cfg.backfill_min_s and self.backfill is not None:
            self.backfill(st.device, st.channel, lost, back)

    async def download(self, device: str, peer: Peer, channel: str, start: float, end: float) -> tuple[float, str]:
        """Fetch ``[start, end)`` of the channel's recording from the device (``s=Download``) into the
        archive, as the live stream would have stored it; returns the seconds of video received and
        how it ended. One at a time per channel."""
        if channel in self.downloads:
            return 0.0, "a download of this channel is running"
        st = Stream(channel, device, peer, state="inviting")
        self.downloads[channel] = st
        done = asyncio.get_running_loop().create_future()
        seg = Segmenter(channel, self.sink, self.cfg.segment_seconds, anchor=start)
        loop = asyncio.get_running_loop()

        def finish(reason: str) -> None:
            if not done.done():
                done.set_result(reason)

        def ended(rx: MediaReceiver, reason: str) -> None:
            loop.call_soon_threadsafe(finish, reason)

        try:
            try:
                rx = MediaReceiver(channel, self.cfg.media_transport, self.ports, seg, lambda _c: None, ended,
                                   self.cfg.media_timeout_s)
            except OSError as exc:
                return 0.0, f"no media port: {exc}"
            self.counters["downloads"] += 1
            st.ssrc = sdp.ssrc_for(True, self.realm, int(self._next_ssrc()[-4:]))
            offer = self._offer(st, rx, "Download", start=int(start), stop=int(end + 0.999), uri=f"{channel}:0",
                                download_speed=self.cfg.download_speed)
            answer = await self._dial(st, rx, offer)
            if isinstance(answer, str):
                rx.close_sockets()
                return 0.0, answer
            self._start(st, rx, answer)
            limit = (end - start) / self.cfg.download_speed + 2 * self.cfg.media_timeout_s + 10
            try:
                reason = await asyncio.wait_for(done, limit)
            except TimeoutError:
                reason = f"not finished within {limit:.0f} s"
            rx.stop()
            if not st.hung_up:
                self._bye(st)
            await asyncio.to_thread(rx.join, 10)
            got = rx.stats.frames / seg.fps if seg.fps else 0.0
            self.counters["downloaded_s"] += round(got)
            return float(got), reason
        finally:
            self.downloads.pop(channel, None)

    def media_status(self, channel: str, notify_type: str) -> None:
        """The device says a playback or download ended (MediaStatus, 121): stop receiving it."""
        st = self.downloads.get(channel)
        if st is not None and st.receiver is not None and notify_type == "121":
            st.receiver.reason = "the device finished sending (MediaStatus 121)"
            st.receiver.stop()

    def _ack(self, st: Stream) -> None:
        ack = sip.Request("ACK", st.remote_target, self._headers(st, "ACK", 1, sip.new_branch()))
        self.transport.send(st.peer, ack)

    def _bye(self, st: Stream) -> None:
        """Hang up the dialog (fire and forget: the answer changes nothing)."""
        req = sip.Request("BYE", st.remote_target or st.invite_uri, self._headers(st, "BYE", 2, sip.new_branch()))
        if self._loop is not None and self._loop.is_running():
            task = self._loop.create_task(self._request_quietly(st.peer, req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _request_quietly(self, peer: Peer, req: sip.Request) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError):
            await self.transport.request(peer, req, 8.0)

    def _failed(self, st: Stream, reason: str) -> None:
        self.counters["invite_failures"] += 1
        if st.failures == 0 or st.reason != reason:
            log.warning("GB/T 28181: %s: %s", st.channel, reason)
        self._retry_later(st, reason)

    def _retry_later(self, st: Stream, reason: str) -> None:
        st.state, st.receiver, st.reason = "idle", None, reason
        st.failures += 1
        delay = min(self.cfg.invite_backoff_max_s, 2.0 ** (st.failures - 1))
        st.next_try = time.monotonic() + delay * random.uniform(0.8, 1.0)

    # -- the stream's end -------------------------------------------------------------------------------
    def _ended_threadsafe(self, rx: MediaReceiver, reason: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop is closing: the hub is stopping
                self._loop.call_soon_threadsafe(self._ended, rx, reason)

    def _ended(self, rx: MediaReceiver, reason: str) -> None:
        st = self.streams.get(rx.channel)
        if st is None or st.receiver is not rx:
            return  # dropped already
        self.counters["streams_ended"] += 1
        st.ends += 1
        if st.watched:  # invited again while watched; the camera's state is the platform's word
            log.warning("GB/T 28181: %s: watched stream ended: %s", st.channel, reason)
            if not st.hung_up:
                self._bye(st)
            self._retry_later(st, reason)
            return
        last = rx.segmenter.last_segment
        if st.lost_at is None and last is not None:  # the end of what it recorded
            st.lost_at = last.start + last.duration
        log.warning("GB/T 28181: %s: stream ended: %s", st.channel, reason)
        if not st.hung_up:
            self._bye(st)
        self.silence([st.channel])
        if time.monotonic() - st.playing_since >= STEADY_S:
            st.failures = 0
        self._retry_later(st, reason)
        if not any(s.state == "playing" for s in self.streams.values() if s.device == st.device):
            self.probe(st.device)

    def _drop(self, st: Stream, why: str) -> None:
        """End a stream now (its receiver stops; its end is not news)."""
        rx, st.receiver = st.receiver, None
        if rx is not None:
            if not st.hung_up:
                self._bye(st)
            rx.stop()
            log.info("GB/T 28181: %s: stream stopped: %s", st.channel, why)
        st.state, st.reason = "idle", why

    def on_bye(self, req: sip.Request) -> sip.Response:
        """The device hangs up a stream: 200, and the stream ends (invited again after the backoff)."""
        call_id = req.headers.get("Call-ID")
        st = next((s for s in (*self.streams.values(), *self.downloads.values())
                   if s.call_id == call_id and s.state != "idle"), None)
        if st is None:
            return sip.response_to(req, 481)
        self.counters["device_hangups"] += 1
        st.hung_up = True
        if st.receiver is not None:
            st.receiver.reason = "the device hung up (BYE)"
            st.receiver.stop()
        else:
            st.state = "idle"
        return sip.response_to(req, 200)

    def on_stray(self, resp: sip.Response, peer: Peer) -> None:
        """A 200 to an INVITE whose transaction is over came again: our ACK was lost, send it again."""
        cseq = resp.headers.get("CSeq") or ""
        if resp.status < 200 or resp.status >= 300 or not cseq.upper().endswith("INVITE"):
            return
        call_id = resp.headers.get("Call-ID")
        st = next((s for s in self.streams.values() if s.call_id == call_id and s.state == "playing"), None)
        if st is not None:
            self._ack(st)

    def shutdown(self) -> list[MediaReceiver]:
        """Hang up every stream (BYE sent, not awaited); the receivers, to join off the loop."""
        out = []
        for st in self.streams.values():
            rx = st.receiver
            if rx is not None:
                if not st.hung_up:
                    self.transport.send(st.peer, sip.Request(
                        "BYE", st.remote_target or st.invite_uri, self._headers(st, "BYE", 2, sip.new_branch())))
                rx.stop()
                out.append(rx)
            st.receiver, st.state = None, "idle"
        return out

    # -- views ------------------------------------------------------------------------------------------
    def view(self) -> dict[str, dict[str, Any]]:
        """Per channel: state, why it last ended, what it received."""
        out: dict[str, dict[str, Any]] = {}
        for ch, st in list(self.streams.items()):  # read from other threads: a copy
            stats = st.receiver.stats if st.receiver is not None else MediaStats()
            out[ch] = {"state": st.state, "watched": st.watched, "reason": st.reason, "ssrc": st.ssrc,
                       "failures": st.failures,
                       "port": st.receiver.port if st.receiver is not None else None,
                       "packets": stats.packets, "frames": stats.frames, "lost": stats.lost,
                       "ssrc_mismatch": stats.ssrc_mismatch, "codec": stats.codec}
        return out
