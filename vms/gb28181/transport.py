"""SIP over UDP and TCP on one port, with the transaction layer the GB/T 28181 subset needs.

- Server side (non-INVITE): a request retransmitted over UDP gets the same final response again,
  from a cache kept for 32 s (RFC 3261 Timer J), and is not handled twice.
- Client side (our queries and INVITEs to devices): UDP requests are retransmitted from 0.5 s,
  doubling up to 4 s, until a final response or 32 s (Timers E and F); an INVITE stops once a
  provisional response came (Proceeding); over TCP they are sent once. A final response that
  matches no transaction any more (a 200 to an INVITE, sent again because our ACK was lost) goes
  to ``on_stray``.
- Responses go back to where the request came from (the device may sit behind NAT), and the top
  Via says so (``received``, ``rport``).
- TCP messages are framed by Content-Length (``sip.frame_stream``); a connection that sends garbage
  is closed. A closed connection is reported, so a device on TCP is seen gone at once.

Malformed input is counted and logged (at most once per 10 s per kind), never raised to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from vms.gb28181 import sip

log = logging.getLogger(__name__)

T1, T2, TIMEOUT = 0.5, 4.0, 32.0
MAX_DATAGRAM = 65_535
MAX_TCP_BUFFER = 1 << 20


@dataclass(frozen=True)
class Peer:
    """Where a message came from, and where its answer goes."""

    transport: Literal["UDP", "TCP"]
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport.lower()}:{self.host}:{self.port}"


@dataclass
class Counters:
    received: int = 0
    sent: int = 0
    malformed: int = 0
    retransmissions_absorbed: int = 0
    requests_timed_out: int = 0
    tcp_connections: int = 0
    _last_log: dict[str, float] = field(default_factory=dict)

    def warn(self, kind: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_log.get(kind, -1e9) >= 10.0:
            self._last_log[kind] = now
            log.warning(msg, *args)


Handler = Callable[[sip.Request, Peer], sip.Response | None]


class Transport:
    """One SIP endpoint; ``handler(request, peer)`` answers requests (None: answered later with
    ``respond``, or not at all); ``on_closed(peer)`` hears of TCP connections that end."""

    def __init__(self, host: str, port: int, handler: Handler, on_closed: Callable[[Peer], None]) -> None:
        self.host, self.port = host, port
        self.handler = handler
        self.on_closed = on_closed
        self.counters = Counters()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp_server: asyncio.Server | None = None
        self._tcp: dict[Peer, asyncio.StreamWriter] = {}
        # Oldest first (insertion order; an answer replaces its own "being handled" entry in place),
        # so expiring is popping from the front: a scan of every kept answer per request made each
        # keepalive cost more the more devices there are (1 ms at 100,000 devices).
        self._answered: OrderedDict[tuple[str, str, Peer], tuple[float, sip.Response | None]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[sip.Response]] = {}
        self._proceeding: set[str] = set()  # client transactions that had a provisional response
        self._last_via: tuple[str, sip.Via | None] = ("", None)  # the top Via last parsed (see _top_via)
        self.on_stray: Callable[[sip.Response, Peer], None] | None = None

    # -- life cycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(self.host, self.port))
        self._tcp_server = await asyncio.start_server(self._serve_tcp, self.host, self.port)
        log.info("SIP listening on udp/tcp %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
        for w in list(self._tcp.values()):
            w.close()
        for fut in self._pending.values():
            fut.cancel()

    # -- sending ----------------------------------------------------------------------------------
    def send(self, peer: Peer, msg: sip.Message) -> bool:
        """Send one message; False when a TCP peer is no longer connected."""
        data = sip.serialize(msg)
        if peer.transport == "UDP":
            if self._udp is None or self._udp.is_closing():  # closed by stop(): a request still resending
                return False
            self._udp.sendto(data, (peer.host, peer.port))
        else:
            w = self._tcp.get(peer)
            if w is None or w.is_closing():
                return False
            w.write(data)
        self.counters.sent += 1
        return True

    def respond(self, req: sip.Request, peer: Peer, resp: sip.Response) -> None:
        """Answer ``req`` (also later than its handler returned); the answer is kept for retransmissions."""
        top = self._top_via(resp.headers)
        if top is not None:
            params = dict(top.params)
            params["received"] = peer.host
            if "rport" in params:
                params["rport"] = str(peer.port)
            lines = resp.headers.get_all("Via")
            extras = [*sip.split_header_list(lines[0])[1:], *lines[1:]]
            resp.headers.set("Via", sip.format_via(replace(top, params=params)))
            for extra in extras:
                resp.headers.add("Via", extra)
        key = self._txn_key(req, peer)
        if key is not None and resp.status >= 200:
            self._answered[key] = (time.monotonic(), resp)
        self.send(peer, resp)

    async def request(self, peer: Peer, req: sip.Request, timeout: float = TIMEOUT) -> sip.Response:
        """Send a request and wait for its final response (TimeoutError after ``timeout``)."""
        branch = sip.vias(req.headers)[0].branch or ""
        fut: asyncio.Future[sip.Response] = asyncio.get_running_loop().create_future()
        self._pending[branch] = fut
        try:
            if not self.send(peer, req):
                raise ConnectionError(f"{peer} is not connected")
            if peer.transport == "TCP":
                return await asyncio.wait_for(fut, timeout)
            deadline = time.monotonic() + timeout
            wait = T1
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), min(wait, left))
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
                    if branch not in self._proceeding:
                        self.send(peer, req)  # Timer E (Timer A for an INVITE until it proceeds)
                    wait = min(wait * 2, T2)
        except TimeoutError:
            self.counters.requests_timed_out += 1
            raise
        finally:
            self._pending.pop(branch, None)
            self._proceeding.discard(branch)

    # -- receiving --------------------------------------------------------------------------------
    def received(self, data: bytes, peer: Peer) -> None:
        self.counters.received += 1
        try:
            msg = sip.parse(data)
        except sip.SipError as exc:
            self.counters.malformed += 1
            self.counters.warn("malformed", "SIP: malformed message from %s dropped: %s", peer, exc)
            return
        if isinstance(msg, sip.Response):
            top = self._top_via(msg.headers)
            branch = (top.branch if top is not None else None) or ""
            fut = self._pending.get(branch)
            if fut is None or fut.done():
                if msg.status >= 200 and self.on_stray is not None:
                    self.on_stray(msg, peer)
            elif msg.status >= 200:
                fut.set_result(msg)
            else:
                self._proceeding.add(branch)
            return
        self._request(msg, peer)

    def _request(self, req: sip.Request, peer: Peer) -> None:
        self._expire_answers()
        key = self._txn_key(req, peer)
        if key is not None and key in self._answered:
            self.counters.retransmissions_absorbed += 1
            answer = self._answered[key][1]
            if answer is not None:
                self.send(peer, answer)
            return
        if key is not None:
            self._answered[key] = (time.monotonic(), None)  # being handled: a retransmission is absorbed
        try:
            resp = self.handler(req, peer)
        except sip.SipError as exc:
            self.counters.malformed += 1
            self.counters.warn("bad-request", "SIP: bad %s from %s: %s", req.method, peer, exc)
            resp = sip.response_to(req, 400, f"Bad Request ({str(exc)[:60]})")
        except Exception:
            log.exception("SIP: %s from %s failed", req.method, peer)
            resp = sip.response_to(req, 500)
        if resp is not None:
            self.respond(req, peer, resp)

    def _expire_answers(self) -> None:
        cutoff = time.monotonic() - TIMEOUT
        answered = self._answered
        while answered and next(iter(answered.values()))[0] < cutoff:
            answered.popitem(last=False)

    def _top_via(self, headers: sip.Headers) -> sip.Via | None:
        """The top Via, parsed once per request: the request's key and its response's Via (the same
        text, copied) share one parse. SipError if it is malformed."""
        line = headers.get("Via")
        if line is None:
            return None
        text = sip.split_header_list(line)[0]
        if text != self._last_via[0]:
            self._last_via = (text, sip.parse_via(text))
        return self._last_via[1]

    def _txn_key(self, req: sip.Request, peer: Peer) -> tuple[str, str, Peer] | None:
        """A server transaction's identity: the top Via's branch, the method, and the peer."""
        try:
            top = self._top_via(req.headers)
        except sip.SipError:
            return None
        branch = top.branch if top is not None else None
        return (branch, req.method, peer) if branch else None

    async def connect(self, host: str, port: int, timeout: float = 5.0) -> Peer:
        """Open a TCP connection to a peer (a superior platform), served like an accepted one: its
        requests reach the handler, its answers our requests, its end ``on_closed``."""
        peer = Peer("TCP", host, port)
        w = self._tcp.get(peer)
        if w is not None and not w.is_closing():
            return peer
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        self._tcp[peer] = writer
        self.counters.tcp_connections += 1
        asyncio.get_running_loop().create_task(self._serve_conn(peer, reader, writer))
        return peer

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = writer.get_extra_info("peername")[:2]
        peer = Peer("TCP", host, port)
        self._tcp[peer] = writer
        self.counters.tcp_connections += 1
        await self._serve_conn(peer, reader, writer)

    async def _serve_conn(self, peer: Peer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = await reader.read(65_536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    frame = sip.frame_stream(buf)
                    if frame is None:
                        break
                    self.received(frame, peer)
                if len(buf) > MAX_TCP_BUFFER:
                    raise sip.SipError(f"more than {MAX_TCP_BUFFER} bytes without a complete message")
        except sip.SipError as exc:
            self.counters.malformed += 1
            self.counters.warn("tcp-framing", "SIP: closing %s: %s", peer, exc)
        except (ConnectionError, OSError):
            pass
        finally:
            self._tcp.pop(peer, None)
            writer.close()
            self.on_closed(peer)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, owner: Transport) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.owner.received(data, Peer("UDP", str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.owner.counters.warn("udp-error", "SIP: UDP error: %s", exc)
