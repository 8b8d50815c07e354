"""Simulated GB/T 28181 devices: a camera (type 132, its video channel 131 as real IPCs report it, or
itself as its only channel) or an NVR (118) with N channels (131), registering with a center by SIP.

What a device does, as field devices do: REGISTER (answering the digest challenge, MD5 or SHA-256)
and again before its registration expires, or when the center says it does not know it; Keepalive
MESSAGEs; answers to Catalog (split over several MESSAGEs: SumNum, DeviceList Num), DeviceInfo,
DeviceStatus and RecordInfo queries; Catalog notifications when a channel's video is lost and back
(VLOST, ON); INVITE ``s=Play``: a 200 with its SDP (sendonly, the offer's ``y=``), then after the ACK
MPEG-PS over RTP to the offer's address, over UDP or TCP (RFC 4571; it connects for ``setup:passive``
and listens for ``setup:active``); BYE from either side ends the stream.

Recordings, as an NVR or an IPC with an SD card keeps them: each channel records from
``recording_since`` (default: when the device starts) except while ``record_stop`` holds, and
through ``video_stop``, ``garbage`` and ``network_cut`` (the camera still sees; those break the way
to the center). RecordInfo lists the recorded files of the asked range (at most a minute each);
INVITE ``s=Playback`` (real time) or ``s=Download`` (``a=downloadspeed:N`` times real time) with
``t=START END`` sends the recorded spans of that range, then a MediaStatus notification (121); the
center hangs up. A device with ``records=False`` has no storage: no items, playback refused.

Faults, per device or channel: ``video_stop`` (keepalives go on, no RTP), ``network_cut`` (nothing
leaves the device and nothing reaches it; its TCP connections close and its streams end, as the
center hangs up on them anyway), ``garbage`` (random RTP payloads), ``record_stop`` and
``record_resume`` (the local recording), ``clear`` (all of them, recording resumes).

Threads: one receives signaling, one registers and keeps alive, one sends what the device says on
its own (answers to queries are new MESSAGEs that wait for their 200s), one per stream.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from camsim.clips import ClipParams
from camsim.gb_media import CLOCK, FINISHED, Clip, RtpSender, Target, load_clip, media_socket
from camsim.gb_records import Recording, local_time, parse_local
from camsim.net import send_json
from vms.gb28181 import digest, manscdp, sdp, sip
from vms.kernel import ids

log = logging.getLogger(__name__)

#: Fault kinds of GB/T 28181 devices (the HTTP control API takes the same ``{"kind": ...}``).
GB_FAULTS = ("video_stop", "network_cut", "garbage", "record_stop", "record_resume", "clear")
#: Clip parameters of GB channels: Baseline without B-frames, as most GB cameras stream.
GB_PARAMS = ClipParams(bframes=0)
#: SIP client transactions over UDP: sent again from T1, doubling to T2, until Timer F (RFC 3261).
T1, T2, TIMER_F = 0.5, 4.0, 32.0
#: How long a REGISTER may wait for its answer before the device tries again (over TCP on a new connection).
REGISTER_TIMEOUT_S = 5.0
#: Keepalives unanswered in a row after which the device registers again, as devices do.
KEEPALIVE_MISSES = 3
#: The registration is refreshed when this fraction of the granted time has passed.
REFRESH_AT = 0.8
DEVICE_TYPES = {"118": "NVR", "111": "DVR", "132": "IPC", "131": "IPC"}
CHANNEL_TYPES = ("131", "132")


@dataclass(frozen=True, slots=True)
class GbServer:
    """The center the device registers with: its SIP address, ID and domain (realm)."""

    host: str
    port: int
    server_id: str
    domain: str | None = None

    @property
    def realm(self) -> str:
        return self.domain or self.server_id[:10]


@dataclass(frozen=True, slots=True)
class GbChannel:
    """One video channel as the catalog describes it."""

    channel_id: str
    name: str = ""
    longitude: float | None = None
    latitude: float | None = None
    address: str = ""


@dataclass(frozen=True, slots=True)
class GbDeviceSpec:
    """One simulated device. Without ``channels`` a camera is its own (only) channel."""

    device_id: str
    server: GbServer
    password: str
    channels: tuple[GbChannel, ...] = ()
    name: str = ""
    transport: str = "UDP"  # signaling: "UDP" | "TCP"
    keepalive_s: float = 60.0
    expires_s: int = 3600
    civil_code: str | None = None  # default: the ID's first 8 digits
    longitude: float | None = None  # a camera that is its own channel
    latitude: float | None = None
    manufacturer: str = "VMS-SIM"
    model: str | None = None  # default: by type (IPC, NVR)
    host: str = "127.0.0.1"  # the device's own address (signaling and media)
    catalog_batch: int = 2  # catalog and RecordInfo items per MESSAGE
    clip: ClipParams = GB_PARAMS
    records: bool = True  # keeps recordings (an NVR, an IPC with an SD card)
    recording_since: float | None = None  # Unix time the recordings begin; default: when the device starts

    def __post_init__(self) -> None:
        kind = ids.parse(self.device_id).type
        if kind not in DEVICE_TYPES:
            raise ValueError(f"{self.device_id}: type {kind} is not a camera, DVR or NVR ({', '.join(DEVICE_TYPES)})")
        if kind in ("118", "111") and not self.channels:
            raise ValueError(f"{self.device_id}: an NVR or DVR needs channels")
        for ch in self.channels:
            if ids.parse(ch.channel_id).type not in CHANNEL_TYPES:
                raise ValueError(f"channel {ch.channel_id}: type must be one of {', '.join(CHANNEL_TYPES)}")
        if len({c.channel_id for c in self.channels} | {self.device_id}) != len(self.channels) + 1:
            raise ValueError(f"{self.device_id}: channel IDs must be unique and differ from the device's")
        if self.transport not in ("UDP", "TCP"):
            raise ValueError(f"transport {self.transport!r} is neither UDP nor TCP")
        if self.keepalive_s <= 0 or self.catalog_batch < 1:
            raise ValueError("keepalive_s must be positive and catalog_batch at least 1")

    @property
    def stream_ids(self) -> list[str]:
        """The IDs an INVITE may name: the channels, or the camera itself."""
        return [c.channel_id for c in self.channels] or [self.device_id]


@dataclass(frozen=True, slots=True)
class RecordAsk:
    """A question about recordings as the device got it, and its answer: what tests look for."""

    kind: str  # "RecordInfo" | "Playback" | "Download"
    channel: str  # the query's DeviceID, or the INVITE's channel
    start: float  # Unix seconds
    end: float
    speed: int = 1  # Download: a=downloadspeed
    answer: str = ""  # RecordInfo: "N items"; INVITE: the status and reason ("200 OK", "488 ...")


@dataclass
class _Pending:
    """A client transaction waiting for its final response."""

    done: threading.Event = field(default_factory=threading.Event)
    response: sip.Response | None = None


@dataclass
class _Dialog:
    """One INVITE dialog: what a BYE needs, and the stream."""

    call_id: str
    channel: str
    our_party: str  # the INVITE's To with our tag: our From in a BYE
    their_party: str  # the INVITE's From: our To in a BYE
    target: str  # the INVITE's Contact: where our BYE goes
    ok: bytes  # our 200, sent again until the ACK arrives (UDP)
    sender: RtpSender
    acked: threading.Event = field(default_factory=threading.Event)


class GbDevice:
    """One simulated GB/T 28181 device; ``start()``/``stop()`` or a context manager."""

    def __init__(self, spec: GbDeviceSpec, clip: Path | Clip) -> None:
        self.spec = spec
        self.device_id = spec.device_id
        self.server = spec.server
        self.clip = clip if isinstance(clip, Clip) else load_clip(Path(clip))
        self.udp = spec.transport == "UDP"
        self.counters: dict[str, int] = dict.fromkeys(
            ("registrations", "register_failures", "keepalives", "keepalive_failures", "queries", "invites",
             "streams", "byes_received", "byes_sent", "notifies", "record_queries", "playbacks", "media_status"),
            0)
        self._server_addr = (spec.server.host, spec.server.port)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._udp_sock: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._pending: dict[str, _Pending] = {}
        self._answered: dict[tuple[str, str], tuple[float, bytes]] = {}
        self._dialogs: dict[str, _Dialog] = {}
        self._video: dict[str, str] = {}  # channel -> "stop" | "garbage" (absent: sending)
        since = spec.recording_since if spec.recording_since is not None else time.time()  # made to start
        self.recordings = {ch: Recording(since if spec.records else None) for ch in spec.stream_ids}
        self.record_asks: list[RecordAsk] = []  # every RecordInfo query and Playback/Download INVITE
        self._cut = False
        self._registered = False
        self._refresh_at = 0.0
        self._next_keepalive = 0.0
        self._reg_call_id = sip.new_call_id()
        self._reg_tag = sip.new_tag()
        self._cseq = itertools.count(1)
        self._sn = itertools.count(secrets.randbelow(1000))
        self._threads: list[threading.Thread] = []
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"gb-out-{self.device_id[-4:]}")

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self) -> GbDevice:
        if self.udp:
            self._udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._udp_sock.bind((self.spec.host, 0))
            self._udp_sock.settimeout(0.5)
            self._spawn(self._receive_udp, "rx")
        self._spawn(self._life, "life")
        return self

    def _spawn(self, target: Callable[..., None], what: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=f"gb-{what}-{self.device_id[-6:]}", daemon=True)
        t.start()
        self._threads = [*(x for x in self._threads if x.is_alive()), t]

    def stop(self) -> None:
        """Power off: streams and sockets close, nothing more is said."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            dialogs = list(self._dialogs.values())
            self._dialogs.clear()
        for d in dialogs:
            d.sender.stop()
        self._close_tcp()
        for t in self._threads:
            t.join(5)
        if self._udp_sock is not None:
            self._udp_sock.close()
        self._worker.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> GbDevice:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- state for callers ------------------------------------------------------------------------------
    @property
    def registered(self) -> bool:
        return self._registered and not self._cut

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The signaling socket's address (the center sees the device there)."""
        sock = self._udp_sock if self.udp else self._tcp
        if sock is None:
            return None
        with contextlib.suppress(OSError):
            host, port = sock.getsockname()[:2]
            return str(host), int(port)
        return None

    def streams(self, channel: str | None = None) -> list[RtpSender]:
        """The senders of the dialogs open now (of one channel, or all)."""
        with self._lock:
            return [d.sender for d in self._dialogs.values() if channel in (None, d.channel)]

    def describe(self) -> list[dict[str, Any]]:
        """One row per channel, for the control API."""
        with self._lock:
            live = [d.channel for d in self._dialogs.values()]
        kinds = {"stop": "video_stop", "garbage": "garbage"}
        return [{"device_id": ch, "parent_id": self.device_id, "protocol": "gb28181",
                 "fault": "network_cut" if self._cut else kinds.get(self._video.get(ch, ""), "none"),
                 "registered": self.registered, "streams": live.count(ch),
                 "recording": self.recordings[ch].recording} for ch in self.spec.stream_ids]

    # -- faults ---------------------------------------------------------------------------------------------
    def set_fault(self, target: str, kind: str) -> list[dict[str, Any]]:
        """Apply ``kind`` to the device (all its channels) or to one channel; KeyError, ValueError.
        ``network_cut`` is the device's whatever the target; ``clear`` of the device clears it all, of a
        channel only that channel's faults; recording resumes wherever the fault is cleared."""
        if kind not in GB_FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(GB_FAULTS)}")
        if target != self.device_id and target not in self.spec.stream_ids:
            raise KeyError(f"{target} is neither {self.device_id} nor one of its channels")
        chans = self.spec.stream_ids if target == self.device_id else [target]
        log.info("GB device %s: %s on %s", self.device_id, kind, target)
        if kind == "network_cut":
            self._cut_network()
        elif kind in ("video_stop", "garbage"):
            mode = "stop" if kind == "video_stop" else "garbage"
            with self._lock:
                lost = [c for c in chans if mode == "stop" and self._video.get(c) != "stop"]
                self._video.update(dict.fromkeys(chans, mode))
            self._notify(lost, "VLOST")
        elif kind == "record_stop":
            for c in chans:
                self.recordings[c].stop(time.time())
        elif kind == "record_resume":
            for c in chans:
                self.recordings[c].resume(time.time())
        else:
            for c in chans:
                self.recordings[c].resume(time.time())
            with self._lock:
                back = [c for c in chans if self._video.pop(c, None) == "stop"]
            if target == self.device_id and self._cut:
                self._cut = False
                self._next_keepalive = 0.0  # tell the center at once
                self._wake.set()
            self._notify(back, "ON")
        return [r for r in self.describe() if r["device_id"] in chans]

    def video_stop(self, target: str | None = None) -> None:
        self.set_fault(target or self.device_id, "video_stop")

    def garbage(self, target: str | None = None) -> None:
        self.set_fault(target or self.device_id, "garbage")

    def network_cut(self) -> None:
        self.set_fault(self.device_id, "network_cut")

    def clear(self, target: str | None = None) -> None:
        self.set_fault(target or self.device_id, "clear")

    def _cut_network(self) -> None:
        self._cut = True
        with self._lock:
            dialogs = list(self._dialogs.values())
            self._dialogs.clear()
        for d in dialogs:
            d.sender.stop()
        self._close_tcp()

    def _mode(self, channel: str) -> str:
        return "stop" if self._cut else self._video.get(channel, "send")

    # -- signaling transport --------------------------------------------------------------------------------
    def _send(self, msg: sip.Message | bytes) -> bool:
        """Send to the center (nothing while the network is cut)."""
        if self._cut:
            return False
        data = msg if isinstance(msg, bytes) else sip.serialize(msg)
        try:
            with self._send_lock:
                if self.udp:
                    assert self._udp_sock is not None
                    self._udp_sock.sendto(data, self._server_addr)
                else:
                    conn = self._tcp
                    if conn is None:
                        return False
                    conn.sendall(data)
        except OSError as exc:
            log.debug("GB device %s: send failed: %s", self.device_id, exc)
            return False
        return True

    def _receive_udp(self) -> None:
        assert self._udp_sock is not None
        while not self._stop.is_set():
            try:
                data = self._udp_sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._cut:
                self._received(data)

    def _connect(self) -> bool:
        try:
            conn = socket.create_connection(self._server_addr, timeout=5, source_address=(self.spec.host, 0))
        except OSError as exc:
            log.debug("GB device %s: cannot connect: %s", self.device_id, exc)
            return False
        conn.settimeout(None)
        self._tcp = conn
        self._spawn(self._receive_tcp, "rx", conn)
        return True

    def _receive_tcp(self, conn: socket.socket) -> None:
        buf = bytearray()
        try:
            while not self._stop.is_set():
                chunk = conn.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while (frame := sip.frame_stream(buf)) is not None:
                    self._received(frame)
        except (OSError, sip.SipError) as exc:
            log.debug("GB device %s: connection ended: %s", self.device_id, exc)
        finally:
            if self._tcp is conn:
                self._tcp = None
                self._registered = False
                self._wake.set()
            with contextlib.suppress(OSError):
                conn.close()

    def _close_tcp(self) -> None:
        conn, self._tcp = self._tcp, None
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            self._registered = False

    def _received(self, data: bytes) -> None:
        try:
            msg = sip.parse(data)
        except sip.SipError as exc:
            log.debug("GB device %s: malformed SIP dropped: %s", self.device_id, exc)
            return
        if isinstance(msg, sip.Response):
            branch = sip.vias(msg.headers)[0].branch or ""
            pending = self._pending.get(branch)
            if pending is not None and msg.status >= 200:
                pending.response = msg
                pending.done.set()
            return
        try:
            self._request(msg)
        except (sip.SipError, ValueError) as exc:
            log.debug("GB device %s: %s request not handled: %s", self.device_id, msg.method, exc)

    # -- client transactions ---------------------------------------------------------------------------------
    def _next_cseq(self) -> int:
        return next(self._cseq)  # itertools.count: atomic, and several threads send requests

    def _next_sn(self) -> int:
        return next(self._sn) % 999_999 + 1

    def _new_request(self, method: str, body: bytes = b"", *, call_id: str | None = None,
                     tag: str | None = None) -> sip.Request:
        """A request to the center from the device, ready to send (MANSCDP body if any)."""
        host, port = self.local_address or (self.spec.host, 0)
        realm = self.server.realm
        me = f"<sip:{self.device_id}@{realm}>"
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/{self.spec.transport} {host}:{port};rport;branch={sip.new_branch()}")
        h.set("From", f"{me};tag={tag or sip.new_tag()}")
        h.set("To", me if method == "REGISTER" else f"<sip:{self.server.server_id}@{realm}>")
        h.set("Call-ID", call_id or sip.new_call_id())
        h.set("CSeq", f"{self._next_cseq()} {method}")
        h.set("Max-Forwards", "70")
        h.set("User-Agent", "VMS-SIM GB/T 28181 device")
        if body:
            h.set("Content-Type", "Application/MANSCDP+xml")
        return sip.Request(method, f"sip:{self.server.server_id}@{realm}", h, body)

    def _transact(self, req: sip.Request, timeout: float = TIMER_F) -> sip.Response | None:
        """Send ``req`` and wait for its final response (sent again over UDP); None on timeout or cut."""
        branch = sip.vias(req.headers)[0].branch or ""
        pending = _Pending()
        self._pending[branch] = pending
        data = sip.serialize(req)
        conn = self._tcp
        try:
            if not self._send(data):
                return None
            deadline = time.monotonic() + timeout
            wait = T1
            while not pending.done.wait(min(wait, max(0.0, deadline - time.monotonic()))):
                if time.monotonic() >= deadline or self._cut or self._stop.is_set() or self._tcp is not conn:
                    return None  # over TCP also when the connection it went out on is gone
                if self.udp:
                    self._send(data)
                    wait = min(wait * 2, T2)
            return pending.response
        finally:
            self._pending.pop(branch, None)

    # -- registration and keepalive -------------------------------------------------------------------------
    def _life(self) -> None:
        backoff = 1.0
        misses = 0
        while not self._stop.is_set():
            self._wake.clear()
            if self._cut:
                self._wake.wait(0.5)
                continue
            if not self.udp and self._tcp is None and not self._connect():
                self._wake.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            now = time.monotonic()
            if not self._registered or now >= self._refresh_at:
                if not self._register():
                    self.counters["register_failures"] += 1
                    self._close_tcp()  # a connection nobody answers on is dead: the next try connects anew
                    self._wake.wait(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                backoff, misses = 1.0, 0
                self._next_keepalive = time.monotonic() + self.spec.keepalive_s
            if time.monotonic() >= self._next_keepalive:
                self._next_keepalive = time.monotonic() + self.spec.keepalive_s
                resp = self._keepalive()
                if resp is None:
                    misses += 1
                    self.counters["keepalive_failures"] += 1
                    if misses >= KEEPALIVE_MISSES:
                        self._registered = False
                        continue
                elif resp.status >= 300:  # 404: the center does not know us (it restarted): register again
                    self.counters["keepalive_failures"] += 1
                    self._registered = False
                    continue
                else:
                    misses = 0
            self._wake.wait(max(0.05, min(self._next_keepalive, self._refresh_at) - time.monotonic()))

    def _register(self) -> bool:
        expires = self.spec.expires_s
        auth: str | None = None
        for _ in range(3):  # plain, then with the digest (or a larger Expires after a 423)
            req = self._new_request("REGISTER", call_id=self._reg_call_id, tag=self._reg_tag)
            req.headers.set("Contact", f"<sip:{self.device_id}@{self._contact_host()}>")
            req.headers.set("Expires", str(expires))
            if auth is not None:
                req.headers.set("Authorization", auth)
            resp = self._transact(req, REGISTER_TIMEOUT_S)
            if resp is None:
                return False
            if resp.status == 401 and auth is None:
                ch = digest.parse_challenge(resp.headers.get("WWW-Authenticate") or "")
                auth = digest.client_authorization(ch, "REGISTER", req.uri, self.device_id, self.spec.password,
                                                   secrets.token_hex(8), 1)
                continue
            if resp.status == 423:
                expires = int(resp.headers.get("Min-Expires") or expires)
                auth = None
                continue
            if resp.status != 200:
                log.warning("GB device %s: REGISTER answered %d %s", self.device_id, resp.status, resp.reason)
                return False
            granted = resp.headers.get("Expires") or str(expires)
            granted_s = int(granted) if granted.strip().isdigit() else expires
            self._registered = True
            self._refresh_at = time.monotonic() + max(1.0, granted_s * REFRESH_AT)
            self.counters["registrations"] += 1
            log.info("GB device %s registered for %d s", self.device_id, granted_s)
            return True
        return False

    def _contact_host(self) -> str:
        host, port = self.local_address or (self.spec.host, 0)
        return f"{host}:{port}"

    def _keepalive(self) -> sip.Response | None:
        body = manscdp.build("Notify", "Keepalive", self._next_sn(), self.device_id, {"Status": "OK"})
        resp = self._transact(self._new_request("MESSAGE", body), timeout=max(1.0, min(TIMER_F, self.spec.keepalive_s)))
        if resp is not None and resp.status < 300:
            self.counters["keepalives"] += 1
        return resp

    # -- requests from the center -------------------------------------------------------------------------------
    def _reply(self, req: sip.Request, status: int, reason: str | None = None, *, tag: str | None = None,
               body: bytes = b"", content_type: str | None = None, contact: str | None = None) -> bytes:
        resp = sip.response_to(req, status, reason, to_tag=tag or sip.new_tag())
        resp.headers.set("User-Agent", "VMS-SIM GB/T 28181 device")
        if contact is not None:
            resp.headers.set("Contact", contact)
        if content_type is not None:
            resp.headers.set("Content-Type", content_type)
        resp.body = body
        data = sip.serialize(resp)
        branch = sip.vias(req.headers)[0].branch or ""
        now = time.monotonic()
        with self._lock:
            self._answered[(branch, req.method)] = (now, data)
            if len(self._answered) > 256:
                self._answered = {k: v for k, v in self._answered.items() if now - v[0] < TIMER_F}
        self._send(data)
        return data

    def _request(self, req: sip.Request) -> None:
        branch = sip.vias(req.headers)[0].branch or ""
        if req.method != "ACK":
            with self._lock:
                cached = self._answered.get((branch, req.method))
            if cached is not None:  # a retransmission: the same answer, handled once
                self._send(cached[1])
                return
        if req.method == "ACK":
            with self._lock:
                dialog = self._dialogs.get(req.headers.get("Call-ID") or "")
            if dialog is not None:
                dialog.acked.set()
                dialog.sender.go.set()
        elif req.method == "INVITE":
            self._invite(req)
        elif req.method == "BYE":
            self._bye(req)
        elif req.method == "MESSAGE":
            self._message(req)
        elif req.method == "OPTIONS":
            self._reply(req, 200)
        elif req.method == "CANCEL":
            self._reply(req, 481)  # INVITEs are answered at once: nothing left to cancel
        else:
            self._reply(req, 501)

    def _message(self, req: sip.Request) -> None:
        try:
            body = manscdp.parse(req.body)
        except manscdp.ManscdpError as exc:
            self._reply(req, 400, f"Bad Request ({exc})"[:100])
            return
        self._reply(req, 200)
        if body.root != "Query":
            return  # Control (PTZ, reboot, ...) is acknowledged and ignored
        self.counters["queries"] += 1
        if body.cmd == "RecordInfo":
            self.counters["record_queries"] += 1
        if body.cmd in ("Catalog", "DeviceInfo", "DeviceStatus", "RecordInfo"):
            self._later(self._answer_query, body)

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # shut down: the device is off
            self._worker.submit(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("GB device %s: %s failed", self.device_id, getattr(fn, "__name__", fn))

    def _answer_query(self, q: manscdp.Message) -> None:
        """Answer a query with one or more Response MESSAGEs (each waits for its 200)."""
        bodies: list[bytes] = []
        if q.cmd == "Catalog":
            items = self._catalog_items()
            for i in range(0, max(1, len(items)), self.spec.catalog_batch):
                bodies.append(manscdp.build("Response", "Catalog", q.sn, self.device_id,
                                            {"SumNum": str(len(items))},
                                            items=items[i : i + self.spec.catalog_batch]))
        elif q.cmd == "DeviceInfo":
            bodies.append(manscdp.build("Response", "DeviceInfo", q.sn, q.device_id, {
                "DeviceName": self.spec.name or self.device_id, "Result": "OK",
                "Manufacturer": self.spec.manufacturer, "Model": self._model(), "Firmware": "V1.0.0",
                "Channel": str(len(self.spec.stream_ids))}))
        elif q.cmd == "DeviceStatus":
            chans = [c for c in self.spec.stream_ids if q.device_id in (c, self.device_id)]
            encoding = any(self._mode(c) == "send" for c in chans)
            recording = any(self.recordings[c].recording for c in chans)
            bodies.append(manscdp.build("Response", "DeviceStatus", q.sn, q.device_id, {
                "Result": "OK", "Online": "ONLINE", "Status": "OK", "Encode": "ON" if encoding else "OFF",
                "Record": "ON" if recording else "OFF", "DeviceTime": local_time(time.time())},
                items=[], list_name="Alarmstatus"))
        elif q.cmd == "RecordInfo":
            bodies += self._record_info(q)
        for body in bodies:
            self._transact(self._new_request("MESSAGE", body))

    def _model(self) -> str:
        return self.spec.model or "VMS-SIM-" + DEVICE_TYPES[ids.parse(self.device_id).type]

    def _record_info(self, q: manscdp.Message) -> list[bytes]:
        """RecordInfo answers: the recorded files of the asked range of the channel named (all channels
        when the device is named), ``catalog_batch`` items per MESSAGE; SumNum 0 and no list when none."""
        chans = [c for c in self._channels() if q.device_id in (c.channel_id, self.device_id)]
        try:
            start, end = parse_local(q.fields.get("StartTime", "")), parse_local(q.fields.get("EndTime", ""))
        except ValueError:
            log.debug("GB device %s: RecordInfo with an unreadable range: %s", self.device_id, q.fields)
            start = end = 0.0  # nothing in it
        items: list[dict[str, str]] = []
        if q.fields.get("Type", "all") in ("all", "time"):  # all it records is by time, none by alarm
            now = time.time()
            for ch in chans:
                for a, b in self.recordings[ch.channel_id].files(start, end, now):
                    items.append({
                        "DeviceID": ch.channel_id, "Name": ch.name or ch.channel_id,
                        "FilePath": f"/record/{ch.channel_id}/{dt.datetime.fromtimestamp(a):%Y%m%d/%H%M%S}.ps",
                        "Address": ch.address or self.spec.name or self.device_id,
                        "StartTime": local_time(a), "EndTime": local_time(b), "Secrecy": "0", "Type": "time"})
        self.record_asks.append(RecordAsk("RecordInfo", q.device_id, start, end, answer=f"{len(items)} items"))
        named = next((c.name for c in chans if c.channel_id == q.device_id), "") or self.spec.name
        fields = {"Name": named or q.device_id, "SumNum": str(len(items))}
        batch = self.spec.catalog_batch
        if not items:
            return [manscdp.build("Response", "RecordInfo", q.sn, q.device_id, fields)]
        return [manscdp.build("Response", "RecordInfo", q.sn, q.device_id, fields, items=items[i : i + batch],
                              list_name="RecordList") for i in range(0, len(items), batch)]

    def _channels(self) -> tuple[GbChannel, ...]:
        """The channels as the catalog lists them (a camera without channels is its own)."""
        spec = self.spec
        return spec.channels or (GbChannel(spec.device_id, spec.name, spec.longitude, spec.latitude),)

    def _catalog_items(self) -> list[dict[str, str]]:
        spec = self.spec
        chans = self._channels()
        host, port = self.local_address or (spec.host, 0)
        civil = spec.civil_code or spec.device_id[:8]
        out = []
        for ch in chans:
            item = {
                "DeviceID": ch.channel_id, "Name": ch.name or ch.channel_id, "Manufacturer": spec.manufacturer,
                "Model": self._model(), "Owner": "Owner", "CivilCode": civil, "Address": ch.address,
                "Parental": "0",
                "ParentID": spec.device_id if ch.channel_id != spec.device_id else spec.server.server_id,
                "SafetyWay": "0", "RegisterWay": "1", "Secrecy": "0", "IPAddress": host, "Port": str(port),
                "Status": "OFF" if self._mode(ch.channel_id) == "stop" else "ON",
            }
            if ch.longitude is not None and ch.latitude is not None:
                item["Longitude"], item["Latitude"] = f"{ch.longitude:.6f}", f"{ch.latitude:.6f}"
            out.append(item)
        return out

    def _notify(self, channels: list[str], event: str) -> None:
        """Catalog notification of ``event`` (VLOST, ON) for these channels."""
        if not channels:
            return
        items = [{**it, "Event": event} for it in self._catalog_items() if it["DeviceID"] in channels]
        body = manscdp.build("Notify", "Catalog", self._next_sn(), self.device_id, {"SumNum": str(len(items))},
                             items=items)

        def send() -> None:
            if self._transact(self._new_request("MESSAGE", body)) is not None:
                self.counters["notifies"] += 1

        self._later(send)

    # -- media dialogs -----------------------------------------------------------------------------------------
    def _invite(self, req: sip.Request) -> None:
        self.counters["invites"] += 1
        channel = sip.uri_user(req.uri) or sip.uri_user(sip.parse_name_addr(req.headers.get("To") or "").uri)
        if channel not in self.spec.stream_ids:
            self._reply(req, 404, "Not Found (no such channel)")
            return
        call_id = req.headers.get("Call-ID") or ""
        with self._lock:
            known = self._dialogs.get(call_id)
        if known is not None:  # a re-INVITE: the session stays as it is
            self._send(known.ok)
            return
        try:
            offer = sdp.parse(req.body)
        except sdp.SdpError as exc:
            self._reply(req, 488, f"Not Acceptable Here ({exc})"[:100])
            return
        ps = [pt for pt, enc in offer.payloads if enc.upper().startswith("PS/")]
        problem = (f"unknown session s={offer.session}"[:60] if offer.session not in sdp.SESSIONS
                   else "the offer does not receive" if offer.direction not in ("recvonly", "sendrecv")
                   else "no PS payload type" if not ps else None)
        if problem is not None:
            self._reply(req, 488, f"Not Acceptable Here ({problem})")
            return
        playback = offer.session != "Play"
        spans: list[tuple[int, int]] | None = None
        speed = (offer.download_speed or 1) if offer.session == "Download" else 1
        if playback:
            recorded = self._recorded(channel, offer)
            ask = RecordAsk(offer.session, channel, offer.start, offer.stop, speed)
            if isinstance(recorded, str):
                self.record_asks.append(replace(ask, answer=f"488 {recorded}"))
                self._reply(req, 488, f"Not Acceptable Here ({recorded})")
                return
            self.record_asks.append(replace(ask, answer="200 OK"))
            self.counters["playbacks"] += 1
            spans = recorded
        tcp = offer.transport == "TCP"
        target = Target(offer.address, offer.port, offer.transport, connect=not tcp or offer.setup != "active")
        ssrc = offer.ssrc or sdp.ssrc_for(playback, self.server.realm, secrets.randbelow(10_000))
        sock = media_socket(self.spec.host, target)
        answer = sdp.Sdp(session=offer.session, user=channel, address=self.spec.host, port=sock.getsockname()[1],
                         transport=offer.transport, direction="sendonly",
                         setup=("active" if target.connect else "passive") if tcp else None, ssrc=ssrc,
                         payloads=((ps[0], "PS/90000"),), start=offer.start, stop=offer.stop,
                         uri=offer.uri if playback else None)
        sender = RtpSender(f"{channel[-6:]}-{call_id[:6]}", self.clip, int(ssrc), sock, target,
                           lambda: self._mode(channel), lambda why: self._ended(call_id, why), payload_type=ps[0],
                           spans=spans, speed=speed)
        tag = sip.new_tag()
        to = req.headers.get("To") or ""
        contact = req.headers.get("Contact")
        dialog = _Dialog(
            call_id, channel, f"{to};tag={tag}" if sip.parse_name_addr(to).tag is None else to,
            req.headers.get("From") or "", sip.parse_name_addr(contact).uri if contact else req.uri, b"", sender)
        with self._lock:
            self._dialogs[call_id] = dialog
        dialog.ok = self._reply(req, 200, tag=tag, body=sdp.build(answer), content_type="APPLICATION/SDP",
                                contact=f"<sip:{channel}@{self._contact_host()}>")
        sender.start()
        self._spawn(self._await_ack, "ack", dialog)

    def _recorded(self, channel: str, offer: sdp.Sdp) -> list[tuple[int, int]] | str:
        """A playback's recorded spans in 90 kHz ticks from the start of its range, or why there are none."""
        rec = self.recordings[channel]
        if not rec.capable:
            return "the device keeps no recordings"
        if offer.stop <= offer.start:
            return "no time range (t=START END)"
        spans = [(round((a - offer.start) * CLOCK), round((b - offer.start) * CLOCK))
                 for a, b in rec.spans(offer.start, offer.stop, time.time())]
        return [(a, b) for a, b in spans if b > a] or "no recording in the range"

    def _await_ack(self, dialog: _Dialog) -> None:
        """Send the 200 again until the ACK (UDP, RFC 3261 Timer G); no ACK in 32 s ends the dialog."""
        deadline = time.monotonic() + TIMER_F
        wait = T1
        while not dialog.acked.wait(wait):
            if dialog.sender.stopped:
                return
            if time.monotonic() >= deadline:
                log.warning("GB device %s: no ACK for %s: hanging up", self.device_id, dialog.channel)
                self._end(dialog.call_id, send_bye=True)
                return
            if self.udp:
                self._send(dialog.ok)
            wait = min(wait * 2, T2)
        self.counters["streams"] += 1

    def _bye(self, req: sip.Request) -> None:
        call_id = req.headers.get("Call-ID") or ""
        with self._lock:
            dialog = self._dialogs.pop(call_id, None)
        if dialog is None:
            self._reply(req, 481)
            return
        self.counters["byes_received"] += 1
        dialog.sender.stop()
        self._reply(req, 200)

    def hang_up(self, channel: str | None = None) -> int:
        """The device ends its streams (of one channel, or all) with a BYE; how many it ended."""
        with self._lock:
            calls = [c for c, d in self._dialogs.items() if channel in (None, d.channel)]
        for c in calls:
            self._end(c, send_bye=True)
        return len(calls)

    def _ended(self, call_id: str, why: str) -> None:
        """A stream ended by itself: a recording sent in full is told to the center (which hangs up); a
        failed connection makes the device hang up."""
        if why == FINISHED:
            self._later(self._media_status, call_id)
            return
        log.info("GB device %s: stream %s ended: %s", self.device_id, call_id[:8], why)
        self._end(call_id, send_bye=True)

    def _end(self, call_id: str, send_bye: bool) -> None:
        with self._lock:
            dialog = self._dialogs.pop(call_id, None)
        if dialog is None:
            return
        dialog.sender.stop()
        if send_bye and not self._cut:
            self._later(self._send_bye, dialog)

    def _media_status(self, call_id: str) -> None:
        """MediaStatus 121, "the recording is sent", as devices send it: a MESSAGE from the device to
        the center outside the dialog, naming the channel, with the dialog's Call-ID (centers that match
        the session by Call-ID find it; the others by the channel)."""
        with self._lock:
            dialog = self._dialogs.get(call_id)
        if dialog is None:  # hung up already
            return
        body = manscdp.build("Notify", "MediaStatus", self._next_sn(), dialog.channel, {"NotifyType": "121"})
        if self._transact(self._new_request("MESSAGE", body, call_id=call_id)) is not None:
            self.counters["media_status"] += 1

    def _send_bye(self, dialog: _Dialog) -> None:
        host, port = self.local_address or (self.spec.host, 0)
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/{self.spec.transport} {host}:{port};rport;branch={sip.new_branch()}")
        h.set("From", dialog.our_party)
        h.set("To", dialog.their_party)
        h.set("Call-ID", dialog.call_id)
        h.set("CSeq", f"{self._next_cseq()} BYE")
        h.set("Max-Forwards", "70")
        if self._transact(sip.Request("BYE", dialog.target, h)) is not None:
            self.counters["byes_sent"] += 1


def fleet(server: GbServer, password: str, *, cameras: int = 1, nvr_channels: int = 0,
          prefix: str = "3205850100", transport: str = "UDP", keepalive_s: float = 60.0,
          clip: ClipParams = GB_PARAMS) -> list[GbDeviceSpec]:
    """IPCs (132, each with its 131 channel, serials from 900001) and an NVR (118, serial 900001) with
    ``nvr_channels`` channels (131, serials from 950001), under a 10-digit center and industry prefix."""
    if len(prefix) != 10 or not prefix.isdigit():
        raise ValueError(f"prefix must be 10 digits (center and industry), got {prefix!r}")
    if cameras + nvr_channels > 49_999 or min(cameras, nvr_channels) < 0:
        raise ValueError("too many devices for the serial ranges")
    common: dict[str, Any] = {"transport": transport, "keepalive_s": keepalive_s, "clip": clip}
    out = [GbDeviceSpec(f"{prefix}1320{900000 + k:06d}", server, password,
                        (GbChannel(f"{prefix}1310{900000 + k:06d}", f"GB IPC {k}"),), name=f"GB IPC {k}", **common)
           for k in range(1, cameras + 1)]
    if nvr_channels:
        chans = tuple(GbChannel(f"{prefix}1310{950000 + j:06d}", f"GB NVR channel {j}")
                      for j in range(1, nvr_channels + 1))
        out.append(GbDeviceSpec(f"{prefix}1180900001", server, password, chans, name="GB NVR", **common))
    return out


class GbControl:
    """The HTTP fault control of GB devices, shaped like the RTSP cameras' one:
    ``GET /cameras``, ``POST /cameras/{id}/fault`` with ``{"kind": ...}`` (a device or channel ID)."""

    def __init__(self, devices: Sequence[GbDevice], host: str, port: int) -> None:
        self.devices = list(devices)
        owner = {ch: d for d in self.devices for ch in [d.device_id, *d.spec.stream_ids]}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("GB control: " + format, *args)

            def _reply(self, status: int, body: Any) -> None:
                send_json(self, status, body)

            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/cameras":
                    self._reply(404, {"error": "not found"})
                    return
                self._reply(200, [row for d in devices for row in d.describe()])

            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "cameras" or parts[2] != "fault":
                    self._reply(404, {"error": "not found"})
                    return
                dev = owner.get(parts[1])
                if dev is None:
                    self._reply(404, {"error": f"unknown GB device or channel {parts[1]}"})
                    return
                try:
                    n = int(self.headers.get("Content-Length") or 0)
                    kind = str(json.loads(self.rfile.read(min(n, 4096)) or b"{}").get("kind", ""))
                    self._reply(200, dev.set_fault(parts[1], kind))
                except (ValueError, AttributeError) as exc:
                    self._reply(400, {"error": str(exc)})

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="gb-control", daemon=True)

    def start(self) -> GbControl:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
