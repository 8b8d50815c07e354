"""Cascade (级联): this center registers with its superior platforms and shares its cameras upward.

- **Link** per superior (``superiors:`` in the hub config): REGISTER with digest, renewed at 80 % of
  the granted lifetime; a Keepalive every ``keepalive_interval_s``. Keepalives unanswered
  ``keepalive_misses`` times, a keepalive refused (the superior forgot us: it restarted) or a closed
  TCP connection make the link register again at once; failed registrations back off from 1 s,
  doubling, to ``retry_max_s``. The link's state (``registering``, ``registered``, ``failing``), since
  when and its last error are shown to admins; two failed registrations in a row raise one
  ``superior_down`` alert through the one alert writer, resolved when the link is up again.
- **Catalog**: a Catalog query is answered with the center tree (a business group, 215, for each top
  center; a virtual organisation, 216, for each center below it) and every shared device with its
  status, position and parent, ``catalog_page`` items per MESSAGE with ``SumNum``.
- **Subscriptions**: SUBSCRIBE to Catalog (and Alarm) is answered 200; from then on, each change of a
  shared device's state is told in a NOTIFY as soon as the hub's tick sees it: OFF (offline), VLOST
  (online without video), DEFECT (a picture defect our analysis found, which no other platform
  tells its superior), ON.
- A request about a device the superior may not see is refused (403) and audited.

Everything here runs on the GB/T 28181 side's event loop; the hub is reached through ``CascadeLink``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from vms.alerts import AlertKind
from vms.centers import CenterTree
from vms.config import Gb28181Config, SuperiorConfig
from vms.events import EventBus
from vms.gb28181 import digest, manscdp, sdp, sip
from vms.gb28181.transport import Peer, Transport
from vms.gb28181.upward import LiveSegments, Recorded, UpSession, Upward, spans_of
from vms.kernel import ids
from vms.media.sender import FINISHED
from vms.services.alerting import NewAlert

log = logging.getLogger(__name__)

LinkState = Literal["registering", "registered", "failing"]
REQUEST_TIMEOUT_S = 4.0  # a superior that does not answer within this is not there (Timer F is 32 s)
ALERT_AFTER = 2  # failed registrations in a row before the link is reported down
RESYNC_S = 30.0  # a full comparison of the told states, besides the change events

#: The catalog event that tells a superior a device's state (vms.health.state_name).
EVENT_OF_STATE = {"offline": "OFF", "unknown": "OFF", "online": "VLOST", "degraded": "DEFECT", "uploading": "ON"}


@dataclass(frozen=True)
class Shared:
    """A device as the catalog shows it upward."""

    device_id: str
    name: str
    location: str
    state: str  # vms.health.state_name
    homes: tuple[str, ...]  # its home centers
    lon: float | None = None
    lat: float | None = None


@dataclass
class CascadeLink:
    """What the cascade asks of the hub."""

    devices: Callable[[], list[Shared]]  # every device in service
    states: Callable[[list[str]], dict[str, str]]  # device -> state name, for those in service
    alert: Callable[[NewAlert], int]  # AlertWriter.raise_or_update
    resolve: Callable[[str, str, str], int | None]  # AlertWriter.resolve_active
    audit: Callable[[str, str, str, dict[str, Any]], None]  # (who, action, target, detail)
    events: EventBus | None = None
    live: LiveSegments | None = None  # a camera's live segments, for video upward
    recorded: Recorded | None = None  # a camera's archived segments of a range, for recordings upward
    stale_after_s: float = 10.0  # live media older than this is no live media (vms.config.LiveConfig)


@dataclass
class _Subscription:
    """A superior's SUBSCRIBE dialog: NOTIFYs go back in it."""

    call_id: str
    event: str  # Catalog or Alarm
    event_header: str
    target: str  # the subscriber's Contact URI
    local: str  # our From (the SUBSCRIBE's To with our tag)
    remote: str  # its From, with its tag
    peer: Peer
    expires_at: float
    cseq: int = 0


@dataclass
class Link:
    cfg: SuperiorConfig
    since: float
    state: LinkState = "registering"
    last_error: str = ""
    registered_at: float | None = None
    expires_at: float | None = None
    last_keepalive: float | None = None
    failures: int = 0
    alerted: bool = False
    peer: Peer | None = None
    call_id: str = field(default_factory=sip.new_call_id)  # of its REGISTERs (one registration)
    from_tag: str = field(default_factory=sip.new_tag)
    cseq: int = 0
    subscriptions: dict[str, _Subscription] = field(default_factory=dict)
    told: dict[str, str] = field(default_factory=dict)  # device -> the catalog event last told
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("registrations", "register_failures", "keepalives", "keepalives_lost", "catalog_queries",
         "catalog_items_sent", "notifies", "refused"), 0))
    kick: asyncio.Event = field(default_factory=asyncio.Event)

    def set_state(self, state: LinkState, now: float, error: str = "") -> None:
        if state != self.state:
            self.state, self.since = state, now
        if error:
            self.last_error = error


class Cascade:
    """The links to this center's superiors; ``handles``/``handle`` take their requests."""

    def __init__(self, superiors: Iterable[SuperiorConfig], gb: Gb28181Config, tree: CenterTree,
                 transport: Transport, link: CascadeLink, clock: Callable[[], float] = time.time,
                 offload: Callable[..., Any] = lambda fn, *a: fn(*a)) -> None:
        """``offload(fn, *args)`` runs store writes (alerts, audit) off the SIP loop."""
        self.gb = gb
        self.tree = tree
        self.transport = transport
        self.hub = link
        self.clock = clock
        self.offload = offload
        self.server_id = gb.server_id or ""
        now = clock()
        self.links = {s.server_id: Link(s, now) for s in superiors}
        self._group_ids = _center_catalog_ids(tree)
        self._sn = secrets.randbelow(10_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._spawned: set[asyncio.Task[None]] = set()
        self._compare_all = False  # a subscription began: compare every device at the next wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self.upward: Upward | None = None
        if link.live is not None:
            self.upward = Upward(gb.media_host or gb.host, link.live, link.stale_after_s, self._media_ended,
                                 link.recorded)

    # -- life cycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep every link up and tell subscribers of changes, until cancelled."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._tasks = [loop.create_task(self._keep(link)) for link in self.links.values()]
        self._tasks.append(loop.create_task(self._watch()))
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for t in self._tasks:
                t.cancel()

    async def goodbye(self) -> None:
        """De-register from every superior we are registered with (stop): they see us leave at once."""
        if self.upward is not None:
            await asyncio.gather(*(self._quietly(self._bye(s, timeout=1.0)) for s in self.upward.stop_all()))

        async def one(link: Link) -> None:
            if link.state == "registered" and link.peer is not None:
                with contextlib.suppress(Exception):
                    await self._register_once(link, 0, timeout=1.0)
        await asyncio.gather(*(one(x) for x in self.links.values()))

    def closed(self, peer: Peer) -> None:
        """A TCP connection ended: a link over it registers again at once."""
        for link in self.links.values():
            if link.peer == peer:
                link.peer = None
                link.kick.set()

    # -- registration ------------------------------------------------------------------------------
    async def _keep(self, link: Link) -> None:
        c = link.cfg
        while True:
            try:
                granted = await self._register_once(link, c.expires_s)
            except _Refused as exc:
                await self._failed(link, str(exc))
                continue
            except (TimeoutError, ConnectionError, OSError) as exc:
                await self._failed(link, _why(exc, link))
                continue
            now = self.clock()
            first = link.registered_at is None or link.state != "registered"
            link.failures = 0
            link.registered_at, link.expires_at = now, now + granted
            link.set_state("registered", now)
            link.counters["registrations"] += 1
            if first:  # a superior that lost us (restarted, or we were cut off) subscribes anew
                link.subscriptions.clear()
                log.info("GB/T 28181 cascade: registered with %s (%s) for %d s", c.name, c.server_id, granted)
            if link.alerted:
                link.alerted = False
                self.offload(self.hub.resolve, _fingerprint(link), "system", "registered again")
            await self._stay(link, now + 0.8 * granted)

    async def _stay(self, link: Link, renew_at: float) -> None:
        """Keepalives until the registration is due for renewal, or the link is lost."""
        c = link.cfg
        misses = 0
        link.kick.clear()
        while True:
            wait = min(c.keepalive_interval_s, renew_at - self.clock())
            if wait <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link.kick.wait(), wait)
            if link.kick.is_set():  # the connection closed
                link.set_state("registering", self.clock(), "connection closed")
                return
            if self.clock() >= renew_at:
                return
            status = await self._keepalive(link)
            if status is None:
                misses += 1
                link.counters["keepalives_lost"] += 1
                if misses >= c.keepalive_misses:
                    link.set_state("registering", self.clock(), f"{misses} keepalives unanswered")
                    return
            elif status >= 300:  # it no longer knows us (restarted, or expired us): register again now
                link.set_state("registering", self.clock(), f"keepalive answered {status}")
                return
            else:
                misses = 0

    async def _failed(self, link: Link, why: str) -> None:
        link.failures += 1
        link.counters["register_failures"] += 1
        now = self.clock()
        link.set_state("failing", now, why)
        log.warning("GB/T 28181 cascade: %s (%s): %s", link.cfg.name, link.cfg.server_id, why)
        if link.failures >= ALERT_AFTER and not link.alerted:
            link.alerted = True
            c = link.cfg
            self.offload(self.hub.alert, NewAlert(
                _fingerprint(link), AlertKind.SUPERIOR_DOWN,
                f"link to superior {c.name} ({c.server_id} at {c.host}:{c.port}) down: {why}"[:300], now,
                {"superior": c.name, "server_id": c.server_id, "address": f"{c.transport}:{c.host}:{c.port}",
                 "error": why[:300]}))
        delay = min(link.cfg.retry_max_s, 2.0 ** (link.failures - 1))
        link.kick.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.kick.wait(), delay * (0.8 + 0.4 * secrets.randbelow(1000) / 1000))

    async def _peer(self, link: Link) -> Peer:
        c = link.cfg
        if link.peer is None:
            if c.transport == "tcp":
                link.peer = await self.transport.connect(c.host, c.port, REQUEST_TIMEOUT_S)
            else:
                link.peer = Peer("UDP", c.host, c.port)
        return link.peer

    async def _register_once(self, link: Link, expires: int, timeout: float = REQUEST_TIMEOUT_S) -> int:
        """One REGISTER (answering a digest challenge); the granted lifetime. Raises ``_Refused``,
        TimeoutError or ConnectionError."""
        c = link.cfg
        peer = await self._peer(link)
        uri = f"sip:{c.server_id}@{c.realm}"
        auth: str | None = None
        for _attempt in range(3):  # first try, the challenge's answer, one stale nonce
            link.cseq += 1
            req = sip.Request("REGISTER", uri, self._headers(link, peer, "REGISTER", link.cseq,
                                                             f"<sip:{self.server_id}@{self.gb.realm}>;tag={link.from_tag}",
                                                             link.call_id, to_tag=None))
            req.headers.set("Contact", f"<sip:{self.server_id}@{self._local(peer)}:{self.gb.port}>")
            req.headers.set("Expires", str(expires))
            if auth is not None:
                req.headers.set("Authorization", auth)
            resp = await self.transport.request(peer, req, timeout)
            if resp.status in (401, 407):
                stale = auth is not None and "stale=true" in (_challenge_header(resp) or "").lower()
                if auth is not None and not stale:
                    raise _Refused(f"registration refused ({resp.status} {resp.reason}): wrong password?")
                value = _challenge_header(resp)
                if value is None:
                    raise _Refused(f"{resp.status} without a challenge")
                try:
                    ch = digest.parse_challenge(value)
                    auth = digest.client_authorization(ch, "REGISTER", uri, self.server_id, c.password,
                                                       secrets.token_hex(8), 1)
                except digest.DigestError as exc:
                    raise _Refused(f"cannot answer the challenge: {exc}") from None
                continue
            if resp.status >= 300:
                raise _Refused(f"registration refused ({resp.status} {resp.reason})")
            value = (resp.headers.get("Expires") or "").strip()
            return int(value) if value.isdigit() else expires
        raise _Refused("challenged again after answering")

    async def _keepalive(self, link: Link) -> int | None:
        """One Keepalive; its status, or None without an answer."""
        try:
            resp = await self._message(link, "Notify", "Keepalive", self.next_sn(), self.server_id, {"Status": "OK"})
        except (TimeoutError, ConnectionError, OSError):
            return None
        link.counters["keepalives"] += 1
        if resp.status < 300:
            link.last_keepalive = self.clock()
        return resp.status

    # -- sending ------------------------------------------------------------------------------------
    def next_sn(self) -> int:
        self._sn = self._sn % 999_999 + 1
        return self._sn

    def _local(self, peer: Peer) -> str:
        """Our address as the superior reaches it (Via, Contact, SDP)."""
        host = self.gb.media_host or self.gb.host
        if host not in ("0.0.0.0", "::", ""):
            return host
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # no packet is sent
            s.connect((peer.host, peer.port))
            return str(s.getsockname()[0])

    def _headers(self, link: Link, peer: Peer, method: str, cseq: int, from_: str, call_id: str,
                 to_tag: str | None, to: str | None = None) -> sip.Headers:
        c = link.cfg
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/{peer.transport} {self._local(peer)}:{self.gb.port};rport;branch={sip.new_branch()}")
        h.set("From", from_ if ";tag=" in from_ else f"{from_};tag={sip.new_tag()}")
        h.set("To", to or (f"<sip:{self.server_id}@{self.gb.realm}>" if method == "REGISTER"
                           else f"<sip:{c.server_id}@{c.realm}>") + (f";tag={to_tag}" if to_tag else ""))
        h.set("Call-ID", call_id)
        h.set("CSeq", f"{cseq} {method}")
        h.set("Max-Forwards", "70")
        h.set("User-Agent", "vms-monitoring-center")
        return h

    async def _message(self, link: Link, root: str, cmd: str, sn: int, device_id: str,
                       fields: dict[str, str] | None = None, items: list[dict[str, str]] | None = None,
                       list_name: str = "DeviceList") -> sip.Response:
        peer = await self._peer(link)
        c = link.cfg
        req = sip.Request("MESSAGE", f"sip:{c.server_id}@{c.realm}",
                          self._headers(link, peer, "MESSAGE", 20, f"<sip:{self.server_id}@{self.gb.realm}>",
                                        sip.new_call_id(), None))
        req.headers.set("Content-Type", "Application/MANSCDP+xml")
        req.body = manscdp.build(root, cmd, sn, device_id, fields, items=items, list_name=list_name)
        return await self.transport.request(peer, req, REQUEST_TIMEOUT_S)

    # -- the superior's requests ----------------------------------------------------------------------
    def handles(self, req: sip.Request) -> bool:
        """Whether ``req`` comes from one of our superiors."""
        if not self.links:
            return False
        try:
            sender = sip.uri_user(sip.parse_name_addr(req.headers.get("From") or "").uri)
        except sip.SipError:
            return False
        return sender in self.links

    def handle(self, req: sip.Request, peer: Peer) -> sip.Response | None:
        link = self.links[sip.uri_user(sip.parse_name_addr(req.headers.get("From") or "").uri)]
        if req.method == "MESSAGE":
            return self._on_message(link, req)
        if req.method == "SUBSCRIBE":
            return self._on_subscribe(link, req, peer)
        call_id = req.headers.get("Call-ID") or ""
        if req.method == "INVITE":
            return self._on_invite(link, req, peer)
        if req.method == "ACK":
            if self.upward is not None:
                self.upward.ack(call_id)
            return None
        if req.method == "BYE":
            found = self.upward is not None and self.upward.bye(call_id)
            return sip.response_to(req, 200 if found else 481)
        if req.method == "OPTIONS":
            return sip.response_to(req, 200)
        return sip.response_to(req, 501, "Not Implemented (cascade)")

    def _on_invite(self, link: Link, req: sip.Request, peer: Peer) -> sip.Response | None:
        device = sip.uri_user(req.uri) or sip.uri_user(sip.parse_name_addr(req.headers.get("To") or "").uri)
        if not ids.is_valid(device):
            return sip.response_to(req, 404, "Not Found (not a device ID)")
        if not self._may_see(link, device):
            return self._refuse(link, req, device, "INVITE")
        if self.upward is None:
            return sip.response_to(req, 501, "Not Implemented (no live video here)")
        self.transport.respond(req, peer, sip.response_to(req, 100))  # Trying: the answer follows
        self._spawn(self._answer_invite(link, req, peer, device))
        return None  # answered by _answer_invite; retransmissions meanwhile are absorbed

    async def _answer_invite(self, link: Link, req: sip.Request, peer: Peer, device: str) -> None:
        """Answer a superior's INVITE off the SIP loop: reading the index and opening a segment take
        milliseconds that every other device's message would wait for."""
        upward = self.upward
        assert upward is not None
        try:
            resp = await asyncio.to_thread(upward.invite, req, peer, link.cfg.name, device)
        except Exception:
            log.exception("GB/T 28181 upward: the INVITE of %s for %s failed", link.cfg.name, device)
            resp = sip.response_to(req, 500)
        self.transport.respond(req, peer, resp)
        if resp.status == 200:
            offer = sdp.parse(req.body)  # parsed by invite() already: it answered 200
            detail: dict[str, Any] = {"superior": link.cfg.server_id}
            if offer.session != "Play":  # footage pulled from the archive, audited like a police clip
                detail |= {"start": offer.start, "end": offer.stop, "speed": offer.download_speed or 1}
            self.offload(self.hub.audit, f"superior:{link.cfg.name}", f"cascade.{offer.session.lower()}", device,
                         detail)

    def _media_ended(self, session: UpSession, why: str) -> None:
        """A stream upward ended by itself: a recording sent in full is told by MediaStatus 121 (the
        superior hangs up); a camera whose media stopped, by a BYE."""
        if self._loop is None:
            return
        if why == FINISHED:
            link = next((x for x in self.links.values() if x.cfg.name == session.superior), None)
            if link is not None:
                told = self._message(link, "Notify", "MediaStatus", self.next_sn(), session.device_id,
                                     {"NotifyType": "121"})
                self._loop.call_soon_threadsafe(self._spawn, self._quietly(told))
            return
        self._loop.call_soon_threadsafe(self._spawn, self._quietly(self._bye(session)))

    async def _bye(self, s: UpSession, timeout: float = REQUEST_TIMEOUT_S) -> None:
        link = next((x for x in self.links.values() if x.cfg.name == s.superior), None)
        if link is None:
            return
        s.cseq += 1
        req = sip.Request("BYE", s.target, self._headers(link, s.peer, "BYE", 100 + s.cseq, s.local, s.call_id, None,
                                                          to=s.remote))
        await self.transport.request(s.peer, req, timeout)

    def _on_message(self, link: Link, req: sip.Request) -> sip.Response:
        try:
            body = manscdp.parse(req.body)
        except manscdp.ManscdpError as exc:
            return sip.response_to(req, 400, f"Bad Request ({exc})"[:120])
        if body.root != "Query":
            return sip.response_to(req, 200)  # answers and notifications from above: nothing to do
        about = body.device_id
        if about not in (self.server_id, *self._group_ids.values()) and not self._may_see(link, about):
            return self._refuse(link, req, about, f"MESSAGE {body.cmd}")
        if body.cmd == "Catalog":
            link.counters["catalog_queries"] += 1
            self._spawn(self._send_catalog(link, body.sn))
        elif body.cmd == "DeviceInfo":
            self._spawn(self._quietly(self._message(link, "Response", "DeviceInfo", body.sn, about,
                                                         self._device_info(link, about))))
        elif body.cmd == "RecordInfo":
            self._spawn(self._send_records(link, body))
        elif body.cmd == "DeviceStatus":
            self._spawn(self._quietly(self._message(link, "Response", "DeviceStatus", body.sn, about,
                                                         self._device_status(about))))
        else:
            return sip.response_to(req, 501, f"Not Implemented ({body.cmd[:40]})")
        return sip.response_to(req, 200)

    async def _send_records(self, link: Link, q: manscdp.Message) -> None:
        """RecordInfo from the archive index: one item per span without gaps, paged like the catalog."""
        start = manscdp.parse_local_time(q.fields.get("StartTime", ""))
        end = manscdp.parse_local_time(q.fields.get("EndTime", ""))
        items: list[dict[str, str]] = []
        if start is not None and end is not None and end > start and self.hub.recorded is not None:
            segs = await asyncio.get_running_loop().run_in_executor(None, self.hub.recorded, q.device_id, start, end)
            for span in spans_of(segs):
                # Whole seconds in the body: the end rounded up, so that a recording is never told shorter.
                a, b = max(start, span[0][1]), min(end, math.ceil(span[-1][2]))
                items.append({"DeviceID": q.device_id, "Name": q.device_id, "FilePath": f"{q.device_id}/{int(a)}",
                              "Address": "", "StartTime": manscdp.local_time(a), "EndTime": manscdp.local_time(b),
                              "Secrecy": "0", "Type": "time", "RecorderID": self.server_id})
        self.offload(self.hub.audit, f"superior:{link.cfg.name}", "cascade.record_info", q.device_id,
                     {"superior": link.cfg.server_id, "start": q.fields.get("StartTime", "")[:40],
                      "end": q.fields.get("EndTime", "")[:40], "spans": len(items)})
        fields = {"Name": q.device_id, "SumNum": str(len(items))}
        page = link.cfg.catalog_page
        for i in range(0, max(1, len(items)), page):
            chunk = items[i:i + page]
            await self._quietly(self._message(link, "Response", "RecordInfo", q.sn, q.device_id, fields,
                                              items=chunk or None, list_name="RecordList"))

    def _refuse(self, link: Link, req: sip.Request, about: str, what: str) -> sip.Response:
        link.counters["refused"] += 1
        log.warning("GB/T 28181 cascade: %s asked for %s (%s), which it may not see: 403", link.cfg.name, about, what)
        self.offload(self.hub.audit, f"superior:{link.cfg.name}", "cascade.refused", about,
                     {"superior": link.cfg.server_id, "request": what})
        return sip.response_to(req, 403, "Forbidden (not shared with this platform)")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` on the loop, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    async def _quietly(self, aw: Any) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await aw

    def _device_info(self, link: Link, about: str) -> dict[str, str]:
        if about == self.server_id:
            root = self.tree.roots[0].name if self.tree.roots else "monitoring center"
            return {"Result": "OK", "DeviceName": root, "Manufacturer": "vms", "Model": "monitoring center",
                    "Firmware": "1", "Channel": str(len(self._shared(link)))}
        dev = next((d for d in self._shared(link) if d.device_id == about), None)
        return {"Result": "OK" if dev else "ERROR", "DeviceName": dev.name if dev else ""}

    def _device_status(self, about: str) -> dict[str, str]:
        now = manscdp.local_time(self.clock())
        if about == self.server_id:
            return {"Result": "OK", "Online": "ONLINE", "Status": "OK", "DeviceTime": now}
        state = self.hub.states([about]).get(about, "offline")
        on = state not in ("offline", "unknown")
        return {"Result": "OK", "Online": "ONLINE" if on else "OFFLINE", "Status": "OK" if on else "ERROR",
                "Encode": "ON" if state == "uploading" else "OFF", "Record": "ON" if state == "uploading" else "OFF",
                "DeviceTime": now}

    # -- catalog ------------------------------------------------------------------------------------
    def _may_see(self, link: Link, device_id: str, homes: Iterable[str] | None = None) -> bool:
        share = link.cfg.share
        if any(e.isdigit() and device_id.startswith(e) for e in share):
            return True
        centers = {e for e in share if not e.isdigit()}
        if not centers:
            return False
        if homes is None:
            homes = [c.id for c in self.tree if c.covers(device_id)]
        for h in homes:
            node = self.tree.by_id.get(h)
            if node is not None and centers.intersection(node.path()):
                return True
        return False

    def _shared(self, link: Link) -> list[Shared]:
        return [d for d in self.hub.devices() if self._may_see(link, d.device_id, d.homes)]

    def catalog_items(self, link: Link) -> list[dict[str, str]]:
        """The groups (centers) and devices a superior sees, groups first."""
        devices = self._shared(link)
        used: set[str] = set()
        for d in devices:
            for h in d.homes[:1]:
                node = self.tree.by_id.get(h)
                if node is not None:
                    used.update(node.path())
        for e in link.cfg.share:
            if e in self.tree.by_id:
                used.update(c.id for c in self.tree if e in c.path())
        items: list[dict[str, str]] = []
        for node in self.tree:
            if node.id not in used:
                continue
            item = {"DeviceID": self._group_ids[node.id], "Name": node.name}
            if node.parent is not None:
                root = node
                while root.parent is not None:
                    root = root.parent
                item |= {"ParentID": self._group_ids[node.parent.id], "BusinessGroupID": self._group_ids[root.id]}
            items.append(item)
        return items + [self._device_item(d) for d in devices]

    def _device_item(self, d: Shared) -> dict[str, str]:
        """A device's catalog item (in the catalog, and in the ADD event of a device shared later)."""
        parent = self._group_ids.get(d.homes[0]) if d.homes else None
        item = {"DeviceID": d.device_id, "Name": d.name or d.device_id, "Manufacturer": "", "Model": "",
                "Owner": "", "CivilCode": d.device_id[:6], "Address": d.location, "Parental": "0",
                "ParentID": parent or self.server_id, "SafetyWay": "0", "RegisterWay": "1", "Secrecy": "0",
                "Status": "OFF" if EVENT_OF_STATE.get(d.state, "OFF") == "OFF" else "ON"}
        if d.lon is not None and d.lat is not None:
            item |= {"Longitude": f"{d.lon:.6f}", "Latitude": f"{d.lat:.6f}"}
        return item

    async def _send_catalog(self, link: Link, sn: int) -> None:
        """The catalog in pages of ``catalog_page`` items, a few MESSAGEs in flight at once."""
        items = self.catalog_items(link)
        page = link.cfg.catalog_page
        pages = [items[i:i + page] for i in range(0, len(items), page)] or [[]]
        window = asyncio.Semaphore(8)
        total = str(len(items))

        async def send(chunk: list[dict[str, str]]) -> bool:
            async with window:
                try:
                    resp = await self._message(link, "Response", "Catalog", sn, self.server_id, {"SumNum": total},
                                               items=chunk)
                except (TimeoutError, ConnectionError, OSError):
                    return False
                return resp.status < 300

        t0 = time.perf_counter()
        sent = await asyncio.gather(*(send(p) for p in pages))
        link.counters["catalog_items_sent"] += sum(len(p) for p, ok in zip(pages, sent, strict=True) if ok)
        log.info("GB/T 28181 cascade: catalog of %d items to %s in %d messages (%d unanswered), %.2f s",
                 len(items), link.cfg.name, len(pages), sent.count(False), time.perf_counter() - t0)

    # -- subscriptions ------------------------------------------------------------------------------
    def _on_subscribe(self, link: Link, req: sip.Request, peer: Peer) -> sip.Response:
        h = req.headers
        event_header = h.get("Event") or ""
        event = event_header.split(";")[0].strip()
        if event not in ("Catalog", "Alarm"):
            return sip.response_to(req, 489, "Bad Event")
        value = (h.get("Expires") or "3600").strip()
        if not value.isdigit():
            return sip.response_to(req, 400, "Bad Request (Expires is not a number)")
        expires = min(int(value), 86400)
        call_id = h.get("Call-ID") or ""
        sub = link.subscriptions.get(call_id)
        tag = sip.parse_name_addr(sub.local).tag if sub is not None else sip.new_tag()
        resp = sip.response_to(req, 200, to_tag=tag)
        resp.headers.set("Expires", str(expires))
        if expires == 0:
            link.subscriptions.pop(call_id, None)
            return resp
        contact = h.get("Contact")
        target = sip.parse_name_addr(contact).uri if contact else sip.parse_name_addr(h.get("From") or "").uri
        if sub is None:
            sub = _Subscription(call_id, event, event_header, target, f"{h.get('To')};tag={tag}", h.get("From") or "",
                                peer, 0.0)
            link.subscriptions[call_id] = sub
            if event == "Catalog":  # changes are told from now on, against what the catalog says (ON or
                # OFF): a camera online without video is told VLOST at the next comparison, at once
                for d in self._shared(link):
                    link.told[d.device_id] = "OFF" if EVENT_OF_STATE.get(d.state, "OFF") == "OFF" else "ON"
                self._compare_all = True
        sub.expires_at = self.clock() + expires
        sub.peer = peer
        self._spawn(self._quietly(self._notify(link, sub, [])))
        return resp

    async def _notify(self, link: Link, sub: _Subscription, items: list[dict[str, str]]) -> None:
        left = max(0, int(sub.expires_at - self.clock()))
        sub.cseq += 1
        req = sip.Request("NOTIFY", sub.target, self._headers(link, sub.peer, "NOTIFY", sub.cseq, sub.local,
                                                               sub.call_id, None, to=sub.remote))
        h = req.headers
        h.set("Event", sub.event_header)
        h.set("Subscription-State", f"active;expires={left}" if left else "terminated;reason=timeout")
        h.set("Content-Type", "Application/MANSCDP+xml")
        req.body = manscdp.build("Notify", sub.event, self.next_sn(), self.server_id, {"SumNum": str(len(items))},
                                 items=items)
        resp = await self.transport.request(sub.peer, req, REQUEST_TIMEOUT_S)
        link.counters["notifies"] += 1
        if resp.status == 481:  # the superior dropped the subscription
            link.subscriptions.pop(sub.call_id, None)

    async def _watch(self) -> None:
        """Tell catalog subscribers of every state change, from the hub's change events (and a full
        comparison now and then, so nothing missed is missed for long)."""
        bus = self.hub.events
        sub = bus.subscribe(4096) if bus is not None else None
        last_full = self.clock()
        try:
            while True:
                changed: list[str] | None = None
                if sub is not None:
                    with contextlib.suppress(TimeoutError):
                        ev = await asyncio.wait_for(sub.get(), 1.0)
                        if ev.kind == "changed":
                            changed = list(ev.data.get("devices") or [])
                        elif ev.kind == "overflow" and bus is not None:
                            bus.unsubscribe(sub)
                            sub = bus.subscribe(4096)
                            changed = None
                            last_full = 0.0
                else:
                    await asyncio.sleep(1.0)
                now = self.clock()
                if now - last_full >= RESYNC_S or self._compare_all:
                    self._compare_all = False
                    last_full, changed = now, None
                    await self._tell(None)
                elif changed:
                    await self._tell(changed)
        finally:
            if sub is not None and bus is not None:
                bus.unsubscribe(sub)

    async def _tell(self, device_ids: list[str] | None) -> None:
        """NOTIFY catalog subscribers of the devices (all when None) whose state differs from what they were told."""
        now = self.clock()
        listening = [x for x in self.links.values() if any(s.event == "Catalog" and s.expires_at > now
                                                          for s in x.subscriptions.values())]
        if not listening:
            return
        for link in self.links.values():
            for cid in [c for c, s in link.subscriptions.items() if s.expires_at <= now]:
                link.subscriptions.pop(cid)
        if device_ids is not None and any(d not in x.told for x in listening for d in device_ids):
            device_ids = None  # a device the superiors do not know yet: its whole item goes with an ADD
        shared: dict[str, Shared] = {}
        if device_ids is None:
            shared = {d.device_id: d for d in self.hub.devices()}
            states = {d.device_id: (d.state, d.homes) for d in shared.values()}
        else:
            states = {d: (st, ()) for d, st in self.hub.states(device_ids).items()}
        for link in listening:
            items = []
            for d, (state, homes) in states.items():
                if not self._may_see(link, d, homes or None):
                    continue
                if d not in link.told and d in shared:  # shared since the catalog was sent
                    items.append(self._device_item(shared[d]) | {"Event": "ADD"})
                event = EVENT_OF_STATE.get(state, "OFF")
                if link.told.get(d) != event:
                    link.told[d] = event
                    items.append({"DeviceID": d, "Event": event, "Status": "OFF" if event == "OFF" else "ON"})
            asked = link.told if device_ids is None else [d for d in device_ids if d in link.told]
            gone = [d for d in asked if d not in states or not self._may_see(link, d, states[d][1] or None)]
            for d in gone:  # no longer shared (taken out of service, a carrier, or out of ``share``): DEL
                del link.told[d]
                items.append({"DeviceID": d, "Event": "DEL"})
            if not items:
                continue
            page = link.cfg.catalog_page
            for s in list(link.subscriptions.values()):
                if s.event == "Catalog":
                    for i in range(0, len(items), page):
                        await self._quietly(self._notify(link, s, items[i:i + page]))

    # -- views -------------------------------------------------------------------------------------
    def view(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [{"name": x.cfg.name, "server_id": x.cfg.server_id, "domain": x.cfg.realm,
                 "address": f"{x.cfg.transport}:{x.cfg.host}:{x.cfg.port}", "state": x.state, "since": x.since,
                 "last_error": x.last_error, "registered_at": x.registered_at, "expires_at": x.expires_at,
                 "last_keepalive": x.last_keepalive, "failures": x.failures,
                 "subscriptions": sorted(s.event for s in list(x.subscriptions.values()) if s.expires_at > now),
                 "share": list(x.cfg.share), "counters": dict(x.counters),
                 "streams": [s for s in (self.upward.view() if self.upward else []) if s["superior"] == x.cfg.name]}
                for x in self.links.values()]


class _Refused(Exception):
    """The superior answered a registration with a refusal."""


def _why(exc: BaseException, link: Link) -> str:
    c = link.cfg
    if isinstance(exc, TimeoutError):
        return f"no answer from {c.transport}:{c.host}:{c.port} within {REQUEST_TIMEOUT_S:.0f} s"
    return f"cannot reach {c.transport}:{c.host}:{c.port}: {exc or type(exc).__name__}"



def _fingerprint(link: Link) -> str:
    return f"superior_down:{link.cfg.name}"


def _challenge_header(resp: sip.Response) -> str | None:
    return resp.headers.get("WWW-Authenticate") or resp.headers.get("Proxy-Authenticate")


def _center_catalog_ids(tree: CenterTree) -> dict[str, str]:
    """Each center's ID in catalogs shown upward: its ``gb_id`` when that is a group (215/216), else
    one made from its civil code, business group (215) at the top and virtual organisation (216)
    below, numbered in tree order (stable for a given configuration)."""
    out: dict[str, str] = {}
    for n, c in enumerate(tree, 1):
        if c.gb_id and ids.parse(c.gb_id).type in ("215", "216"):
            out[c.id] = c.gb_id
        else:
            out[c.id] = f"{c.civil_code.ljust(8, '0')}00{'215' if c.parent is None else '216'}{n:07d}"
    return out
