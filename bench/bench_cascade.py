"""Cascade (级联) at speed: catalog of 10,000 devices upward, OFF told, INVITE to first RTP, serve CPU.

    .venv/bin/python bench/bench_cascade.py [--parts 1,2,3,4] [--devices 10000] [--catalog-runs 3]
                                            [--settle-s 0] [--off-runs 3]
                                            [--invite-runs 5] [--media-s 20] [--work-dir DIR]

Defaults take about 1.5 minutes on 2 cores (the 1080p segments are encoded once, in seconds, and cached
in ``--work-dir``). Four figures, each printed with its target from the cascade issue ("Speed"),
measured in one run on loopback only; nothing is asserted.

Parts 1-3 run a real hub (``vms serve`` in its own process, as the tests start one) whose config has
``--devices`` devices in ``devices:`` (IDs under the town center ``chengxiang``, 32058501...) and two
superiors in ``superiors:`` sharing that center: ``district`` (``catalog_page`` at its default, 10)
and ``police`` (``catalog_page: 50``). Each superior is a small asyncio UDP SIP peer of this bench: it
answers the hub's REGISTER with a digest challenge (``vms.gb28181.digest``) and its answer with 200
after checking it, answers every MESSAGE and NOTIFY with 200, and sends its own requests.

1. **Catalog of 10,000 devices to a superior** (target < 10 s): the superior sends a MESSAGE Catalog
   Query; from that query leaving until the last ``<Item>`` arrives (distinct DeviceIDs reaching
   SumNum: the center groups and every device). Items, MESSAGEs (retransmissions counted apart) and
   the hub process's CPU seconds (/proc, all its threads) spent meanwhile; ``--catalog-runs`` queries per
   superior, page 10 then page 50, median and max. The first query goes at once after the hub has
   registered, as a superior's does, so it shares the hub with its start-up work (``--settle-s`` waits first).
2. **OFF told** (target < 10 s; the anchor platform: 180 s): the district SUBSCRIBEs (Event:
   Catalog); a device kept alive by an agent's heartbeats (``POST /api/v1/agents/heartbeat`` with an
   agent token, once a second) goes dark; seconds from its last packet to the NOTIFY carrying
   ``<Event>OFF</Event>`` for it. ``--off-runs`` times (back online, VLOST told, dark again); median, max.
3. **INVITE to first RTP** (target < 1 s): real H.264 segments (ffmpeg testsrc2 1920x1080 25 fps about
   4 Mbit/s, 2 s segments, one GOP each) are uploaded live for another device, one every 2 s, as an
   agent relays a camera; the district INVITEs it (``s=Play``, UDP, its own ``y=`` SSRC per run) and
   the bench times INVITE sent -> 200 and INVITE sent -> first RTP packet of that SSRC on its own
   socket; ACK, 1 s of video, BYE; ``--invite-runs`` times, median and max.
4. **CPU to serve one live stream upward vs receiving it** (target ratio <= 1.0): in this process,
   without a hub. ``vms.media.sender.RtpSender`` fed by ``vms.gb28181.upward.recorded_units`` (each
   segment demuxed by ``segment_units`` in the sender's thread, as the hub serves a camera's live
   segments: demux, MPEG-PS pack, RTP, ``sendto``, paced in real time) over ``--media-s`` of the same
   1080p segments, to a ``vms.gb28181.media.MediaReceiver`` over UDP loopback (RTP, reorder, FFmpeg's
   ``mpeg`` demuxer, the segmenter writing, hashing and fsyncing 2 s MPEG-TS segments into a sink that
   deletes them). Each side's thread CPU time (the sender's ``time.thread_time`` read inside its thread
   at its first and last frame; the receiver's thread CPU clock, ``pthread_getcpuclockid``), as % of a
   core per stream, and the ratio serve / receive. Thread CPU time is the thread's own, whatever else
   the machine runs. Beside it, in the same run: the same sender unpaced (to a bare socket, so the
   cost of one wakeup per frame shows), ``segment_units`` alone and the opening of the files in it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import HubProcess, hub_config, write_config  # noqa: E402
from vms.gb28181 import digest, sip  # noqa: E402

SERVER_ID = "32058501002000000001"  # the town center: the hub
DISTRICT = "32058500002000000001"  # superior with catalog_page 10 (the default)
POLICE = "32058500002000000002"  # superior with catalog_page 50
PASSWORD = "bench-cascade-secret"
DEVICE_PREFIX = "3205850100132"  # + 7 digits: IPCs (type 132) in chengxiang (32058501)
REQUEST_TIMEOUT_S = 8.0
FPS = 25
SEGMENT_S = 2


def device_id(i: int) -> str:
    return f"{DEVICE_PREFIX}{i:07d}"


def free_port() -> int:
    """A port free for UDP and TCP on loopback (the hub's SIP server binds both)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise OSError("no port free for UDP and TCP")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the superior: a UDP SIP peer


@dataclass
class CatalogRun:
    sn: int
    ids: set[str] = field(default_factory=set)
    items: int = 0  # <Item>s received, retransmissions not counted
    messages: int = 0
    retransmissions: int = 0
    sum_num: int | None = None
    last: float = 0.0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Superior(asyncio.DatagramProtocol):
    """A superior platform: challenges the hub's REGISTER, answers its MESSAGEs and NOTIFYs with 200,
    and sends Catalog queries, SUBSCRIBE, INVITE, ACK and BYE of its own."""

    def __init__(self, server_id: str, password: str) -> None:
        self.server_id = server_id
        self.domain = server_id[:10]
        self.password = password
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.hub: tuple[str, int] | None = None
        self.registered = asyncio.Event()
        self.register_failures = 0
        self.catalog: CatalogRun | None = None
        self.events: list[tuple[float, str, str]] = []  # (monotonic, device, event) from NOTIFYs
        self.event_seen = asyncio.Event()  # set at every NOTIFY with items
        self.keepalives = 0
        self.byes_from_hub = 0
        self._answers: dict[str, bytes] = {}  # by Via branch: retransmissions get the same answer
        self._pending: dict[tuple[str, int], asyncio.Future[sip.Response]] = {}

    # -- asyncio -------------------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        now = time.monotonic()
        try:
            msg = sip.parse(data)
        except sip.SipError:
            return
        if isinstance(msg, sip.Response):
            if msg.status < 200:
                return
            with contextlib.suppress(sip.SipError, ValueError):
                cseq, _ = sip.parse_cseq(msg.headers.get("CSeq") or "")
                fut = self._pending.get((msg.headers.get("Call-ID") or "", cseq))
                if fut is not None and not fut.done():
                    fut.set_result(msg)
            return
        if msg.method == "ACK":
            return
        branch = (sip.vias(msg.headers)[0].branch or "") if msg.headers.get("Via") else ""
        cached = self._answers.get(branch) if branch else None
        if cached is not None:
            if self.catalog is not None and b"<CmdType>Catalog</CmdType>" in msg.body:
                self.catalog.retransmissions += 1
            self._send(cached, addr)
            return
        resp = self._handle(msg, addr, now)
        wire = sip.serialize(resp)
        if branch:
            if len(self._answers) > 50_000:
                self._answers.clear()
            self._answers[branch] = wire
        self._send(wire, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    # -- the hub's requests --------------------------------------------------------------------------
    def _handle(self, req: sip.Request, addr: tuple[str, int], now: float) -> sip.Response:
        tag = sip.new_tag()
        if req.method == "REGISTER":
            value = req.headers.get("Authorization")
            if value is None:
                resp = sip.response_to(req, 401, to_tag=tag)
                ch = digest.Challenge(realm=self.domain, nonce=secrets.token_hex(12))
                resp.headers.set("WWW-Authenticate", ch.header())
                return resp
            try:
                auth = digest.parse_authorization(value)
                good = auth.get("username") == SERVER_ID and digest.verify(auth, "REGISTER", self.password)
            except digest.DigestError:
                good = False
            if not good:
                self.register_failures += 1
                return sip.response_to(req, 403, to_tag=tag)
            resp = sip.response_to(req, 200, to_tag=tag)
            resp.headers.set("Expires", req.headers.get("Expires") or "3600")
            if (req.headers.get("Expires") or "").strip() != "0":
                self.hub = addr
                self.registered.set()
            return resp
        if req.method == "MESSAGE":
            body = req.body
            if b"<CmdType>Keepalive</CmdType>" in body:
                self.keepalives += 1
            run = self.catalog
            if run is not None and b"<CmdType>Catalog</CmdType>" in body and b"<Response>" in body:
                sn = re.search(rb"<SN>(\d+)</SN>", body)
                if sn is not None and int(sn.group(1)) == run.sn:
                    run.messages += 1
                    found = re.findall(rb"<Item><DeviceID>(\d{20})</DeviceID>", body)
                    run.items += len(found)
                    run.ids.update(x.decode() for x in found)
                    total = re.search(rb"<SumNum>(\d+)</SumNum>", body)
                    if total is not None:
                        run.sum_num = int(total.group(1))
                    if run.sum_num is not None and len(run.ids) >= run.sum_num and not run.done.is_set():
                        run.last = now
                        run.done.set()
            return sip.response_to(req, 200, to_tag=tag)
        if req.method == "NOTIFY":
            for dev, event in re.findall(rb"<DeviceID>(\d{20})</DeviceID><Event>(\w+)</Event>", req.body):
                self.events.append((now, dev.decode(), event.decode()))
                self.event_seen.set()
            return sip.response_to(req, 200, to_tag=tag)
        if req.method == "BYE":
            self.byes_from_hub += 1
        return sip.response_to(req, 200, to_tag=tag)

    # -- our requests ---------------------------------------------------------------------------------
    def new_request(self, method: str, uri: str, call_id: str, cseq: int, from_tag: str,
                    to: str | None = None, body: bytes = b"", content_type: str | None = None) -> sip.Request:
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch={sip.new_branch()}")
        h.set("From", f"<sip:{self.server_id}@{self.domain}>;tag={from_tag}")
        h.set("To", to or f"<sip:{SERVER_ID}@{SERVER_ID[:10]}>")
        h.set("Call-ID", call_id)
        h.set("CSeq", f"{cseq} {method}")
        h.set("Contact", f"<sip:{self.server_id}@127.0.0.1:{self.port}>")
        h.set("Max-Forwards", "70")
        if content_type:
            h.set("Content-Type", content_type)
        return sip.Request(method, uri, h, body)

    def send_only(self, req: sip.Request) -> None:
        """An ACK: no answer."""
        assert self.hub is not None
        self._send(sip.serialize(req), self.hub)

    async def request(self, req: sip.Request, timeout: float = REQUEST_TIMEOUT_S) -> sip.Response:
        """Send ``req`` to the hub, retransmitting every 0.5 s (Timer E), until its final answer."""
        assert self.hub is not None
        cseq, _ = sip.parse_cseq(req.headers.get("CSeq") or "")
        key = (req.headers.get("Call-ID") or "", cseq)
        fut: asyncio.Future[sip.Response] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        wire = sip.serialize(req)
        deadline = time.monotonic() + timeout
        try:
            while True:
                self._send(wire, self.hub)
                wait = min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"no answer to {req.method} within {timeout:g} s")
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
        finally:
            self._pending.pop(key, None)

    def query(self, cmd: str, sn: int, device: str = SERVER_ID) -> bytes:
        return (f'<?xml version="1.0" encoding="GB2312"?>\r\n<Query>\r\n<CmdType>{cmd}</CmdType>\r\n<SN>{sn}</SN>\r\n'
                f"<DeviceID>{device}</DeviceID>\r\n</Query>\r\n").encode()


async def open_superior(server_id: str) -> Superior:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Superior(server_id, PASSWORD),
                                                           local_addr=("127.0.0.1", free_port()))
    assert isinstance(proto, Superior)
    proto.transport = transport  # connection_made runs at the loop's next turn
    proto.port = int(transport.get_extra_info("sockname")[1])
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    return proto


class RtpCatcher(asyncio.DatagramProtocol):
    """The superior's media port: the first packet's arrival per SSRC, and packet counts."""

    def __init__(self) -> None:
        self.first: dict[int, float] = {}
        self.packets: dict[int, int] = {}
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        ssrc = int.from_bytes(data[8:12], "big")
        if ssrc not in self.first:
            self.first[ssrc] = time.monotonic()
            self.arrived.set()
        self.packets[ssrc] = self.packets.get(ssrc, 0) + 1


# --------------------------------------------------------------------------- 1080p segments


def make_segments(work: Path, seconds: int) -> list[Path]:
    """Real H.264 1080p25 at about 4 Mbit/s in 2 s MPEG-TS segments, one GOP each (cached)."""
    out = work / f"segs-1080p-4M-{seconds}s"
    segs = sorted(out.glob("s*.ts"))
    if len(segs) >= seconds // SEGMENT_S:
        return segs
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.monotonic()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate={FPS}",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
                    "-b:v", "4M", "-maxrate", "4M", "-bufsize", "4M", "-g", str(FPS * SEGMENT_S),
                    "-keyint_min", str(FPS * SEGMENT_S), "-sc_threshold", "0", "-bf", "0",
                    "-f", "segment", "-segment_time", str(SEGMENT_S), "-reset_timestamps", "1",
                    str(out / "s%03d.ts")], check=True, timeout=600)
    print(f"encoded {seconds} s of 1080p segments in {time.monotonic() - t0:.0f} s", flush=True)
    return sorted(out.glob("s*.ts"))


# --------------------------------------------------------------------------- parts 1-3: a real hub


Row = tuple[str, str, str, str]  # figure, value, target, detail


async def hub_parts(args: argparse.Namespace, parts: set[int], work: Path, segs: list[Path]) -> list[Row]:
    from tests.test_alerts_e2e import Agent
    from tests.test_gb28181_cascade_sipp import Feeder

    rows: list[Row] = []
    district = await open_superior(DISTRICT)
    police = await open_superior(POLICE)
    sip_port = free_port()
    d = work / "hub"
    d.mkdir(parents=True)
    superior = {"host": "127.0.0.1", "transport": "udp", "password": PASSWORD, "share": ["chengxiang"]}
    cfg = hub_config(
        d / "data",
        gb28181={"enabled": True, "server_id": SERVER_ID, "host": "127.0.0.1", "port": sip_port, "record": False},
        analysis={"enabled": False},
        devices=[{"id": device_id(i + 1), "name": f"IPC {i + 1}"} for i in range(args.devices)],
        superiors=[{"name": "district", "server_id": DISTRICT, "port": district.port, **superior},
                   {"name": "police", "server_id": POLICE, "port": police.port, "catalog_page": 50, **superior}],
    )
    hub = HubProcess(write_config(d / "hub.yaml", cfg), free_port())
    agent_token = await asyncio.to_thread(hub.token, "agent", "32058501", name="edge-1")
    t0 = time.monotonic()
    await asyncio.to_thread(hub.start)
    print(f"hub with {args.devices} devices up in {time.monotonic() - t0:.1f} s", flush=True)
    assert hub.proc is not None
    try:
        await asyncio.wait_for(asyncio.gather(district.registered.wait(), police.registered.wait()), 30)
        print(f"hub registered with both superiors {time.monotonic() - t0:.1f} s after its start", flush=True)
        await asyncio.sleep(args.settle_s)
        if 1 in parts:
            for sup, page in ((district, 10), (police, 50)):
                rows.append(await catalog_figure(sup, page, hub.proc.pid, args.devices, args.catalog_runs))
        if 2 in parts:
            rows.append(await off_figure(args, district, hub, agent_token, Agent))
        if 3 in parts:
            rows += await invite_figures(args, district, hub, agent_token, segs, Feeder)
    except BaseException:
        if hub.log is not None:
            print(hub.log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(hub.stop)
        for sup in (district, police):
            if sup.transport is not None:
                sup.transport.close()
    return rows


@dataclass
class CatalogResult:
    took: float  # query sent -> last item
    answered: float  # query sent -> its 200
    hub_cpu: float
    run: CatalogRun


async def catalog_once(sup: Superior, sn: int, hub_pid: int) -> CatalogResult:
    run = sup.catalog = CatalogRun(sn)
    req = sup.new_request("MESSAGE", f"sip:{SERVER_ID}@{SERVER_ID[:10]}", sip.new_call_id(), 1, sip.new_tag(),
                          body=sup.query("Catalog", sn), content_type="Application/MANSCDP+xml")
    cpu0 = proc_cpu(hub_pid)
    t0 = time.monotonic()
    resp = await sup.request(req)
    answered = time.monotonic() - t0
    if resp.status != 200:
        raise RuntimeError(f"Catalog query answered {resp.status} {resp.reason}")
    try:
        await asyncio.wait_for(run.done.wait(), 120)
    except TimeoutError:
        raise RuntimeError(f"catalog incomplete after 120 s: {len(run.ids)} of {run.sum_num} items") from None
    hub_cpu = proc_cpu(hub_pid) - cpu0
    await asyncio.sleep(0.5)  # late retransmissions are counted in this run
    sup.catalog = None
    return CatalogResult(run.last - t0, answered, hub_cpu, run)


async def catalog_figure(sup: Superior, page: int, hub_pid: int, devices: int, runs: int) -> Row:
    results = [await catalog_once(sup, 1000 + 10 * page + k, hub_pid) for k in range(runs)]
    took = [r.took for r in results]
    run = results[0].run
    devs = sum(1 for x in run.ids if x.startswith(DEVICE_PREFIX))
    med = statistics.median(took)
    return (f"catalog of {devices} devices, catalog_page {page}", f"median {med:.2f} s", "< 10 s",
            f"max {max(took):.2f} s over {runs} runs ({', '.join(f'{x:.2f}' for x in took)} s); "
            f"{len(run.ids)} items (SumNum {run.sum_num}: {devs} devices + {len(run.ids) - devs} groups) in "
            f"{run.messages} MESSAGEs; retransmissions answered again {sum(r.run.retransmissions for r in results)}; "
            f"query answered in {1000 * statistics.median(r.answered for r in results):.0f} ms (median); "
            f"{len(run.ids) / med:.0f} items/s; hub process CPU per catalog (all its threads) "
            f"{', '.join(f'{r.hub_cpu:.2f}' for r in results)} s")


async def wait_event(sup: Superior, device: str, events: set[str], after: float, timeout: float) -> float:
    """The arrival (monotonic) of the first NOTIFY after ``after`` telling ``device`` one of ``events``."""
    deadline = time.monotonic() + timeout
    while True:
        for t, dev, ev in sup.events:
            if t >= after and dev == device and ev in events:
                return t
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no NOTIFY of {device} {'/'.join(sorted(events))} within {timeout:g} s")
        sup.event_seen.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sup.event_seen.wait(), min(left, 0.5))


async def off_figure(args: argparse.Namespace, sup: Superior, hub: HubProcess, token: str, agent_cls: Any) -> Row:
    cam = device_id(1)
    call_id, tag = sip.new_call_id(), sip.new_tag()
    req = sup.new_request("SUBSCRIBE", f"sip:{SERVER_ID}@{SERVER_ID[:10]}", call_id, 1, tag,
                          body=sup.query("Catalog", 2001), content_type="Application/MANSCDP+xml")
    req.headers.set("Event", "Catalog;id=1")
    req.headers.set("Expires", "3600")
    resp = await sup.request(req)
    if resp.status != 200:
        raise RuntimeError(f"SUBSCRIBE answered {resp.status} {resp.reason}")
    took: list[float] = []
    online: list[float] = []
    with agent_cls(hub, token, [cam]) as agent:
        for _ in range(args.off_runs):
            t_on = time.monotonic()
            await wait_event(sup, cam, {"VLOST", "ON"}, t_on, 30)  # online (heartbeats, no video): VLOST
            online.append(time.monotonic() - t_on)
            await asyncio.sleep(1.0)
            agent.dark[cam] = time.time()  # its last packet: now (the next heartbeat says so)
            dark = time.monotonic()
            told = await wait_event(sup, cam, {"OFF"}, dark, 30)
            took.append(told - dark)
            agent.dark.pop(cam, None)
    return ("OFF told to the superior after a device goes dark", f"median {statistics.median(took):.1f} s",
            "< 10 s", f"max {max(took):.1f} s over {len(took)} runs ({', '.join(f'{x:.1f}' for x in took)} s; "
            f"anchor platform 180 s); back online told as VLOST in {statistics.median(online):.1f} s (median); "
            "hub health: offline after 5 s of silence, seen by the next 1 s tick")


async def invite_figures(args: argparse.Namespace, sup: Superior, hub: HubProcess, token: str, segs: list[Path],
                         feeder_cls: Any) -> list[Row]:
    cam = device_id(2)
    loop = asyncio.get_running_loop()
    transport, catcher = await loop.create_datagram_endpoint(RtpCatcher, local_addr=("127.0.0.1", 0))
    rtp_port = int(transport.get_extra_info("sockname")[1])
    rtp_sock = transport.get_extra_info("socket")
    if rtp_sock is not None:
        rtp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    first_rtp: list[float] = []
    to_200: list[float] = []
    packets: list[int] = []
    try:
        with feeder_cls(hub, token, cam, segs[:5]) as feeder:
            t0 = time.monotonic()
            while sum(a.startswith("201") for a in feeder.answers) < 2:
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"uploads not taken: {feeder.answers[-3:]}")
                await asyncio.sleep(0.2)
            run = 0
            tries = 0
            while run < args.invite_runs:
                ssrc = f"0{320580001 + run:09d}"
                sdp = (f"v=0\r\no={DISTRICT} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                       f"m=video {rtp_port} RTP/AVP 96\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\ny={ssrc}\r\n")
                call_id, tag = sip.new_call_id(), sip.new_tag()
                uri = f"sip:{cam}@{SERVER_ID[:10]}"
                req = sup.new_request("INVITE", uri, call_id, 1, tag, to=f"<sip:{cam}@{SERVER_ID[:10]}>",
                                      body=sdp.encode(), content_type="APPLICATION/SDP")
                req.headers.set("Subject", f"{cam}:{ssrc},{DISTRICT}:0")
                sent = time.monotonic()
                resp = await sup.request(req)
                answered = time.monotonic() - sent
                if resp.status == 480 and tries < 20:  # the live window is not there yet
                    tries += 1
                    await asyncio.sleep(0.5)
                    continue
                if resp.status != 200:
                    raise RuntimeError(f"INVITE answered {resp.status} {resp.reason}")
                to_tag = sip.parse_name_addr(resp.headers.get("To") or "").tag
                contact = resp.headers.get("Contact")
                target = sip.parse_name_addr(contact).uri if contact else uri
                to = f"<sip:{cam}@{SERVER_ID[:10]}>;tag={to_tag}"
                sup.send_only(sup.new_request("ACK", target, call_id, 1, tag, to=to))
                key = int(ssrc)
                deadline = time.monotonic() + 10
                while key not in catcher.first and time.monotonic() < deadline:
                    catcher.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(catcher.arrived.wait(), 0.5)
                if key not in catcher.first:
                    raise RuntimeError(f"no RTP of SSRC {ssrc} within 10 s of the ACK")
                first_rtp.append(catcher.first[key] - sent)
                to_200.append(answered)
                await asyncio.sleep(1.0)
                bye = await sup.request(sup.new_request("BYE", target, call_id, 2, tag, to=to))
                if bye.status != 200:
                    raise RuntimeError(f"BYE answered {bye.status} {bye.reason}")
                packets.append(catcher.packets.get(key, 0))
                run += 1
                await asyncio.sleep(0.5)
    finally:
        transport.close()
    return [
        ("INVITE -> first RTP packet", f"median {1000 * statistics.median(first_rtp):.0f} ms", "< 1 s",
         f"max {1000 * max(first_rtp):.0f} ms over {len(first_rtp)} runs "
         f"({', '.join(f'{1000 * x:.0f}' for x in first_rtp)} ms); 1080p25 ~4 Mbit/s live, 2 s segments"),
        ("INVITE -> 200 OK (signaling alone)", f"median {1000 * statistics.median(to_200):.0f} ms", "",
         f"max {1000 * max(to_200):.0f} ms; RTP packets in the ~1 s before each BYE: "
         f"{', '.join(str(p) for p in packets)}"),
    ]


# --------------------------------------------------------------------------- part 4: serve vs receive CPU


class DiscardSink:
    """A SegmentSink that deletes each finished segment (the segmenter still writes, hashes and fsyncs it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.segments = 0
        self.write_errors = 0
        self._n = 0

    def tmp_path(self, device_id: str, start: float | None = None) -> Path:
        self._n += 1
        return self.tmp_dir / f"{device_id}_{self._n}.part"

    def note_write_error(self) -> None:
        self.write_errors += 1

    def added(self, seg: Any) -> None:
        self.segments += 1
        seg.path.unlink(missing_ok=True)


def thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds of a live thread of this process (its POSIX CPU clock)."""
    assert thread is not None and thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


@dataclass
class Served:
    cpu_s: float  # the sender thread's CPU from before its first frame to after its last
    wall_s: float
    frames: int
    packets: int


def serve(entries: list[tuple[Path, float, float]], dest: tuple[str, int], ssrc: int, speed: float = 1.0,
          before_go: Any = None) -> Served:
    """One stream sent by an ``RtpSender`` fed by ``recorded_units`` as a live stream (no spans), paced
    at ``speed`` times real time; returns when the last frame is sent. ``before_go()`` runs just before."""
    from vms.gb28181.upward import recorded_units
    from vms.media.sender import FINISHED, AccessUnit, RtpSender, Target, media_socket

    target = Target(dest[0], dest[1], "UDP", True)
    cpu: dict[str, float] = {}
    why: list[str] = []
    done = threading.Event()
    inner = recorded_units([entries])

    def units(length: int | None) -> Iterator[tuple[int, AccessUnit]]:
        cpu.setdefault("first", time.thread_time())  # the sender's thread, before its first frame
        yield from inner(length)

    def ended(reason: str) -> None:
        cpu["last"] = time.thread_time()  # the sender's thread, after its last frame
        why.append(reason)
        done.set()

    sender = RtpSender("bench", "h264", units, ssrc, media_socket("127.0.0.1", target), target, lambda: "send",
                       ended, payload_type=96, speed=speed)
    sender.start()
    if before_go is not None:
        before_go()
    t0 = time.monotonic()
    sender.go.set()
    video_s = entries[-1][2] - entries[0][1]
    if not done.wait(video_s / speed + 30):
        sender.stop()
        raise RuntimeError("the sender did not finish")
    wall = time.monotonic() - t0
    sender.stop()
    if why != [FINISHED]:
        raise RuntimeError(f"the sender ended before sending everything: {why}")
    return Served(cpu["last"] - cpu["first"], wall, sender.frames_sent, sender.packets_sent)


def media_figures(args: argparse.Namespace, work: Path, segs: list[Path]) -> list[Row]:
    import av

    from vms.config import Gb28181Config
    from vms.gb28181.media import MediaReceiver, PortPool
    from vms.gb28181.upward import segment_units
    from vms.media.segmenter import Segmenter

    n = max(1, round(args.media_s / SEGMENT_S))
    entries = [(segs[k % len(segs)], float(SEGMENT_S * k), float(SEGMENT_S * (k + 1))) for k in range(n)]
    video_s = float(SEGMENT_S * n)
    mbps = 8 * sum(p.stat().st_size for p, _, _ in entries) / video_s / 1e6
    # What segment_units costs the sender, and of that the opening of each file (FFmpeg's stream probe).
    c0 = time.thread_time()
    frames = sum(len(segment_units(p)) for p, _, _ in entries)
    demux_s = time.thread_time() - c0
    c0 = time.thread_time()
    for p, _, _ in entries:
        with av.open(str(p)):
            pass
    open_s = time.thread_time() - c0

    # Baseline: the same sender unpaced (as fast as it goes) to a socket a thread drains.
    bare = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    bare.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    bare.bind(("127.0.0.1", 0))
    bare.settimeout(0.5)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                bare.recv(65536)

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    try:
        fast = serve(entries, bare.getsockname(), 320580098, speed=1000.0)
    finally:
        stop.set()
        drainer.join(2)
        bare.close()

    sink = DiscardSink(work / "rx")
    channel = device_id(99)
    segmenter = Segmenter(channel, sink, Gb28181Config().segment_seconds)
    rx = MediaReceiver(channel, "UDP", PortPool("127.0.0.1", None), segmenter, signal=lambda _c: None,
                       on_end=lambda _r, _why: None, timeout_s=4.0)
    ssrc = 320580099
    rx.start(ssrc)
    rx_cpu: list[float] = []

    def before_go() -> None:
        time.sleep(0.5)  # the receiver waits for packets
        rx_cpu.append(thread_cpu(rx._thread))

    try:
        live = serve(entries, ("127.0.0.1", rx.port), ssrc, before_go=before_go)
        time.sleep(0.6)  # the receiver's last batches (it wakes every 0.2 s)
        rx_s = thread_cpu(rx._thread) - rx_cpu[0]
    finally:
        rx.stop()
        rx.join(10)
    st = rx.stats
    pct = 100 / video_s
    return [
        ("serve one live stream upward (sender thread)", f"{pct * live.cpu_s:.2f}% core", "",
         f"{live.cpu_s:.3f} s CPU for {video_s:.0f} s of 1080p25 at {mbps:.1f} Mbit/s ({live.frames} frames, "
         f"{live.packets} RTP packets, paced in real time: {live.wall_s:.1f} s wall); segment_units alone "
         f"(measured apart, {frames} frames) {pct * demux_s:.2f}%, of which opening the files (FFmpeg's stream "
         f"probe) {pct * open_s:.2f}%"),
        ("  same sender unpaced (baseline: pacing's share)", f"{pct * fast.cpu_s:.2f}% core", "",
         f"{fast.cpu_s:.3f} s CPU, {fast.wall_s:.2f} s wall, to a bare socket: one wakeup per frame paced in real "
         f"time costs {pct * (live.cpu_s - fast.cpu_s):.2f}% more"),
        ("receive it (MediaReceiver thread: RTP, PS demux, segmenter)", f"{pct * rx_s:.2f}% core", "",
         f"{rx_s:.3f} s CPU; {st.frames} frames received, {st.lost} packets lost, {sink.segments} segments "
         "written (the hub's store worker not counted)"),
        ("ratio serve / receive", f"{live.cpu_s / rx_s:.2f}", "<= 1.0",
         f"unpaced sender / receive {fast.cpu_s / rx_s:.2f}; thread CPU time of each side, measured together"),
    ]


# --------------------------------------------------------------------------- main


def print_table(rows: list[Row]) -> None:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\n{'figure':{w0}s}  {'value':{w1}s}  {'target':8s}  detail (same run)")
    for name, value, target, detail in rows:
        print(f"{name:{w0}s}  {value:{w1}s}  {target:8s}  {detail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="1,2,3,4", help="1 catalog, 2 OFF told, 3 INVITE to RTP, 4 serve CPU")
    ap.add_argument("--devices", type=int, default=10_000, help="devices in the hub's config, all shared upward")
    ap.add_argument("--catalog-runs", type=int, default=3, help="catalog queries per superior in part 1")
    ap.add_argument("--settle-s", type=float, default=0.0,
                    help="wait this long after the hub registered before the first query (0: at once, as a superior)")
    ap.add_argument("--off-runs", type=int, default=3, help="times a device goes dark in part 2")
    ap.add_argument("--invite-runs", type=int, default=5, help="INVITEs in part 3")
    ap.add_argument("--media-s", type=float, default=20.0, help="seconds of video served in part 4")
    ap.add_argument("--work-dir", default="/tmp/vms-bench", help="the 1080p segments are cached here")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.ERROR)
    parts = {int(x) for x in args.parts.split(",") if x}
    print("command: " + shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                                    else sys.executable, os.path.relpath(__file__, ROOT), *sys.argv[1:]]))
    print(f"cascade bench on {os.cpu_count()} cores, loopback only; CPU is thread or process CPU time; "
          f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    base = Path(args.work_dir)
    work = base / "cascade"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    segs: list[Path] = []
    if parts & {3, 4}:
        if shutil.which("ffmpeg") is None:
            sys.exit("ffmpeg CLI not found")
        segs = make_segments(base, max(10, int(args.media_s)))
    rows: list[Row] = []
    try:
        if parts & {1, 2, 3}:
            rows += asyncio.run(hub_parts(args, parts, work, segs))
        if 4 in parts:
            rows += media_figures(args, work, segs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if rows:
        print_table(rows)
        print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine may be shared: CPU is per thread "
              "or process)")


if __name__ == "__main__":
    main()
