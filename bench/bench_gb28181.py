"""GB/T 28181 access at speed: keepalives of 100,000 devices, INVITE to first frame, PS/RTP receive CPU.

    .venv/bin/python bench/bench_gb28181.py [--parts 1,2,3] [--devices 100000] [--channels 1]
                                            [--ka-warm-s 33] [--window-s 10] [--fast-rate 20000]
                                            [--invite-runs 5]
                                            [--streams 4] [--media-windows 3] [--media-window-s 15]
                                            [--media-transport UDP] [--segment-s S] [--work-dir DIR]

Defaults take about 10 minutes on 2 cores, most of it registering 100,000 devices (about 4 minutes);
``--devices 20000`` takes about 4, ``--parts 3`` about 1.5.

Three figures, each beside a baseline measured in the same run; nothing is asserted. Targets from
the GB/T 28181 issue ("Speed"). Every process under test reads its own CPU clocks when asked (the
process clock, all threads: ``time.process_time``; one thread's: ``pthread_getcpuclockid``), so CPU
is attributed to a process or to one thread, at nanosecond resolution, whatever else the machine runs.

1. **Keepalives.** A hub (``vms.hub.Hub`` with a ``gb28181`` section, ``record: false``) runs in its
   own process; a sender process registers ``--devices`` IPCs (type 132, each with ``--channels``
   131 channels) over real UDP with digest (REGISTER, 401, REGISTER with Authorization, 200; the
   hub's Catalog query answered with a 200 and a Catalog response), then sends Keepalive MESSAGEs
   over real UDP on loopback: paced at ``devices / 60`` per second (the standard 60 s interval), then
   at ``--fast-rate`` (more than the hub handles, so it is saturated; an unbounded sender would take
   one of two cores from the hub). Figures: keepalives handled per CPU second of the hub's SIP thread
   (the asyncio loop thread of ``GbService``: parsing, registrar, answers), and that thread's CPU
   share at ``devices / 60`` keepalives per second, measured, not extrapolated. The whole hub process's CPU is
   printed too (it adds the health tick over all devices). The SIP thread's time per keepalive is
   split by timing two calls in the hub process (thread CPU time): the transport's sweep of the
   answers it keeps (``Transport._expire_answers``) and the service's handler (registrar, MANSCDP,
   health signal); the rest is SIP parsing, the answer and the event loop. Baseline: the same sender blasting a bare
   asyncio UDP receiver that parses nothing and answers nothing (its own process), sent to as fast as
   the sender can. The hub's keepalive timeout is 600 s (``keepalive_misses: 10``) so that no device
   goes offline while the others register (the set-up sends no keepalives); the path is the same.

   Shortcuts of the set-up (not of what is measured), so 100,000 devices register in minutes: the
   devices and channels are written to the store in bulk first, and the hub's acceptance callable
   (``HubLink.report``, which would write a discovered-camera row, an audit row and a device row per
   device, each fsynced) is replaced by one that accepts without writing; the registration messages
   (REGISTERs and Catalog responses, not the Keepalives) carry no Via branch (RFC 2543 style), so the
   SIP transport keeps no server transaction for them. Everything else, ``GbService._register`` (rate
   limit, ID and prefix checks, digest, nonce replay check, the registration table, the Catalog
   query) and ``_message`` for the Catalog response, runs as in service. ``gb28181.register_rate``
   is raised to its maximum (one sender address registers them all). Each keepalive window starts
   ``--ka-warm-s`` after its traffic does: the transport keeps every answered request for 32 s
   (RFC 3261 Timer J), so what it holds reaches its steady size only then.

2. **INVITE to first frame.** An in-process hub (``auto_accept``, ``record``) and simulated GB
   cameras (``camsim.gb28181.GbDevice``, threads of this process, the 1080p clip below). Each run a
   new camera registers; from the hub's INVITE leaving its SIP transport to the first RTP packet
   received (the baseline: signaling and network), the first video frame demuxed
   (``player.view()[channel]["frames"] > 0``) and the first row in the segments table; median and
   max over ``--invite-runs`` runs, media over UDP and TCP-passive. The first stored segment cannot
   come before ``gb28181.segment_seconds`` of video and the keyframe that ends it. The simulated
   camera starts every stream at a keyframe; a camera that starts mid-GOP adds up to a GOP (2 s here).

3. **PS/RTP receive CPU against the agent's RTSP relay.** One 1080p25 ~4 Mbps H.264 clip (Baseline,
   GOP 2 s, encoded with PyAV at bench time and cached in ``--work-dir``), ``--streams`` times on each
   side at once: (a) sent as PS over RTP by simulated GB cameras (threads of the bench process) to a
   hub in its own process, which receives, demuxes, segments and stores it (``MediaReceiver`` +
   segmenter + archive), and (b) served over RTSP by the simulator (GStreamer) and relayed by the
   agent's ingest + segmenter + spool in its own process (no uplink; the bench deletes finished spool
   segments, so deleting is charged to neither). Both sides cut segments of the same length,
   ``--segment-s`` (default: the hub's ``gb28181.segment_seconds``, 2 s), so both do the same
   recording work per second of video. Both processes are first measured idle over one window (the
   agent before its cameras are started), then over ``--media-windows`` windows with the streams;
   each figure is the median over the windows of CPU seconds per stream-second. Compared:

   - *the streams' own threads* (the target's figure): the hub's ``vms-gb-media-*`` threads (RTP
     receive, SSRC check, reorder, FFmpeg's ``mpeg`` demuxer, segmenter: mux, sha256, fdatasync,
     rename) against the agent's ``ingest-*`` threads (FFmpeg's RTSP/RTP receive and demux, the same
     segmenter). One thread per stream on each side does all of a stream's receive and record work;
     nothing else in either process works per packet or per frame.
   - *each process above its own idle*: (process CPU over the window - idle rate x window) / streams.
     The hub's includes its store worker (``vms-gb-store``: ``SegmentIngest.store_own``, the archive's
     row and move for every segment), which the agent's has no counterpart for: an agent's segment
     is stored by the same ``store_file`` in the hub's upload ingest, outside both figures. That
     ratio is printed with and without the store worker.
   - *whole processes*, idle work included (the hub's tick, outbox, SIP loop and the rest, shared by
     all its streams: less per stream the more streams it has). The figure this bench printed before
     (2.4-2.5) was this one at one stream, with the agent cutting 4 s segments and the hub 2 s: the
     whole idle hub and twice the segments charged to one stream. The idle hub's busiest threads
     are printed.

   Yardstick: ``ffmpeg -threads 1 -i clip -f null -`` decoding the same clip, CPU per clip second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SERVER_ID = "32058500002000000001"
REALM = SERVER_ID[:10]
PASSWORD = "bench-secret"
#: IPC i is 32058501 00 132 0 <serial i>; its channels have type 131 (serials in channel_ids()).
DEVICE_PREFIX = "32058501001320"
CHANNEL_PREFIX = "32058501001310"
KEEPALIVE_S = 60.0
#: How long the SIP transport keeps an answered request (RFC 3261 Timer J, vms/gb28181/transport.py).
TIMER_J_S = 32.0


def device_id(i: int) -> str:
    return f"{DEVICE_PREFIX}{i:06d}"


def channel_ids(i: int, channels: int, devices: int) -> list[str]:
    """Channel j of device i has serial i + j * devices (unique while channels * devices < 10**6)."""
    return [f"{CHANNEL_PREFIX}{i + j * devices:06d}" for j in range(channels)]


# --------------------------------------------------------------------------- CPU clocks (read in the child)


def thread_cpu(thread: threading.Thread | None) -> float:
    """CPU seconds of another thread of this process (its POSIX CPU clock); 0 if it is gone."""
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except OSError:
        return 0.0


def threads_cpu(prefix: str) -> dict[str, float]:
    """CPU seconds of this process's live threads whose names start with ``prefix``, by name."""
    return {f"{t.name}#{t.ident}": thread_cpu(t) for t in threading.enumerate() if t.name.startswith(prefix)}


def delta(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU spent by the threads alive at both ends (a thread that ended in between is not counted)."""
    return sum(after[k] - v for k, v in before.items() if k in after)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_both() -> int:
    """A port free for UDP and TCP (the SIP server binds both)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise OSError("no port free for UDP and TCP")


def hub_cfg(data_dir: Path, **gb: Any) -> Any:
    """A hub config with the test centers (320585...), analysis off, and this gb28181 section."""
    from tests.conftest import hub_config
    from vms.config import HubConfig

    section = {"enabled": True, "server_id": SERVER_ID, "password": PASSWORD, "auto_accept": True, **gb}
    return HubConfig.model_validate(hub_config(data_dir, gb28181=section, analysis={"enabled": False}))


# --------------------------------------------------------------------------- children: JSON lines on stdin/stdout


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _commands(handle: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """Answer each command line with one JSON line; ``{"cmd": "exit"}`` or EOF ends."""
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("cmd") == "exit":
            return
        try:
            _emit(handle(cmd) or {})
        except Exception as exc:  # the parent reads the error
            _emit({"error": f"{type(exc).__name__}: {exc}"})


class Child:
    """A worker child process (this file with ``--worker KIND``) answering JSON commands."""

    def __init__(self, kind: str, work: Path, params: dict[str, Any]) -> None:
        work.mkdir(parents=True, exist_ok=True)
        (work / "params.json").write_text(json.dumps(params))
        self.kind = kind
        self.log = work / f"{kind}.log"
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", kind, "--work", str(work)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=self.log.open("w"), cwd=str(ROOT))
        self.pid = self.proc.pid
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.kind} worker died: {self.log.read_text(errors='replace')[-3000:]}")
        out: dict[str, Any] = json.loads(line)
        if "error" in out:
            raise RuntimeError(f"{self.kind} worker: {out['error']}")
        return out

    def ask(self, cmd: str, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)


# --------------------------------------------------------------------------- part 1, child side


def seed_devices(cfg: Any, devices: int, channels: int) -> None:
    """Devices and channels as rows, as the acceptance would have made them (auto-accepted)."""
    from sqlalchemy import insert

    from vms.db.models import Device
    from vms.hub import Hub

    seeder = Hub(cfg)
    now = time.time() - 1.0
    rows = []
    for i in range(devices):
        owner = f"gb:{device_id(i)}"
        rows.append({"id": device_id(i), "name": f"GB IPC {i}", "location": "", "agent_id": owner,
                     "center_id": None, "created_at": now})
        rows += [{"id": c, "name": f"GB IPC {i} channel", "location": "", "agent_id": owner, "center_id": None,
                  "created_at": now} for c in channel_ids(i, channels, devices)]
    with seeder.sessions() as s:
        for k in range(0, len(rows), 50_000):
            s.execute(insert(Device), rows[k : k + 50_000])
        s.commit()
    seeder.stop()


def hub_worker(work: Path) -> None:
    """The keepalive hub: seeded store, real Hub with the SIP server, acceptance writes skipped."""
    from vms.hub import Hub
    from vms.kernel.protocol import CameraReportReply

    p = json.loads((work / "params.json").read_text())
    # keepalive_misses 10 (600 s): the set-up sends no keepalives, and a device registered early must not
    # go offline (a wave of transitions and alerts) while the rest register; the keepalive path is the same.
    cfg = hub_cfg(work / "data", port=p["port"], record=False, register_rate=10_000,
                  keepalive_interval_s=KEEPALIVE_S, keepalive_misses=10, catalog_timeout_s=60)
    t0 = time.monotonic()
    seed_devices(cfg, p["devices"], p["channels"])
    seeded = time.monotonic() - t0
    hub = Hub(cfg)
    svc = hub.gb28181
    assert svc is not None
    svc.hub.report = lambda _who, _rep: CameraReportReply(cameras=[])  # the rows are there already (see top)
    # Where the SIP thread's time goes: the transport's sweep of the answers it keeps, and the service's
    # handler (registrar, MANSCDP, health signal); the rest is SIP parsing, the answer and the loop.
    spent = {"sweep": 0.0, "handler": 0.0}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*a: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*a)
            finally:
                spent[name] += time.thread_time() - t0
        return call

    setattr(svc.transport, "_expire_answers", timed("sweep", svc.transport._expire_answers))  # noqa: B010
    svc.transport.handler = timed("handler", svc.transport.handler)
    hub.start()
    assert svc._thread is not None

    def stats(_cmd: dict[str, Any]) -> dict[str, Any]:
        with svc._lock:
            regs = list(svc.registrations.values())
        return {"cpu": time.process_time(), "sip_cpu": thread_cpu(svc._thread), **spent,
                "keepalives": svc.counters["keepalives"], "registered": len(regs),
                "catalog_done": sum(r.catalog_done for r in regs),
                "channels": sum(len(r.channels) for r in regs), "answers_kept": len(svc.transport._answered),
                "received": svc.transport.counters.received, "malformed": svc.transport.counters.malformed,
                "unregistered": svc.counters["unregistered_messages"], "refused": svc.counters["refused"],
                "bad_password": svc.counters["bad_password"], "replayed": svc.counters["replayed_nonces"],
                "tick_ms": hub.monitor.last_tick_s * 1000, "known": hub.health.n}

    _emit({"seeded_s": seeded, "known": hub.health.n})
    try:
        _commands(stats)
    finally:
        hub.stop()


def bare_worker(work: Path) -> None:
    """Baseline: an asyncio UDP receiver that counts datagrams (parses nothing, answers nothing)."""
    import asyncio

    count = [0]

    class Count(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
            count[0] += 1

    loop = asyncio.new_event_loop()
    transport, _ = loop.run_until_complete(loop.create_datagram_endpoint(Count, local_addr=("127.0.0.1", 0)))
    port = transport.get_extra_info("sockname")[1]
    th = threading.Thread(target=loop.run_forever, name="bare-loop", daemon=True)
    th.start()
    time.sleep(0.1)
    _emit({"port": port})
    _commands(lambda _c: {"received": count[0], "cpu": time.process_time(), "loop_cpu": thread_cpu(th)})
    loop.call_soon_threadsafe(loop.stop)


class Sender:
    """The devices' side: registers them over UDP, then sends Keepalives paced or as fast as it can."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p
        self.n: int = p["devices"]
        self.channels: int = p["channels"]
        self.hub = ("127.0.0.1", int(p["port"]))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.local = self.sock.getsockname()
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._template = self._keepalive_template()

    # -- registration ------------------------------------------------------------------------------
    def _request(self, method: str, call_id: str, cseq: int, dev: str, body: bytes = b"") -> Any:
        from vms.gb28181 import sip

        h = sip.Headers()
        h.set("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};rport")  # no branch: see the top
        me = f"<sip:{dev}@{REALM}>"
        h.set("From", f"{me};tag={dev[-8:]}")
        h.set("To", me if method == "REGISTER" else f"<sip:{SERVER_ID}@{REALM}>")
        h.set("Call-ID", call_id)
        h.set("CSeq", f"{cseq} {method}")
        h.set("Max-Forwards", "70")
        if method == "REGISTER":
            h.set("Contact", f"<sip:{dev}@{self.local[0]}:{self.local[1]}>")
            h.set("Expires", "3600")
        if body:
            h.set("Content-Type", "Application/MANSCDP+xml")
        return sip.Request(method, f"sip:{SERVER_ID}@{REALM}", h, body)

    def register(self, window: int = 64, timeout_s: float = 4.0, give_up_s: float = 40.0) -> dict[str, Any]:
        """Register every device (pipelined, ``window`` at a time) and answer each Catalog query.

        A device is done once its REGISTER was answered 200 and its Catalog response too; what is
        unanswered after ``timeout_s`` is sent again; a registered device whose Catalog query never
        came within ``give_up_s`` is counted as failed."""
        from vms.gb28181 import digest, manscdp, sip

        @dataclass
        class Dev:
            at: float
            last: bytes | None  # what is sent again if unanswered
            reg: bool = False
            cat: bool = False

        t0 = time.monotonic()
        index = {device_id(i): i for i in range(self.n)}
        state: dict[int, Dev] = {}
        nxt = done = failed = retries = errors = 0
        checked = t0
        sock = self.sock
        sock.settimeout(0.05)

        def send(i: int, data: bytes) -> None:
            d = state.setdefault(i, Dev(0.0, None))
            d.at, d.last = time.monotonic(), data
            sock.sendto(data, self.hub)

        def register(i: int) -> None:
            send(i, sip.serialize(self._request("REGISTER", f"r{i}", 1, device_id(i))))

        while done + failed < self.n:
            while nxt < self.n and len(state) < window:
                register(nxt)
                nxt += 1
            now = time.monotonic()
            if now - checked > 0.5:
                checked = now
                for i, waiting in list(state.items()):
                    if waiting.last is not None and now - waiting.at > timeout_s:
                        retries += 1
                        send(i, waiting.last)
                    elif waiting.last is None and now - waiting.at > give_up_s:
                        del state[i]
                        failed += 1
            try:
                data = sock.recv(65_535)
            except TimeoutError:
                continue
            msg = sip.parse(data)
            if isinstance(msg, sip.Response):
                cid = msg.headers.get("Call-ID") or ""
                i = int(cid[1:])
                d = state.get(i)
                if d is None:
                    continue
                if cid[0] == "r" and not d.reg:
                    if msg.status == 401:
                        ch = digest.parse_challenge(msg.headers.get("WWW-Authenticate") or "")
                        req = self._request("REGISTER", cid, 2, device_id(i))
                        req.headers.set("Authorization", digest.client_authorization(
                            ch, "REGISTER", req.uri, device_id(i), PASSWORD, os.urandom(4).hex(), 1))
                        send(i, sip.serialize(req))
                    elif msg.status == 200:
                        d.reg = True
                        if not d.cat:
                            d.at, d.last = time.monotonic(), None  # now the hub asks for the catalog
                    else:
                        errors += 1
                        register(i)
                elif cid[0] == "c" and msg.status == 200:
                    d.cat = True
                if d.reg and d.cat:
                    del state[i]
                    done += 1
                continue
            # A request from the hub: the Catalog query (anything else is answered 200 and ignored).
            sock.sendto(sip.serialize(sip.response_to(msg, 200, to_tag=os.urandom(4).hex())), self.hub)
            if msg.method != "MESSAGE":
                continue
            q = manscdp.parse(msg.body)
            i = index.get(q.device_id, -1)
            d = state.get(i)
            if q.cmd != "Catalog" or d is None or d.cat:
                continue
            dev = device_id(i)
            items = [{"DeviceID": c, "Name": f"GB IPC {i}", "Manufacturer": "bench", "Model": "IPC",
                      "Owner": "Owner", "CivilCode": dev[:8], "Address": "", "Parental": "0", "ParentID": dev,
                      "SafetyWay": "0", "RegisterWay": "1", "Secrecy": "0", "Status": "ON"}
                     for c in channel_ids(i, self.channels, self.n)]
            body = manscdp.build("Response", "Catalog", q.sn, dev, {"SumNum": str(len(items))}, items=items)
            send(i, sip.serialize(self._request("MESSAGE", f"c{i}", 3, dev, body)))
        return {"registered": done, "failed": failed, "seconds": time.monotonic() - t0, "retries": retries,
                "errors": errors}

    # -- keepalives --------------------------------------------------------------------------------
    def _keepalive_template(self) -> str:
        """A Keepalive MESSAGE made with the project's own SIP and MANSCDP builders, with fixed-width
        fields (device, branch, Call-ID, CSeq, SN) turned into %-placeholders."""
        from vms.gb28181 import manscdp, sip

        dev, branch, call, cseq, sn = "D" * 20, "B" * 16, "C" * 16, "777777", "888888"
        body = manscdp.build("Notify", "Keepalive", int(sn), dev, {"Status": "OK"})
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/UDP {self.local[0]}:{self.local[1]};rport;branch=z9hG4bK{branch}")
        h.set("From", f"<sip:{dev}@{REALM}>;tag=ka{dev[-8:]}")
        h.set("To", f"<sip:{SERVER_ID}@{REALM}>")
        h.set("Call-ID", f"{call}@{self.local[0]}")
        h.set("CSeq", f"{cseq} MESSAGE")
        h.set("Max-Forwards", "70")
        h.set("User-Agent", "bench GB/T 28181 device")
        h.set("Content-Type", "Application/MANSCDP+xml")
        text = sip.serialize(sip.Request("MESSAGE", f"sip:{SERVER_ID}@{REALM}", h, body)).decode("ascii")
        text = text.replace("%", "%%")
        for placeholder, name in ((dev, "dev"), (branch, "branch"), (call, "call"), (cseq, "cseq"), (sn, "sn")):
            text = text.replace(placeholder, f"%({name})s")
        return text

    def keepalive(self, k: int) -> bytes:
        """The k-th keepalive: device k mod N, fresh branch and Call-ID, same length every time."""
        return (self._template % {"dev": device_id(k % self.n), "branch": f"{k:016x}", "call": f"{k:016x}",
                                  "cseq": f"{100_000 + k % 900_000}", "sn": f"{100_000 + k % 900_000}"}
                ).encode("ascii")

    def start(self, port: int, rate: float) -> None:
        """Send to ``port``: ``rate`` per second, or as fast as possible with rate 0."""
        self.halt()
        self._stop.clear()
        self._thread = threading.Thread(target=self._send, args=(("127.0.0.1", port), rate), daemon=True)
        self._thread.start()

    def halt(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _send(self, dest: tuple[str, int], rate: float) -> None:
        sock, make, k = self.sock, self.keepalive, self.sent
        sock.settimeout(None)
        if rate <= 0:
            while not self._stop.is_set():
                for _ in range(256):
                    with contextlib.suppress(OSError):
                        sock.sendto(make(k), dest)
                    k += 1
                self.sent = k
            return
        t0, base = time.monotonic(), k
        while not self._stop.wait(0.002):
            due = base + int((time.monotonic() - t0) * rate)
            while k < due:
                with contextlib.suppress(OSError):
                    sock.sendto(make(k), dest)
                k += 1
            self.sent = k


def sender_worker(work: Path) -> None:
    from vms.gb28181 import manscdp, sip

    s = Sender(json.loads((work / "params.json").read_text()))
    probe = sip.parse(s.keepalive(12_345))  # the template is a valid Keepalive for the hub's own parsers
    body = manscdp.parse(probe.body)
    assert body.cmd == "Keepalive" and body.device_id == device_id(12_345 % s.n), body
    _emit({"bytes": len(s.keepalive(0))})

    def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "register":
            return s.register()
        if cmd["cmd"] == "send":
            s.start(int(cmd["port"]), float(cmd["rate"]))
        elif cmd["cmd"] == "halt":
            s.halt()
        return {"sent": s.sent}

    _commands(handle)
    s.halt()


# --------------------------------------------------------------------------- part 1, parent side


@dataclass
class KaWindow:
    wall: float
    handled: int
    sent: int
    sip_cpu: float
    proc_cpu: float
    answers_kept: int = 0
    sweep: float = 0.0  # of sip_cpu: the transport's sweep of kept answers
    handler: float = 0.0  # of sip_cpu: the service's handler


def ka_window(hub: Child, sender: Child, seconds: float) -> KaWindow:
    """Keepalives handled and the hub's CPU (SIP thread, whole process) over ``seconds``."""
    s0, h0, t0 = sender.ask("count")["sent"], hub.ask("stats"), time.monotonic()
    time.sleep(seconds)
    s1, h1, t1 = sender.ask("count")["sent"], hub.ask("stats"), time.monotonic()
    return KaWindow(t1 - t0, h1["keepalives"] - h0["keepalives"], s1 - s0, h1["sip_cpu"] - h0["sip_cpu"],
                    h1["cpu"] - h0["cpu"], h1["answers_kept"], h1["sweep"] - h0["sweep"],
                    h1["handler"] - h0["handler"])


def settle(child: Child, busy: float = 0.2, most_s: float = 120.0) -> None:
    """Wait until a freshly started child uses less than ``busy`` of a core (its start-up work is done)."""
    deadline = time.monotonic() + most_s
    last = child.ask("stats")["cpu"]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = child.ask("stats")["cpu"]
        if now - last < busy:
            return
        last = now


def part_keepalives(args: argparse.Namespace, work: Path) -> list[tuple[str, str, str, str]]:
    n, ch = args.devices, args.channels
    if n * max(ch, 1) >= 1_000_000:
        sys.exit("--devices x --channels must stay under 1,000,000 (6-digit serials)")
    port = free_port_both()
    params = {"devices": n, "channels": ch, "port": port}
    print(f"[1] keepalives: {n:,} IPCs with {ch} channel(s) each; seeding the store and starting the hub ...",
          flush=True)
    hub = Child("hub", work / "ka", params)
    bare = sender = None
    try:
        print(f"    store seeded in {hub.ready['seeded_s']:.1f} s; hub knows {hub.ready['known']:,} devices",
              flush=True)
        bare = Child("bare", work / "bare", {})
        sender = Child("sender", work / "sender", params)
        settle(hub)
        t0 = time.monotonic()
        reg = sender.ask("register")
        print(f"    {reg['registered']:,} registered over UDP with digest + Catalog in {reg['seconds']:.1f} s "
              f"({reg['registered'] / reg['seconds']:,.0f}/s; {reg['retries']} retransmissions, "
              f"{reg['errors']} errors, {reg['failed']} without a Catalog query)", flush=True)
        st = hub.ask("stats")
        deadline = time.monotonic() + 60
        while st["catalog_done"] < n and time.monotonic() < deadline:
            time.sleep(0.5)
            st = hub.ask("stats")
        if st["registered"] != n or st["channels"] != n * ch:
            print(f"    warning: hub has {st['registered']:,} registrations and {st['channels']:,} channels",
                  flush=True)
        time.sleep(4.0)  # devices count as online after 3 s of signal: the ticks that write it
        settle(hub)
        idle = ka_window(hub, sender, min(args.window_s, 5.0))
        print(f"    set-up {time.monotonic() - t0:.0f} s; idle hub: SIP thread {100 * idle.sip_cpu / idle.wall:.1f}% "
              f"of a core, whole process {100 * idle.proc_cpu / idle.wall:.1f}% (health tick over "
              f"{st['known']:,} devices: {st['tick_ms']:.0f} ms)", flush=True)

        rate = n / KEEPALIVE_S
        sender.ask("send", port=port, rate=rate)
        print(f"    paced {rate:,.0f}/s (every device once per {KEEPALIVE_S:.0f} s): warming {args.ka_warm_s:.0f} s, "
              f"window {args.window_s:.0f} s ...", flush=True)
        time.sleep(args.ka_warm_s)
        paced = ka_window(hub, sender, args.window_s)
        sender.ask("send", port=port, rate=args.fast_rate)
        print(f"    offered {args.fast_rate:,.0f}/s (more than it handles): warming {args.ka_warm_s:.0f} s, "
              f"window {args.window_s:.0f} s ...", flush=True)
        time.sleep(args.ka_warm_s)
        blast = ka_window(hub, sender, args.window_s)
        sender.ask("send", port=bare.ready["port"], rate=0)
        time.sleep(2.0)
        b0, s0, bt0 = bare.ask("stats"), sender.ask("count")["sent"], time.monotonic()
        time.sleep(args.window_s)
        b1, s1, bt1 = bare.ask("stats"), sender.ask("count")["sent"], time.monotonic()
        sender.ask("halt")
        end = hub.ask("stats")
    finally:
        for c in (sender, bare, hub):
            if c is not None:
                c.stop()
    bare_rate, bare_cpu = (b1["received"] - b0["received"]) / (bt1 - bt0), (b1["cpu"] - b0["cpu"]) / (bt1 - bt0)
    bare_per_core = bare_rate / bare_cpu if bare_cpu > 0 else float("inf")
    per_core = blast.handled / blast.sip_cpu if blast.sip_cpu > 0 else float("inf")
    per_core_proc = blast.handled / blast.proc_cpu if blast.proc_cpu > 0 else float("inf")
    share = paced.sip_cpu / paced.wall
    print(f"    paced: offered {paced.sent / paced.wall:,.0f}/s, handled {paced.handled / paced.wall:,.0f}/s; "
          f"SIP thread {100 * share:.1f}% of a core, process {100 * paced.proc_cpu / paced.wall:.1f}%; "
          f"answers kept by the transport {paced.answers_kept:,}", flush=True)
    print(f"    fast:  offered {blast.sent / blast.wall:,.0f}/s, handled {blast.handled / blast.wall:,.0f}/s; "
          f"SIP thread {100 * blast.sip_cpu / blast.wall:.0f}% of a core, "
          f"process {100 * blast.proc_cpu / blast.wall:.0f}%; answers kept {blast.answers_kept:,}", flush=True)
    print(f"    bare:  offered {(s1 - s0) / (bt1 - bt0):,.0f}/s, received {bare_rate:,.0f}/s on "
          f"{100 * bare_cpu:.0f}% of a core", flush=True)
    odd = {k: end[k] for k in ("malformed", "unregistered", "refused", "bad_password", "replayed") if end[k]}
    if odd:
        print(f"    hub counters: {json.dumps(odd)}", flush=True)
    extrapolated = rate / per_core if per_core > 0 else float("inf")

    def us(cpu: float) -> str:
        return f"{1e6 * cpu / max(blast.handled, 1):,.0f}"

    housekeeping = idle.sip_cpu / idle.wall  # the SIP thread without traffic: its per-second work over all devices

    handled = paced.handled / max(paced.sent, 1)
    share_text = f"{100 * share:.1f}% core" + (f" (handled {handled:.0%} of offered)" if handled < 0.98 else "")
    return [
        ("registrations /s during the set-up", f"{reg['registered'] / reg['seconds']:,.0f}",
         f"REGISTER, 401, REGISTER with digest, 200, Catalog query and answer over UDP, {ch} channel(s) each; "
         f"{n:,} in {reg['seconds']:.0f} s (informative)", ""),
        ("keepalives /s per core, SIP thread (saturated)", f"{per_core:,.0f}",
         f"bare UDP receiver {bare_per_core:,.0f} datagrams/s/core; hub/bare {per_core / bare_per_core:.3f} "
         f"({1e6 / per_core:.0f} vs {1e6 / bare_per_core:.0f} us each); whole hub process {per_core_proc:,.0f}/s/core",
         ">= 5,000"),
        ("  SIP thread per keepalive (saturated)", f"{1e6 / per_core:,.0f} us",
         f"sweep of the {blast.answers_kept:,} answers the transport keeps {us(blast.sweep)} us, service handler "
         f"{us(blast.handler)} us, SIP parse + answer + loop {us(blast.sip_cpu - blast.sweep - blast.handler)} us "
         f"(of which {us(housekeeping * blast.wall)} us is the idle thread's own {100 * housekeeping:.1f}% of a core); "
         f"without the sweep ~{blast.handled / max(blast.sip_cpu - blast.sweep, 1e-9):,.0f}/s/core", ""),
        (f"SIP thread CPU at {n:,} devices / 60 s (paced, measured)", share_text,
         f"of it the sweep of kept answers {100 * paced.sweep / max(paced.sip_cpu, 1e-9):.0f}%; "
         f"from the saturated rate: {100 * extrapolated:.0f}% core; whole process "
         f"{100 * paced.proc_cpu / paced.wall:.0f}%; idle hub process {100 * idle.proc_cpu / idle.wall:.1f}%", "< 33%"),
    ]


# --------------------------------------------------------------------------- part 2: INVITE to first frame


def part_invite(args: argparse.Namespace, work: Path, clip: Path) -> list[tuple[str, str, str, str]]:
    from sqlalchemy import func, select

    from camsim.gb28181 import GbChannel, GbDevice, GbDeviceSpec, GbServer
    from camsim.gb_media import load_clip
    from vms.db.models import Segment as SegmentRow
    from vms.gb28181 import sip
    from vms.hub import Hub

    rows = []
    load_clip(clip)  # demuxed once, outside the timings
    for mode in ("UDP", "TCP-passive"):
        port = free_port_both()
        hub = Hub(hub_cfg(work / f"invite-{mode}", port=port, record=True, media_transport=mode))
        svc = hub.gb28181
        assert svc is not None and svc.player is not None
        player = svc.player
        invited: dict[str, float] = {}
        tr = svc.transport
        original_send = tr.send

        def send(peer: Any, msg: Any, _orig: Callable[..., bool] = original_send,
                 _invited: dict[str, float] = invited) -> bool:
            if isinstance(msg, sip.Request) and msg.method == "INVITE":
                _invited.setdefault(sip.uri_user(msg.uri), time.monotonic())
            return _orig(peer, msg)

        tr.send = send  # type: ignore[method-assign]
        hub.start()
        server = GbServer("127.0.0.1", port, SERVER_ID)
        runs: list[tuple[float, float, float]] = []
        failures = 0
        print(f"[2] INVITE to first frame, media over {mode}: {args.invite_runs} runs ...", flush=True)
        try:
            for k in range(args.invite_runs):
                dev, chan = f"{DEVICE_PREFIX}{990_000 + k:06d}", f"{CHANNEL_PREFIX}{990_000 + k:06d}"
                spec = GbDeviceSpec(dev, server, PASSWORD, (GbChannel(chan, f"bench {k}"),), name=f"bench {k}")
                camera = GbDevice(spec, clip).start()
                try:
                    deadline = time.monotonic() + 30
                    t_rtp = t_frame = t_seg = None
                    polls = 0
                    while time.monotonic() < deadline and t_seg is None:
                        now = time.monotonic()
                        v = player.view().get(chan)
                        if v is not None and chan in invited:
                            if t_rtp is None and v["packets"] > 0:
                                t_rtp = now
                            if t_frame is None and v["frames"] > 0:
                                t_frame = now
                            if t_frame is not None and polls % 5 == 0:
                                with hub.sessions() as s:
                                    q = select(func.count()).select_from(SegmentRow).where(SegmentRow.device_id == chan)
                                    if s.scalar(q):
                                        t_seg = time.monotonic()
                        polls += 1
                        time.sleep(0.002)
                    if t_rtp is None or t_frame is None or t_seg is None:
                        failures += 1
                        print(f"    run {k}: incomplete (invited {chan in invited}, rtp {t_rtp}, frame {t_frame}, "
                              f"segment {t_seg}); view {player.view().get(chan)}", flush=True)
                        continue
                    t0 = invited[chan]
                    runs.append((t_rtp - t0, t_frame - t0, t_seg - t0))
                finally:
                    camera.stop()
        finally:
            hub.stop()
        if not runs:
            rows.append((f"INVITE -> first frame, {mode}", "no run completed", "", "< 2 s"))
            continue
        rtp_s, frame_s, seg_s = ([r[i] for r in runs] for i in range(3))
        seg_len = hub.cfg.gb28181.segment_seconds
        print("    runs (first RTP / first frame / first stored segment, s): "
              + ", ".join(f"{a:.2f}/{b:.2f}/{c:.2f}" for a, b, c in runs), flush=True)
        note = f" ({failures} runs incomplete)" if failures else ""
        rows.append((f"INVITE -> first frame demuxed, {mode}",
                     f"median {statistics.median(frame_s):.2f} s, max {max(frame_s):.2f} s",
                     f"first RTP packet: median {statistics.median(rtp_s):.2f} s{note}", "< 2 s"))
        rows.append((f"INVITE -> first segment stored, {mode}",
                     f"median {statistics.median(seg_s):.2f} s, max {max(seg_s):.2f} s",
                     f"bounded below by segment_seconds = {seg_len:g} s + the keyframe after it", "(first frame)"))
    return rows


# --------------------------------------------------------------------------- part 3: media receive CPU, children


def gbhub_worker(work: Path) -> None:
    """A hub receiving GB media (its own process, so its CPU is attributable)."""
    from vms.hub import Hub

    p = json.loads((work / "params.json").read_text())
    gb: dict[str, Any] = {"port": p["port"], "record": True, "media_transport": p["mode"]}
    if p.get("segment_s"):
        gb["segment_seconds"] = p["segment_s"]
    hub = Hub(hub_cfg(work / "data", **gb))
    svc = hub.gb28181
    assert svc is not None and svc.player is not None and svc.sink is not None
    player, sink = svc.player, svc.sink
    hub.start()

    def stats(_cmd: dict[str, Any]) -> dict[str, Any]:
        view = player.view()
        return {"cpu": time.process_time(), "media_cpu": threads_cpu("vms-gb-media-"),
                "store_cpu": threads_cpu("vms-gb-store"), "sip_cpu": threads_cpu("vms-gb28181"),
                "threads_cpu": threads_cpu(""),
                "playing": sum(v["state"] == "playing" for v in view.values()),
                "frames": sum(v["frames"] for v in view.values()), "lost": sum(v["lost"] for v in view.values()),
                "stored": sink.stored, "segment_s": hub.cfg.gb28181.segment_seconds}

    _emit({"ok": True})
    try:
        _commands(stats)
    finally:
        hub.stop()


def agent_worker(work: Path) -> None:
    """The agent's RTSP relay: ingest threads, segmenters and spool, as bench_relay.py runs them; the
    ingests start on the ``start`` command, so the idle process is measured first."""
    from edge_agent.config import AgentConfig
    from edge_agent.ingest import CameraIngest
    from edge_agent.spool import Spool
    from vms.media.segmenter import Segmenter

    p = json.loads((work / "params.json").read_text())
    seg_s = float(p.get("segment_s") or AgentConfig.model_fields["segment_seconds"].default)
    spool = Spool(work / "spool", quota_bytes=50 * 10**9, live_window_s=3 * seg_s)
    ingests: list[CameraIngest] = []
    stop = threading.Event()

    def ack() -> None:  # the bench deleting a finished segment stands in for its upload
        while not stop.wait(1.0):
            for seg in spool.segments():
                if not seg.path.exists():
                    spool.ack(seg)

    threading.Thread(target=ack, daemon=True).start()
    _emit({"ok": True, "segment_s": seg_s})

    def handle(cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["cmd"] == "start":
            ingests.extend(CameraIngest(d, url, Segmenter(d, spool, seg_s)) for d, url in p["urls"].items())
            for ing in ingests:
                ing.start()
        snaps = [ing.snapshot() for ing in ingests]
        return {"cpu": time.process_time(), "ingest_cpu": threads_cpu("ingest-"),
                "packets": sum(s.packets for s in snaps), "connected": sum(s.connected for s in snaps)}

    try:
        _commands(handle)
    finally:
        stop.set()
        for ing in ingests:
            ing.stop()


def delete_finished(root: Path, stop: threading.Event, age_s: float = 2.0) -> None:
    """Delete the agent's finished segments (not its temp files) once written: its upload's stand-in."""
    while not stop.wait(0.5):
        old = time.time() - age_s
        for p in root.rglob("*.ts"):
            with contextlib.suppress(OSError):
                if ".tmp" not in p.parts and p.stat().st_mtime < old:
                    p.unlink()


def ffmpeg_decode_cpu(clip: Path) -> float:
    """CPU seconds of ``ffmpeg -threads 1 -i clip -f null -`` (its own rusage)."""
    proc = subprocess.Popen(["ffmpeg", "-nostdin", "-loglevel", "error", "-threads", "1", "-i", str(clip),
                             "-map", "0:v", "-f", "null", "-"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg exited {proc.returncode}")
    return float(usage.ru_utime + usage.ru_stime)


@dataclass
class MediaWindow:
    """CPU seconds over one window of ``wall`` seconds: each process, and its streams' own threads."""

    wall: float
    hub: float  # the hub process, all threads
    media: float  # its media threads (vms-gb-media-*), one per stream
    store: float  # its store worker (vms-gb-store)
    sip: float  # its SIP thread
    agent: float  # the agent process, all threads
    ingest: float  # its ingest threads (ingest-*), one per stream
    hub_frames: int
    agent_packets: int


def _by_name(before: dict[str, float], after: dict[str, float], wall: float) -> list[tuple[str, float]]:
    """Share of a core per thread name (threads of one name summed), busiest first."""
    out: dict[str, float] = {}
    for key, v in before.items():
        if key in after:
            name = key.rsplit("#", 1)[0]
            out[name] = out.get(name, 0.0) + (after[key] - v) / wall
    return sorted(out.items(), key=lambda kv: -kv[1])


def media_window(gbhub: Child, agent: Child, seconds: float) -> MediaWindow:
    h0, a0, w0 = gbhub.ask("stats"), agent.ask("stats"), time.monotonic()
    time.sleep(seconds)
    h1, a1, w1 = gbhub.ask("stats"), agent.ask("stats"), time.monotonic()
    return MediaWindow(w1 - w0, h1["cpu"] - h0["cpu"], delta(h0["media_cpu"], h1["media_cpu"]),
                       delta(h0["store_cpu"], h1["store_cpu"]), delta(h0["sip_cpu"], h1["sip_cpu"]),
                       a1["cpu"] - a0["cpu"], delta(a0["ingest_cpu"], a1["ingest_cpu"]),
                       h1["frames"] - h0["frames"], a1["packets"] - a0["packets"])


def part_media(args: argparse.Namespace, work: Path, clip: Path, params: Any) -> list[tuple[str, str, str, str]]:
    from camsim.gb28181 import GbDevice, GbServer, fleet
    from camsim.gb_media import load_clip
    from camsim.sim import Simulator, device_ids
    from vms.config import Gb28181Config

    k = args.streams
    seg_s = args.segment_s if args.segment_s is not None else Gb28181Config.model_fields["segment_seconds"].default
    print(f"[3] PS/RTP receive vs RTSP relay: {k} stream(s) of 1080p25 {params.bitrate_kbps} kbps on each side; "
          "ffmpeg decode yardstick first ...", flush=True)
    decode_cpu = ffmpeg_decode_cpu(clip)
    units = load_clip(clip)
    clip_s = units.period / 90_000
    decode = decode_cpu / clip_s
    root = work / "media"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rtsp_port, control_port, sip_port = free_port(), free_port(), free_port_both()
    rtsp_ids = device_ids(k, prefix="32058502001320")
    # The simulator's data directory is the clip cache's parent, so it serves the clip made above.
    sim = Simulator(rtsp_ids, clip.parent.parent, rtsp_port=rtsp_port, control_port=control_port,
                    onvif_base_port=None, params=params, mix_profiles=False, variants=["normal"],
                    log_path=root / "rtsp_server.log")
    children: list[Child] = []
    cams: list[Any] = []
    cleaning = threading.Event()
    try:
        sim.start()
        assert sim.proc is not None
        gbhub = Child("gbhub", root / "gbhub", {"port": sip_port, "mode": args.media_transport, "segment_s": seg_s})
        children.append(gbhub)
        agent_dir = root / "agent"
        agent = Child("agent", agent_dir, {"urls": {d: sim.rtsp_url(d) for d in rtsp_ids}, "segment_s": seg_s})
        children.append(agent)
        time.sleep(3.0)
        print(f"    both processes idle for {args.media_window_s:.0f} s ...", flush=True)
        hs0, a0, t0 = gbhub.ask("stats"), agent.ask("stats")["cpu"], time.monotonic()
        time.sleep(args.media_window_s)
        hs1, a1, t1 = gbhub.ask("stats"), agent.ask("stats")["cpu"], time.monotonic()
        idle_hub, idle_agent = (hs1["cpu"] - hs0["cpu"]) / (t1 - t0), (a1 - a0) / (t1 - t0)
        idle_threads = _by_name(hs0["threads_cpu"], hs1["threads_cpu"], t1 - t0)
        threading.Thread(target=delete_finished, args=(agent_dir / "spool", cleaning), daemon=True).start()
        agent.ask("start")
        server = GbServer("127.0.0.1", sip_port, SERVER_ID)
        for spec in fleet(server, PASSWORD, cameras=k, prefix="3205850100", clip=params):
            cams.append(GbDevice(spec, clip).start())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            h, a = gbhub.ask("stats"), agent.ask("stats")
            if h["playing"] >= k and h["frames"] > 0 and a["connected"] >= k:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(f"streams did not start: hub {h}, agent {a}")
        print(f"    streaming (segments of {h['segment_s']:g} s at the hub, {agent.ready['segment_s']:g} s at the "
              f"agent); warming {args.media_warmup_s:.0f} s, then {args.media_windows} x {args.media_window_s:.0f} s"
              " ...", flush=True)
        time.sleep(args.media_warmup_s)
        windows = [media_window(gbhub, agent, args.media_window_s) for _ in range(args.media_windows)]
        end = gbhub.ask("stats")
    finally:
        for c in cams:
            c.stop()
        for ch in children:
            ch.stop()
        sim.stop()
        cleaning.set()

    def per_stream(cpu: Callable[[MediaWindow], float]) -> float:
        """Median over the windows of CPU seconds per stream-second."""
        return statistics.median(cpu(w) / (w.wall * k) for w in windows)

    media_s, ingest_s = per_stream(lambda w: w.media), per_stream(lambda w: w.ingest)
    store_s, sip_s = per_stream(lambda w: w.store), per_stream(lambda w: w.sip)
    hub_all, agent_all = per_stream(lambda w: w.hub), per_stream(lambda w: w.agent)
    hub_m = per_stream(lambda w: w.hub - idle_hub * w.wall)
    agent_m = per_stream(lambda w: w.agent - idle_agent * w.wall)
    hub_m_ns = per_stream(lambda w: w.hub - w.store - idle_hub * w.wall)
    thread_ratios = [w.media / w.ingest if w.ingest > 0 else float("inf") for w in windows]
    fps_h, fps_a = per_stream(lambda w: w.hub_frames), per_stream(lambda w: w.agent_packets)
    print(f"    windows, stream-thread ratio hub/agent: {', '.join(f'{r:.2f}' for r in thread_ratios)}; frames per "
          f"stream-second: hub {fps_h:.1f}, agent {fps_a:.1f}; hub lost {end['lost']} RTP packets, stored "
          f"{end['stored']} segments", flush=True)
    print(f"    idle processes before the streams: hub {100 * idle_hub:.2f}% core, agent {100 * idle_agent:.2f}% core; "
          "the idle hub's busiest threads: " + ", ".join(f"{name} {100 * cpu:.2f}%" for name, cpu in idle_threads[:5]),
          flush=True)

    def pct(x: float) -> str:
        return f"{100 * x:.3f}% core/stream"

    return [
        ("PS/RTP receive + record, the stream's thread (hub)", pct(media_s),
         "RTP receive, SSRC check, reorder, FFmpeg mpeg demux, segmenter (mux, sha256, fdatasync, rename)", ""),
        ("RTSP relay, the stream's thread (agent, baseline)", pct(ingest_s),
         "FFmpeg RTSP/RTP receive and demux, the same segmenter; "
         f"ffmpeg -threads 1 decoding the clip: {100 * decode:.2f}% core per stream-second (yardstick)", ""),
        ("ratio, streams' own threads hub/agent", f"{media_s / ingest_s:.2f}",
         f"windows {min(thread_ratios):.2f}-{max(thread_ratios):.2f}; hub/ffmpeg decode {media_s / decode:.3f}, "
         f"agent/ffmpeg decode {ingest_s / decode:.3f}", "<= 1.0"),
        ("ratio, process CPU above idle hub/agent", f"{hub_m / agent_m:.2f}",
         f"hub {pct(hub_m)}, of it the store worker {pct(store_s)} (an agent's segments are stored by the hub's "
         f"upload ingest, charged to neither; without it {hub_m_ns / agent_m:.2f}) and the SIP thread {pct(sip_s)}; "
         f"agent {pct(agent_m)}", ""),
        ("ratio, whole processes with their idle work", f"{hub_all / agent_all:.2f}",
         f"hub {pct(hub_all)} (idle {100 * idle_hub:.2f}% core over {k} stream(s)), agent {pct(agent_all)} (idle "
         f"{100 * idle_agent:.2f}% core)", ""),
    ]


# --------------------------------------------------------------------------- main


def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\n{'figure':{w0}s}  {'value':{w1}s}  {'target':8s}  baseline / detail (same run)")
    for name, value, detail, target in rows:
        print(f"{name:{w0}s}  {value:{w1}s}  {target:8s}  {detail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="1,2,3", help="which figures: 1 keepalives, 2 INVITE, 3 media CPU")
    ap.add_argument("--devices", type=int, default=100_000, help="registered devices keeping alive")
    ap.add_argument("--channels", type=int, default=1, help="catalog channels per device (each lit by keepalives)")
    ap.add_argument("--ka-warm-s", type=float, default=TIMER_J_S + 1,
                    help="keepalive traffic before a window (>= 32 s: the transport's answer cache fills)")
    ap.add_argument("--window-s", type=float, default=10.0, help="keepalive measurement window")
    ap.add_argument("--fast-rate", type=float, default=20_000,
                    help="keepalives/s offered to find the hub's rate (0: as fast as the sender can; on 2 cores an "
                    "unbounded sender takes a core from the hub); the bare receiver always gets the unbounded one")
    ap.add_argument("--invite-runs", type=int, default=5, help="INVITE runs per media transport")
    ap.add_argument("--streams", type=int, default=4, help="streams on each side in part 3")
    ap.add_argument("--media-transport", default="UDP", choices=["UDP", "TCP-passive", "TCP-active"],
                    help="the hub's GB media transport in part 3")
    ap.add_argument("--segment-s", type=float, default=None,
                    help="segment length on both sides in part 3 (default: the hub's gb28181.segment_seconds)")
    ap.add_argument("--media-warmup-s", type=float, default=5.0)
    ap.add_argument("--media-windows", type=int, default=3)
    ap.add_argument("--media-window-s", type=float, default=15.0)
    ap.add_argument("--clip-s", type=float, default=10.0, help="length of the looped 1080p clip")
    ap.add_argument("--work-dir", default="/tmp/vms-bench", help="clips are cached here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(threadName)s %(name)s: %(message)s")
        workers: dict[str, Callable[[Path], None]] = {
            "hub": hub_worker, "bare": bare_worker, "sender": sender_worker, "gbhub": gbhub_worker,
            "agent": agent_worker}
        workers[args.worker](Path(args.work))
        return

    import logging

    logging.basicConfig(level=logging.ERROR)
    from camsim.clips import ClipParams, ensure_clip

    parts = {int(x) for x in args.parts.split(",") if x}
    print("command: " + shlex.join([os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT))
                                    else sys.executable, os.path.relpath(__file__, ROOT), *sys.argv[1:]]))
    print(f"GB/T 28181 bench on {os.cpu_count()} cores; CPU from each process's own CPU clocks (all threads, "
          f"or one thread's); ratios within this run; load average {os.getloadavg()[0]:.1f} at the start",
          flush=True)
    work = Path(args.work_dir) / "gb28181"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params = ClipParams(width=1920, height=1080, fps=25, gop_s=2.0, bitrate_kbps=4000, bframes=0,
                        duration_s=args.clip_s)
    clip: Path | None = None
    if parts & {2, 3}:
        if shutil.which("ffmpeg") is None and 3 in parts:
            sys.exit("ffmpeg CLI not found")
        t0 = time.monotonic()
        clip = ensure_clip(params, "normal", Path(args.work_dir) / "clips")
        if time.monotonic() - t0 > 1:
            print(f"made the 1080p clip in {time.monotonic() - t0:.0f} s", flush=True)
    rows: list[tuple[str, str, str, str]] = []
    try:
        if 1 in parts:
            rows += part_keepalives(args, work)
        if 2 in parts:
            assert clip is not None
            rows += part_invite(args, work, clip)
        if 3 in parts:
            assert clip is not None
            rows += part_media(args, work, clip, params)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if rows:
        print_table(rows)
        print(f"load average {os.getloadavg()[0]:.1f} at the end (the machine may be shared: CPU is per process)")


if __name__ == "__main__":
    main()
