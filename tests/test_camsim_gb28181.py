"""Simulated GB/T 28181 devices (camsim/gb28181.py) against real peers on loopback.

Signaling against the hub's own SIP server (UDP and TCP): a camera and an NVR register (digest),
report their channels, stay online by their keepalives and fall silent on a network cut. Media
against a small center of the test's own (a UDP SIP socket that INVITEs, and a UDP socket, a TCP
listener or a TCP connector receiving RTP): the PS in the RTP is read back by FFmpeg's ``mpeg``
demuxer and decoded.
"""

from __future__ import annotations

import itertools
import json
import queue
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from camsim.clips import ClipParams, ensure_clip
from camsim.gb28181 import GbChannel, GbDevice, GbDeviceSpec, GbServer, RecordAsk
from camsim.gb_media import FINISHED, RtpSender, Target, load_clip
from camsim.gb_records import Recording, local_time, parse_local
from camsim.net import free_port
from camsim.sim import Simulator
from tests.conftest import hub_config, wait_until
from vms.config import Gb28181Config, HubConfig
from vms.gb28181 import manscdp, sdp, sip
from vms.hub import Hub
from vms.media import rtp
from vms.media.ps import stream_types
from vms.media.sender import BURST_S

SERVER_ID = "32058500002000000001"
DOMAIN = SERVER_ID[:10]
PASSWORD = "gb-secret"
IPC = "32058501001320000101"
IPC_CHANNEL = "32058501001310000101"
NVR = "32058502001180000201"
NVR_CHANNELS = [f"3205850200131000{n:04d}" for n in range(201, 206)]
CLIP = ClipParams(width=320, height=180, fps=25, gop_s=1.0, bitrate_kbps=300, bframes=0, duration_s=2.0)
#: The hub inviting accepted channels itself is not what these tests are about: off where the option exists.
NO_RECORD = {"record": False} if "record" in Gb28181Config.model_fields else {}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_clip(CLIP, "normal", tmp_path_factory.mktemp("gbclip"))


@pytest.fixture
def make_hub(tmp_path: Path) -> Iterator[Any]:
    made: list[Hub] = []

    def make(**gb: Any) -> Hub:
        section = {"enabled": True, "server_id": SERVER_ID, "port": free_port(), "password": PASSWORD,
                   "auto_accept": True, "keepalive_interval_s": 5, "keepalive_misses": 1, "catalog_timeout_s": 5,
                   **NO_RECORD, **gb}
        # Back online after 1 s of steady signal (3 s by default), evaluated twice a second: shorter tests.
        hub = Hub(HubConfig.model_validate(hub_config(tmp_path / f"data{len(made)}", gb28181=section,
                                                      health={"recover_after_s": 1.0, "tick_s": 0.5})))
        hub.start()
        made.append(hub)
        return hub

    yield make
    for h in made:
        h.stop()


def ipc_spec(server: GbServer, transport: str = "UDP", **kw: Any) -> GbDeviceSpec:
    return GbDeviceSpec(IPC, server, PASSWORD, (GbChannel(IPC_CHANNEL, "东门 枪机", 121.1, 31.45),),
                        name="东门", transport=transport, keepalive_s=1.0, clip=CLIP, **kw)


def nvr_spec(server: GbServer, transport: str = "UDP", **kw: Any) -> GbDeviceSpec:
    chans = tuple(GbChannel(c, f"沙溪 {i + 1} 号", 121.05 + i / 1000, 31.55) for i, c in enumerate(NVR_CHANNELS))
    return GbDeviceSpec(NVR, server, PASSWORD, chans, name="沙溪 NVR", transport=transport, keepalive_s=1.0,
                        clip=CLIP, **kw)


def state(hub: Hub, device_id: str) -> str:
    return hub.snapshots.device(device_id).state if hub.registry.known(device_id) else "absent"


def discovered(hub: Hub) -> dict[str, Any]:
    from sqlalchemy import select

    from vms.db.models import DiscoveredCamera

    with hub.sessions() as s:
        return {r.device_id: r for r in s.scalars(select(DiscoveredCamera))}


# --------------------------------------------------------------------------- signaling against the hub


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_camera_and_nvr_register_stay_online_and_fall_silent_on_a_network_cut(
    make_hub: Any, clip: Path, tmp_path: Path, transport: str
) -> None:
    hub = make_hub(min_expires_s=10)
    server = GbServer("127.0.0.1", hub.cfg.gb28181.port, SERVER_ID)
    # The camera registers for 10 s only: it must refresh its registration (at 8 s) to stay.
    sim = Simulator([], tmp_path / "sim", gb_devices=[ipc_spec(server, transport, expires_s=10),
                                                      nvr_spec(server, transport)],
                    gb_control_port=free_port(), params=CLIP)
    all_ids = [IPC, IPC_CHANNEL, NVR, *NVR_CHANNELS]
    with sim:
        assert hub.gb28181 is not None
        svc = hub.gb28181

        def channels() -> dict[str, set[str]]:
            return {r.device_id: set(r.channels) for r in svc.registrations_now()}

        wait_until(lambda: channels() == {IPC: {IPC_CHANNEL}, NVR: set(NVR_CHANNELS)}, 10,
                   "both devices registered with all their channels", lambda: str(channels()))
        wait_until(lambda: set(all_ids) <= set(discovered(hub)), 5, "all of them among the discovered cameras")
        rows = discovered(hub)
        assert rows[IPC_CHANNEL].name == "东门 枪机" and rows[NVR_CHANNELS[4]].name == "沙溪 5 号"
        assert svc.counters["catalog_incomplete"] == 0
        # DeviceInfo is asked after the catalog and kept with the registration.
        wait_until(lambda: all(r.info.get("Manufacturer") for r in svc.registrations_now()), 5, "DeviceInfo kept",
                   lambda: str([r.info for r in svc.registrations_now()]))
        # The devices count through their channels, not themselves as well (one camera, one count).
        wait_until(lambda: hub.snapshots.center("taicang")["counts"]["devices"] == 1 + len(NVR_CHANNELS), 5,
                   "channels counted, not their carriers", lambda: str(hub.snapshots.center("taicang")["counts"]))
        wait_until(lambda: all(state(hub, d) == "online" for d in all_ids), 10, "all online",
                   lambda: str({d: state(hub, d) for d in all_ids}))
        # Longer than the hub's silence limit (5 s): only the keepalives keep them online.
        time.sleep(5.5)
        assert {d: state(hub, d) for d in all_ids} == dict.fromkeys(all_ids, "online")
        assert sim.gb[NVR].counters["keepalives"] >= 5 and sim.gb[NVR].counters["registrations"] == 1

        # The NVR's network goes: the hub sees it and its channels fall silent; the camera stays.
        assert sim.gb_control_url is not None
        req = urllib.request.Request(f"{sim.gb_control_url}/cameras/{NVR}/fault", method="POST",
                                     data=json.dumps({"kind": "network_cut"}).encode())
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert {r["fault"] for r in json.loads(resp.read())} == {"network_cut"}
        cut = time.monotonic()
        time.sleep(0.2)  # a keepalive answered just before the cut is counted
        sent = sim.gb[NVR].counters["keepalives"]
        nvr_ids = [NVR, *NVR_CHANNELS]
        wait_until(lambda: all(state(hub, d) == "offline" for d in nvr_ids), 9, "the NVR and its channels offline",
                   lambda: str({d: state(hub, d) for d in nvr_ids}))
        if transport == "TCP":  # the closed connection is a goodbye: the next tick, not the silence limit
            assert time.monotonic() - cut < 3.0
            assert NVR not in channels()
        assert state(hub, IPC) == "online" and state(hub, IPC_CHANNEL) == "online"
        assert sim.gb[NVR].counters["keepalives"] == sent, "nothing leaves a cut device"

        sim.set_fault(NVR, "clear")
        wait_until(lambda: all(state(hub, d) == "online" for d in nvr_ids), 9, "the NVR back online",
                   lambda: str({d: state(hub, d) for d in nvr_ids}))
        assert state(hub, IPC) == "online" and sim.gb[IPC].counters["registrations"] >= 2
        # Refreshes from the same address are no new registrations; a new TCP connection is one.
        assert svc.counters["registered"] == (2 if transport == "UDP" else 3)


def test_video_lost_and_back_are_told_by_catalog_notifications(make_hub: Any, clip: Path) -> None:
    hub = make_hub(keepalive_interval_s=60, keepalive_misses=3)
    server = GbServer("127.0.0.1", hub.cfg.gb28181.port, SERVER_ID)
    with GbDevice(nvr_spec(server), clip) as nvr:
        wait_until(lambda: all(state(hub, d) == "online" for d in [NVR, *NVR_CHANNELS]), 10, "NVR online")
        nvr.video_stop(NVR_CHANNELS[1])
        wait_until(lambda: state(hub, NVR_CHANNELS[1]) == "offline", 5, "channel 2 offline on VLOST")
        assert state(hub, NVR) == "online" and state(hub, NVR_CHANNELS[0]) == "online"
        nvr.clear(NVR_CHANNELS[1])
        wait_until(lambda: state(hub, NVR_CHANNELS[1]) == "online", 8, "channel 2 online on ON")
        assert nvr.counters["notifies"] == 2


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
def test_registers_again_when_the_center_forgot_it_with_a_sha256_challenge(
    make_hub: Any, clip: Path, transport: str
) -> None:
    first = make_hub()
    port = first.cfg.gb28181.port
    server = GbServer("127.0.0.1", port, SERVER_ID)
    with GbDevice(ipc_spec(server, transport), clip) as ipc:
        wait_until(lambda: ipc.registered and ipc.counters["keepalives"] >= 1, 10, "registered and keeping alive")
        first.stop()
        second = make_hub(port=port, digest_algorithm="SHA-256")  # a restarted center knows nothing of it
        assert second.gb28181 is not None
        svc = second.gb28181
        wait_until(lambda: any(r.device_id == IPC for r in svc.registrations_now()), 10,
                   "registered with the new center (after its keepalive was answered 404, or its TCP closed)")
        # The center keeps the registration before its 200 reaches the device: wait for the device's count.
        wait_until(lambda: ipc.counters["registrations"] >= 2, 5, "the device counts the second registration",
                   lambda: str(ipc.counters))
        assert ipc.counters["registrations"] == 2
        assert svc.counters["bad_password"] == 0


# --------------------------------------------------------------------------- media against the test's own center


class Center:
    """A bare SIP peer on UDP standing in for the center: answers what the device sends with 200,
    keeps what it got, and sends the test's own requests to the device."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.server = GbServer("127.0.0.1", self.port, SERVER_ID)
        self.device: tuple[str, int] | None = None
        self.requests: queue.Queue[sip.Request] = queue.Queue()
        self.responses: queue.Queue[sip.Response] = queue.Queue()
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            msg = sip.parse(data)
            if isinstance(msg, sip.Response):
                self.responses.put(msg)
                continue
            self.seen.append(msg.method)
            if msg.method == "REGISTER":
                self.device = addr
            resp = sip.response_to(msg, 200, to_tag=sip.new_tag())
            if msg.method == "REGISTER":
                resp.headers.set("Expires", msg.headers.get("Expires") or "3600")
            self.sock.sendto(sip.serialize(resp), addr)
            self.requests.put(msg)

    def wait_request(self, method: str, body_has: bytes = b"", timeout: float = 5.0) -> sip.Request:
        deadline = time.monotonic() + timeout
        while True:
            req = self.requests.get(timeout=max(0.01, deadline - time.monotonic()))
            if req.method == method and body_has in req.body:
                return req

    def response(self, timeout: float = 5.0) -> sip.Response:
        return self.responses.get(timeout=timeout)

    def send(self, req: sip.Request) -> None:
        assert self.device is not None
        self.sock.sendto(sip.serialize(req), self.device)

    def request(self, method: str, target: str, *, call_id: str, cseq: int, from_tag: str, to_tag: str = "",
                body: bytes = b"", content_type: str | None = None) -> sip.Request:
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/UDP 127.0.0.1:{self.port};rport;branch={sip.new_branch()}")
        h.set("From", f"<sip:{SERVER_ID}@{DOMAIN}>;tag={from_tag}")
        h.set("To", f"<sip:{target}@{DOMAIN}>" + (f";tag={to_tag}" if to_tag else ""))
        h.set("Call-ID", call_id)
        h.set("CSeq", f"{cseq} {method}")
        h.set("Contact", f"<sip:{SERVER_ID}@127.0.0.1:{self.port}>")
        if content_type:
            h.set("Content-Type", content_type)
        assert self.device is not None
        return sip.Request(method, f"sip:{target}@{self.device[0]}:{self.device[1]}", h, body)

    def query(self, cmd: str, device_id: str, sn: int, **fields: str) -> None:
        body = manscdp.build("Query", cmd, sn, device_id, fields)
        req = self.request("MESSAGE", device_id, call_id=sip.new_call_id(), cseq=sn, from_tag=sip.new_tag(),
                           body=body, content_type="Application/MANSCDP+xml")
        self.send(req)
        assert self.response().status == 200


@pytest.fixture
def center() -> Iterator[Center]:
    c = Center()
    yield c
    c.close()


class Receiver:
    """Where the test receives RTP: a UDP socket, a TCP listener (offer setup:passive) or a TCP
    connector (offer setup:active, connecting to the device's answered port)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        kind = socket.SOCK_DGRAM if mode == "UDP" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        if mode == "TCP-passive":
            self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.conn: socket.socket | None = self.sock if mode == "UDP" else None
        self.deframer = rtp.TcpDeframer()

    def offer(self, ssrc: str, session: str = "Play", **extra: Any) -> bytes:
        """The center's SDP offer; ``extra``: more Sdp fields (a playback's times, uri, download speed)."""
        tcp = self.mode != "UDP"
        setup = {"TCP-passive": "passive", "TCP-active": "active"}.get(self.mode)
        return sdp.build(sdp.Sdp(session, SERVER_ID, "127.0.0.1", self.port, "TCP" if tcp else "UDP", "recvonly",
                                 setup=setup, ssrc=ssrc,
                                 payloads=((96, "PS/90000"), (98, "H264/90000"), (97, "MPEG4/90000")), **extra))

    def open(self, answer: sdp.Sdp) -> None:
        if self.mode == "TCP-passive":
            self.sock.settimeout(5)
            self.conn, _ = self.sock.accept()
        elif self.mode == "TCP-active":
            self.sock.settimeout(5)
            self.sock.connect((answer.address, answer.port))
            self.conn = self.sock

    def packets(self, seconds: float) -> list[rtp.RtpPacket]:
        assert self.conn is not None
        out: list[rtp.RtpPacket] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.conn.settimeout(left)
            try:
                data = self.conn.recv(65536)
            except TimeoutError:
                break
            if self.mode == "UDP":
                out.append(rtp.parse(data))
            elif not data:
                break
            else:
                out += [rtp.parse(p) for p in self.deframer.feed(data)]
        return out

    def close(self) -> None:
        for s in {self.sock, self.conn}:
            if s is not None:
                s.close()


def play(center: Center, rx: Receiver, channel: str, ssrc: str = "0585000042",
         offer: bytes | None = None) -> tuple[sdp.Sdp, dict[str, str]]:
    """INVITE (live, or with ``offer``), 200 with the device's SDP, ACK; returns the answer and what a BYE needs."""
    call_id, tag = sip.new_call_id(), sip.new_tag()
    invite = center.request("INVITE", channel, call_id=call_id, cseq=1, from_tag=tag, body=offer or rx.offer(ssrc),
                            content_type="APPLICATION/SDP")
    invite.headers.set("Subject", f"{channel}:{ssrc},{SERVER_ID}:0")
    center.send(invite)
    ok = center.response()
    assert ok.status == 200, ok
    to_tag = sip.parse_name_addr(ok.headers.get("To") or "").tag or ""
    center.send(center.request("ACK", channel, call_id=call_id, cseq=1, from_tag=tag, to_tag=to_tag))
    answer = sdp.parse(ok.body)
    rx.open(answer)
    return answer, {"call_id": call_id, "from_tag": tag, "to_tag": to_tag}


def frames_of(packets: list[rtp.RtpPacket]) -> list[bytes]:
    """RTP payloads joined into frames at the marker bit (packets in order: loopback)."""
    frames: list[bytes] = []
    parts: list[bytes] = []
    for p in packets:
        parts.append(p.payload)
        if p.marker:
            frames.append(b"".join(parts))
            parts = []
    return frames


def decode_ps(path: Path) -> tuple[str, int, int, list[float]]:
    """(codec, packets, decoded frames, the packets' PTS in seconds) through FFmpeg's own mpeg demuxer."""
    with av.open(str(path), format="mpeg") as c:
        stream = c.streams.video[0]
        ctx = stream.codec_context
        ctx.options = {"err_detect": "explode"}
        packets = decoded = 0
        pts: list[float] = []
        for pkt in c.demux(video=0):
            if pkt.size:
                packets += 1
                decoded += len(pkt.decode())
                if pkt.pts is not None and stream.time_base is not None:
                    pts.append(float(pkt.pts * stream.time_base))
        decoded += len(ctx.decode(None))
        return ctx.name, packets, decoded, pts


@pytest.mark.parametrize("mode", ["UDP", "TCP-passive", "TCP-active"])
def test_invited_channel_streams_ps_over_rtp_that_ffmpeg_decodes(
    center: Center, clip: Path, tmp_path: Path, mode: str
) -> None:
    rx = Receiver(mode)
    with GbDevice(nvr_spec(center.server), clip) as nvr:
        wait_until(lambda: nvr.registered, 5, "registered with the test's center")
        answer, dialog = play(center, rx, NVR_CHANNELS[2])
        assert (answer.direction, answer.ssrc, answer.transport) == ("sendonly", "0585000042", mode[:3])
        assert answer.payloads == ((96, "PS/90000"),) and answer.user == NVR_CHANNELS[2]
        if mode != "UDP":
            assert answer.setup == {"TCP-passive": "active", "TCP-active": "passive"}[mode]
        t0 = time.monotonic()
        packets = rx.packets(2.6)  # longer than the 2 s clip: timestamps must run on across its loop
        elapsed = time.monotonic() - t0

        assert packets and {(p.payload_type, p.ssrc) for p in packets} == {(96, 585000042)}
        assert all(len(p.payload) <= 1400 for p in packets)
        assert [(b.seq - a.seq) % 65536 for a, b in itertools.pairwise(packets)] == [1] * (len(packets) - 1)
        frames = frames_of(packets)
        stamps = [p.timestamp for p in packets if p.marker]
        assert [(b - a) % 2**32 for a, b in itertools.pairwise(stamps)] == [3600] * (len(stamps) - 1)
        # Paced in real time, frames due within BURST_S sent together.
        assert 0.6 * 25 * elapsed <= len(frames) <= 25 * (elapsed + BURST_S) + 3, "paced in real time"
        assert frames[0].startswith(b"\x00\x00\x01\xba") and stream_types(frames[0], verify_crc=True) == {0xE0: 0x1B}
        path = tmp_path / "got.ps"
        path.write_bytes(b"".join(frames))
        codec, n_packets, decoded, _ = decode_ps(path)
        assert codec == "h264" and n_packets == len(frames) and decoded == len(frames)

        # The center hangs up: 200, and the stream stops.
        center.send(center.request("BYE", NVR_CHANNELS[2], call_id=dialog["call_id"], cseq=2,
                                   from_tag=dialog["from_tag"], to_tag=dialog["to_tag"]))
        assert center.response().status == 200
        wait_until(lambda: not nvr.streams(), 2, "the stream ended")
        rx.packets(0.3)  # what was in flight
        assert rx.packets(0.5) == []
    rx.close()


def test_faults_and_the_devices_own_bye(center: Center, clip: Path) -> None:
    rx = Receiver("UDP")
    with GbDevice(ipc_spec(center.server), clip) as ipc:
        wait_until(lambda: ipc.registered, 5, "registered")
        play(center, rx, IPC_CHANNEL)
        assert rx.packets(0.5)

        ipc.garbage()
        rx.packets(0.2)
        junk = frames_of(rx.packets(0.6))
        assert junk and not any(f.startswith(b"\x00\x00\x01\xba") for f in junk), "random payloads, no PS"

        ipc.video_stop()
        notify = center.wait_request("MESSAGE", b"VLOST")
        assert manscdp.catalog_items(manscdp.parse(notify.body))[0].device_id == IPC_CHANNEL
        rx.packets(0.2)
        keepalives = center.seen.count("MESSAGE")
        assert rx.packets(1.2) == [], "no RTP while the video is stopped"
        assert center.seen.count("MESSAGE") > keepalives, "keepalives go on"

        ipc.clear()
        center.wait_request("MESSAGE", b"<Event>ON</Event>")
        frames = frames_of(rx.packets(1.5))
        assert frames and b"\x00\x00\x01\xbc" in frames[0], "it resumes at a keyframe (with the PSM)"

        ipc.network_cut()
        rx.packets(0.2)
        before = len(center.seen)
        center.send(center.request("MESSAGE", IPC, call_id=sip.new_call_id(), cseq=5, from_tag="q",
                                   body=manscdp.build("Query", "DeviceInfo", 5, IPC),
                                   content_type="Application/MANSCDP+xml"))
        assert rx.packets(1.5) == [] and len(center.seen) == before, "nothing leaves a cut device"
        with pytest.raises(queue.Empty):
            center.response(0.1)  # not even the answer to a query
        ipc.clear()
        center.wait_request("MESSAGE", b"Keepalive")

        play(center, rx, IPC_CHANNEL, ssrc="0585000043")
        assert {p.ssrc for p in rx.packets(0.5)} == {585000043}
        assert ipc.hang_up() == 1
        bye = center.wait_request("BYE")
        assert sip.uri_user(sip.parse_name_addr(bye.headers.get("From") or "").uri) == IPC_CHANNEL
        rx.packets(0.3)
        assert rx.packets(0.5) == []
    rx.close()


def test_catalog_device_info_and_status_answers(center: Center, clip: Path) -> None:
    with GbDevice(nvr_spec(center.server), clip) as nvr:
        wait_until(lambda: nvr.registered, 5, "registered")
        center.query("Catalog", NVR, 77)
        parts = [manscdp.parse(center.wait_request("MESSAGE", b"<CmdType>Catalog</CmdType>").body) for _ in range(3)]
        assert [(m.root, m.sn, m.sum_num, m.list_num) for m in parts] == [("Response", 77, 5, 2),
                                                                          ("Response", 77, 5, 2),
                                                                          ("Response", 77, 5, 1)]
        items = [it for m in parts for it in manscdp.catalog_items(m)]
        assert [it.device_id for it in items] == NVR_CHANNELS
        assert {(it.parent_id, it.status, it.civil_code) for it in items} == {(NVR, "ON", NVR[:8])}
        assert items[0].longitude == pytest.approx(121.05) and items[0].latitude == pytest.approx(31.55)
        center.query("DeviceInfo", NVR, 78)
        info = manscdp.parse(center.wait_request("MESSAGE", b"DeviceInfo").body)
        assert info.fields["Channel"] == "5" and info.fields["Result"] == "OK"
        nvr.video_stop(NVR_CHANNELS[0])
        center.query("DeviceStatus", NVR_CHANNELS[0], 79)
        status = manscdp.parse(center.wait_request("MESSAGE", b"<CmdType>DeviceStatus").body)
        assert (status.device_id, status.fields["Online"], status.fields["Encode"]) == (NVR_CHANNELS[0], "ONLINE",
                                                                                         "OFF")
        # An INVITE for a channel it does not have, or for a playback without a time range, is refused.
        rx = Receiver("UDP")
        for channel, body in ((NVR_CHANNELS[0][:-1] + "9", rx.offer("0585000001")),
                              (NVR_CHANNELS[1], rx.offer("0585000001").replace(b"s=Play", b"s=Playback"))):
            center.send(center.request("INVITE", channel, call_id=sip.new_call_id(), cseq=1, from_tag="x",
                                       body=body, content_type="APPLICATION/SDP"))
            assert center.response().status in (404, 488)
        rx.close()


# --------------------------------------------------------------------------- recordings


def test_recording_intervals_and_files() -> None:
    """Files are cut on the minute and clipped to the asked range; the future is not recorded yet."""
    rec = Recording(600.4)
    assert rec.files(630, 790, now=1000.0) == [(630, 660), (660, 720), (720, 780), (780, 790)]
    assert rec.files(500, 700, now=600.6) == [(600, 601)], "a moment old, and listed"
    rec.stop(699.2)
    rec.stop(750.0)  # stopped already: nothing changes
    rec.resume(800.7)
    assert rec.recording and rec.spans(0, 2000, now=900.5) == [(600, 700), (800, 900.5)]
    assert rec.files(650, 820, now=810.0) == [(650, 660), (660, 700), (800, 810)]
    assert rec.files(0, 600, now=900.0) == [] and rec.recording
    rec.stop(901.2)
    rec.resume(901.9)  # within the second it stopped: one interval
    assert rec.spans(850, 950, now=950.0) == [(850, 950)]
    none = Recording(None)
    none.resume(10.0)
    assert not none.capable and not none.recording and none.spans(0, 100, 100) == []
    t = 1_796_544_000  # whole seconds survive the round trip through the standard's local time
    assert parse_local(local_time(t)) == t and "+" not in local_time(t) and "Z" not in local_time(t)


def test_record_info_lists_the_recorded_files_of_the_asked_range(center: Center, clip: Path) -> None:
    minute = int(time.time()) // 60 * 60 - 600
    a = minute + 20  # 20 s past a minute, 10 min ago: files of 40, 60 and 50 s
    spec = nvr_spec(center.server, recording_since=minute - 3600.0)
    with GbDevice(spec, clip) as nvr, GbDevice(ipc_spec(center.server, records=False), clip) as ipc:
        wait_until(lambda: nvr.registered and ipc.registered, 5, "registered")
        center.device = nvr.local_address
        center.query("RecordInfo", NVR_CHANNELS[1], 90, StartTime=local_time(a), EndTime=local_time(a + 150),
                     Secrecy="0", Type="all")
        parts = [manscdp.parse(center.wait_request("MESSAGE", b"<SN>90</SN>").body) for _ in range(2)]
        assert [(m.root, m.cmd, m.device_id, m.sum_num, m.list_num) for m in parts] == [
            ("Response", "RecordInfo", NVR_CHANNELS[1], 3, 2), ("Response", "RecordInfo", NVR_CHANNELS[1], 3, 1)]
        assert parts[0].fields["Name"] == "沙溪 2 号"
        items = [it for m in parts for it in m.items]
        assert [(it["StartTime"], it["EndTime"]) for it in items] == [
            (local_time(a), local_time(minute + 60)), (local_time(minute + 60), local_time(minute + 120)),
            (local_time(minute + 120), local_time(a + 150))]
        assert {(it["DeviceID"], it["Type"], it["Secrecy"]) for it in items} == {(NVR_CHANNELS[1], "time", "0")}
        assert len({it["FilePath"] for it in items}) == 3 and all(it["Name"] and it["Address"] for it in items)

        # Named, the NVR answers for all its channels; before the recording began there is nothing
        # (SumNum 0, no list); neither has an IPC without storage.
        center.query("RecordInfo", NVR, 91, StartTime=local_time(a), EndTime=local_time(a + 10))
        whole = [manscdp.parse(center.wait_request("MESSAGE", b"<SN>91</SN>").body) for _ in range(3)]
        assert [it["DeviceID"] for m in whole for it in m.items] == NVR_CHANNELS
        for dev, channel, sn, since in ((nvr, NVR_CHANNELS[0], 92, minute - 7200), (ipc, IPC_CHANNEL, 93, a)):
            center.device = dev.local_address
            center.query("RecordInfo", channel, sn, StartTime=local_time(since), EndTime=local_time(since + 150))
            empty = center.wait_request("MESSAGE", f"<SN>{sn}</SN>".encode())
            assert manscdp.parse(empty.body).sum_num == 0 and b"RecordList" not in empty.body
        assert nvr.counters["record_queries"] == 3 and ipc.counters["record_queries"] == 1
        assert [(q.kind, q.channel, q.start, q.end, q.answer) for q in nvr.record_asks[:1]] == [
            ("RecordInfo", NVR_CHANNELS[1], a, a + 150, "3 items")]

        # Lost video and a cut network break the way to the center, not the recording; record_stop does.
        def recording(channel: str) -> bool:
            return bool(next(r for r in nvr.describe() if r["device_id"] == channel)["recording"])

        nvr.video_stop(NVR_CHANNELS[2])
        assert recording(NVR_CHANNELS[2])
        nvr.set_fault(NVR_CHANNELS[2], "record_stop")
        assert not recording(NVR_CHANNELS[2]) and recording(NVR_CHANNELS[3])
        nvr.clear(NVR_CHANNELS[2])
        assert recording(NVR_CHANNELS[2])


def receive_until_idle(rx: Receiver, idle: float, limit: float) -> tuple[list[rtp.RtpPacket], float]:
    """Packets until none came for ``idle`` s (or ``limit`` s passed), and when the last one came (±50 ms)."""
    out: list[rtp.RtpPacket] = []
    last = start = time.monotonic()
    while (now := time.monotonic()) - start < limit and now - last < idle:
        got = rx.packets(0.05)
        if got:
            out += got
            last = time.monotonic()
    return out, last


@pytest.mark.parametrize(("session", "seconds", "speed", "mode"),
                         [("Download", 6, 4, "UDP"), ("Playback", 2, 1, "TCP-active")])
def test_recording_is_sent_over_its_range_then_media_status(
    center: Center, clip: Path, tmp_path: Path, session: str, seconds: int, speed: int, mode: str
) -> None:
    rx = Receiver(mode)
    with GbDevice(nvr_spec(center.server, recording_since=time.time() - 600), clip) as nvr:
        wait_until(lambda: nvr.registered, 5, "registered")
        start = int(time.time()) - 120
        extra: dict[str, Any] = {"download_speed": speed} if session == "Download" else {}
        offer = rx.offer("1058500042", session, start=start, stop=start + seconds, uri=f"{NVR_CHANNELS[0]}:0", **extra)
        t0 = time.monotonic()
        answer, dialog = play(center, rx, NVR_CHANNELS[0], offer=offer)
        assert (answer.session, answer.direction, answer.ssrc) == (session, "sendonly", "1058500042")
        assert (answer.start, answer.stop) == (start, start + seconds)
        packets, last = receive_until_idle(rx, 0.5, seconds / speed + 3)
        assert seconds / speed - 0.3 <= last - t0 <= seconds / speed + 0.5, "paced at the asked speed"
        notify = center.wait_request("MESSAGE", b"MediaStatus", timeout=2)
        status = manscdp.parse(notify.body)
        assert (status.root, status.device_id, status.fields["NotifyType"]) == ("Notify", NVR_CHANNELS[0], "121")
        assert notify.headers.get("Call-ID") == dialog["call_id"]

        assert {(p.payload_type, p.ssrc) for p in packets} == {(96, 1058500042)}
        frames = frames_of(packets)
        assert frames[0].startswith(b"\x00\x00\x01\xba") and b"\x00\x00\x01\xbc" in frames[0], "keyframe first"
        assert len(frames) == seconds * 25
        path = tmp_path / "recording.ps"
        path.write_bytes(b"".join(frames))
        codec, n_packets, decoded, pts = decode_ps(path)
        assert (codec, n_packets, decoded) == ("h264", len(frames), len(frames))
        assert max(pts) - min(pts) + 1 / 25 == pytest.approx(seconds, abs=0.05), "the range's length of video"

        center.send(center.request("BYE", NVR_CHANNELS[0], call_id=dialog["call_id"], cseq=2,
                                   from_tag=dialog["from_tag"], to_tag=dialog["to_tag"]))
        assert center.response().status == 200
        wait_until(lambda: not nvr.streams(), 2, "the session ended")
        assert (nvr.counters["playbacks"], nvr.counters["media_status"]) == (1, 1)
        assert nvr.record_asks[-1] == RecordAsk(session, NVR_CHANNELS[0], start, start + seconds,
                                                speed if session == "Download" else 1, "200 OK")
    rx.close()


def test_playback_without_a_recording_is_refused(center: Center, clip: Path) -> None:
    rx = Receiver("UDP")
    since = time.time() - 60
    with GbDevice(nvr_spec(center.server, recording_since=since), clip) as nvr, \
            GbDevice(ipc_spec(center.server, records=False), clip) as ipc:
        wait_until(lambda: nvr.registered and ipc.registered, 5, "registered")
        before = int(since) - 100
        for dev, channel in ((nvr, NVR_CHANNELS[0]), (ipc, IPC_CHANNEL)):
            center.device = dev.local_address
            body = rx.offer("1058500043", "Playback", start=before, stop=before + 10, uri=f"{channel}:0")
            center.send(center.request("INVITE", channel, call_id=sip.new_call_id(), cseq=1, from_tag="p",
                                       body=body, content_type="APPLICATION/SDP"))
            resp = center.response()
            assert resp.status == 488
            assert dev.counters["playbacks"] == 0 and not dev.streams()
        assert nvr.record_asks[-1].answer == "488 no recording in the range"
        assert ipc.record_asks[-1].answer == "488 the device keeps no recordings"
    rx.close()


def test_a_recording_with_gaps_jumps_its_timestamps_and_restarts_at_a_keyframe(clip: Path) -> None:
    """Spans 0-1 s and 3-4 s of a range at 8x: 2 s of video in a quarter second, the PTS jumping 2 s."""
    rx = Receiver("UDP")
    ended: list[str] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = RtpSender("gaps", load_clip(clip), 7, sock, Target("127.0.0.1", rx.port, "UDP", True),
                       lambda: "send", ended.append, spans=[(0, 90_000), (270_000, 360_000)], speed=8)
    sender.start()
    sender.go.set()
    packets, _ = receive_until_idle(rx, 0.5, 3)
    wait_until(lambda: ended == [FINISHED], 2, "finished")
    assert sender.finished and not sender.stopped
    sender.stop()
    frames = frames_of(packets)
    stamps = [p.timestamp for p in packets if p.marker]
    steps = [(b - a) % 2**32 for a, b in itertools.pairwise(stamps)]
    assert len(frames) == 50 and steps == [3600] * 24 + [3600 + 180_000] + [3600] * 24
    assert b"\x00\x00\x01\xbc" in frames[25], "the second span starts with a keyframe"
    rx.close()


# --------------------------------------------------------------------------- the demo


def test_the_demo_runs_a_gb_camera_and_nvr_that_register_with_its_hub(tmp_path: Path, clip: Path) -> None:
    """``vms demo``'s configs: the hub's gb28181 section, demo.json's fields, and devices that get in."""
    from dataclasses import replace

    from vms.config import load
    from vms.demo import Demo

    demo = Demo(2, free_port(), tmp_path)
    info = demo.prepare()
    cfg = load(tmp_path / "hub.yaml")
    gb = info["gb28181"]
    assert set(gb) == {"host", "port", "server_id", "domain", "password"}
    assert (cfg.gb28181.enabled, cfg.gb28181.auto_accept, cfg.gb28181.port, cfg.gb28181.password) == (
        True, True, gb["port"], gb["password"])
    assert cfg.gb28181.server_id == gb["server_id"] and cfg.gb28181.realm == gb["domain"]
    assert [c["protocol"] for c in info["cameras"]] == ["rtsp"] * 2 + ["gb28181"] * 4
    channels = {c["device_id"] for c in info["cameras"] if c["protocol"] == "gb28181"}
    assert channels == {ch for d in demo.gb_devices for ch in d.stream_ids}

    cfg = cfg.model_copy(update={"gb28181": cfg.gb28181.model_copy(update=NO_RECORD)})
    hub = Hub(cfg)
    hub.start()
    devices = [GbDevice(replace(spec, keepalive_s=1.0, clip=CLIP), clip).start() for spec in demo.gb_devices]
    try:
        assert hub.gb28181 is not None
        svc = hub.gb28181
        wait_until(lambda: {c for r in svc.registrations_now() for c in r.channels} == channels, 10,
                   "the demo's GB devices registered with all channels")
        wait_until(lambda: channels <= set(discovered(hub)), 5, "the channels among the discovered cameras")
    finally:
        for dev in devices:
            dev.stop()
        hub.stop()
