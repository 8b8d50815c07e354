"""GB/T 28181 media end to end: the hub invites a registered channel, receives PS over RTP (UDP,
TCP passive, TCP active), records it through the agent's segmenter and ingest, and tells lost video
from a lost device within 10 s. The device is a small client here (signaling from
tests/test_gb28181_access.py, PS from vms.media.ps); the stored segments are read back by FFmpeg's
own demuxer. SIPp with FFmpeg-made PS is in tests/test_gb28181_sipp_media.py.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pytest

from camsim.clips import ClipParams, ensure_clip
from tests.conftest import wait_until
from tests.test_gb28181_access import CHANNEL, IPC, Device, gb_hub, item, port_of  # noqa: F401
from vms.gb28181 import manscdp, sdp, sip
from vms.media import ps, rtp

AU = tuple[bytes, int, int, bool]  # access unit, pts and dts (90 kHz), keyframe


def camera_clip(directory: Path, seconds: float = 4.0) -> list[AU]:
    """A street-like Baseline H.264 clip made now (the simulator's picture), 1 s GOP, as access units."""
    path = ensure_clip(ClipParams(width=320, height=180, duration_s=seconds, gop_s=1.0, bframes=0), "normal", directory)
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        assert v.time_base == Fraction(1, 90000)
        return [(bytes(p), int(p.pts), int(p.dts), p.is_keyframe) for p in c.demux(v) if p.size]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> list[AU]:
    return camera_clip(tmp_path_factory.mktemp("gb-clip"))


class MediaDevice:
    """A camera: registers, keeps alive, answers the catalog, DeviceStatus, INVITE and BYE, and
    streams the clip as PS over RTP to what the offer says, one stream per channel. Faults: ``video``
    off (keepalives go on), ``cut`` (nothing at all), ``garbage`` payloads, a ``foreign_ssrc``,
    ``reuse_ssrc`` (every answer after the first names the first one's SSRC)."""

    def __init__(self, port: int, clip: list[AU], transport: str = "UDP", keepalive_s: float = 2.0,
                 channels: tuple[str, ...] = (CHANNEL,)) -> None:
        self.sig = Device(port, transport=transport)
        self.clip = clip
        self.channels = channels
        self.keepalive_s = keepalive_s
        self.video = True
        self.cut = False
        self.garbage = False
        self.foreign_ssrc = False
        self.reuse_ssrc = False
        self.answered_ssrcs: list[str] = []
        self.refuse: int | None = None  # answer INVITEs with this status instead
        self.lossy = False  # drop one RTP packet in 40 and swap neighbours now and then
        self.dialog: tuple[sip.Request, str] | None = None  # the last INVITE answered and our tag
        self.invites: list[sdp.Sdp] = []
        self.invited_at: list[float] = []
        self._stream_stops: dict[str, threading.Event] = {}  # by channel
        self._calls: dict[str, str] = {}  # INVITE Call-ID -> channel
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def start(self) -> None:
        assert self.sig.register().status == 200
        self.sig.answer_catalog([{**item(ch, "东门"), "Longitude": "121.1183", "Latitude": "31.4556"}
                                 for ch in self.channels])
        for target in (self._signaling, self._keepalives):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        self._stop.set()
        for stop in self._stream_stops.values():
            stop.set()
        for t in self._threads:
            t.join(5)
        self.sig.close()

    def _send(self, msg: sip.Message) -> None:
        with self.lock:
            self.sig.send(msg)

    def _keepalives(self) -> None:
        sn = 100
        while not self._stop.wait(self.keepalive_s):
            if not self.cut:
                sn += 1
                self._send(self.sig.request("MESSAGE", body=manscdp.build("Notify", "Keepalive", sn, IPC,
                                                                          {"Status": "OK"})))

    def _signaling(self) -> None:
        while not self._stop.is_set():
            try:
                m = self.sig.recv(0.5)
            except (TimeoutError, OSError, sip.SipError):
                continue
            if not isinstance(m, sip.Request) or self.cut:
                continue
            if m.method == "INVITE":
                self._answer(m)
            elif m.method == "BYE":
                self._stop_stream(self._calls.get(m.headers.get("Call-ID") or "", ""))
                self._send(sip.response_to(m, 200))
            elif m.method != "ACK":
                self._send(sip.response_to(m, 200, to_tag=sip.new_tag()))

    def hang_up(self) -> None:
        """BYE in the dialog of the last INVITE, as a device whose media server restarts sends it."""
        assert self.dialog is not None
        invite, tag = self.dialog
        self._stop_stream(self._calls.get(invite.headers.get("Call-ID") or "", ""))
        h = sip.Headers()
        local = self.sig.sock.getsockname()
        h.set("Via", f"SIP/2.0/UDP {local[0]}:{local[1]};rport;branch={sip.new_branch()}")
        h.set("From", f"{invite.headers.get('To')};tag={tag}")
        h.set("To", invite.headers.get("From") or "")
        h.set("Call-ID", invite.headers.get("Call-ID") or "")
        h.set("CSeq", "1 BYE")
        h.set("Max-Forwards", "70")
        self._send(sip.Request("BYE", sip.parse_name_addr(invite.headers.get("Contact") or "").uri, h))

    def _stop_stream(self, channel: str) -> None:
        stop = self._stream_stops.get(channel)
        if stop is not None:
            stop.set()

    def _answer(self, invite: sip.Request) -> None:
        offer = sdp.parse(invite.body)
        channel = sip.uri_user(invite.uri)
        self.invites.append(offer)
        self.invited_at.append(time.monotonic())
        if self.refuse is not None:
            self._send(sip.response_to(invite, self.refuse, to_tag=sip.new_tag()))
            return
        listener: socket.socket | None = None
        port = 0
        if offer.setup == "active":  # the hub connects to us
            listener = socket.create_server(("127.0.0.1", 0))
            port = listener.getsockname()[1]
        ssrc = self.answered_ssrcs[0] if self.reuse_ssrc and self.answered_ssrcs else offer.ssrc
        self.answered_ssrcs.append(ssrc or "")
        answer = sdp.Sdp(session="Play", user=channel, address="127.0.0.1", port=port, transport=offer.transport,
                         direction="sendonly", ssrc=ssrc,
                         setup=None if offer.setup is None else ("passive" if offer.setup == "active" else "active"))
        tag = sip.new_tag()
        self.dialog = (invite, tag)
        resp = sip.response_to(invite, 200, to_tag=tag)
        local = self.sig.sock.getsockname()
        resp.headers.set("Contact", f"<sip:{channel}@{local[0]}:{local[1]}>")
        resp.headers.set("Content-Type", "application/sdp")
        resp.body = sdp.build(answer)
        self._stop_stream(channel)
        stop = self._stream_stops[channel] = threading.Event()
        self._calls[invite.headers.get("Call-ID") or ""] = channel
        self._send(resp)
        if ssrc != offer.ssrc:  # as such a device does: it streams under the SSRC it answered
            offer = dataclasses.replace(offer, ssrc=ssrc)
        t = threading.Thread(target=self._stream, args=(offer, listener, stop), daemon=True)
        t.start()
        self._threads.append(t)

    def _stream(self, offer: sdp.Sdp, listener: socket.socket | None, stop: threading.Event) -> None:
        if offer.transport == "UDP":
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

            def send(pkt: bytes) -> None:
                udp.sendto(pkt, (offer.address, offer.port))
        else:
            if listener is not None:
                listener.settimeout(5)
                conn, _ = listener.accept()
            else:
                conn = socket.create_connection((offer.address, offer.port), timeout=5)

            def send(pkt: bytes) -> None:
                conn.sendall(rtp.frame_tcp(pkt))
        packer = ps.PsPacker("h264")
        ssrc = int(offer.ssrc or "0") + (1 if self.foreign_ssrc else 0)
        seq, first, span = 0, self.clip[0][1], self.clip[-1][1] - self.clip[0][1] + 3600
        t0, loop = time.monotonic(), 0
        try:
            while not stop.is_set() and not self._stop.is_set():
                for au, pts, dts, key in self.clip:
                    pts, dts = pts + loop * span, dts + loop * span
                    delay = t0 + (pts - first) / 90000 - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if stop.is_set() or self._stop.is_set():
                        return
                    if self.cut or not self.video:
                        continue
                    payload = secrets.token_bytes(len(au)) if self.garbage else packer.pack(au, pts, dts, key)
                    pkts = rtp.packetize(payload, seq=seq, timestamp=pts & 0xFFFFFFFF, ssrc=ssrc)
                    seq = (seq + len(pkts)) & 0xFFFF
                    if self.lossy:
                        if seq % 40 < len(pkts):
                            pkts.pop(len(pkts) // 2)  # one lost
                        elif len(pkts) > 2:
                            pkts[0], pkts[1] = pkts[1], pkts[0]  # two out of order
                    for pkt in pkts:
                        send(pkt)
                loop += 1
        except OSError:
            pass  # the hub hung up the TCP connection


@pytest.fixture
def device(gb_hub: Any, clip: list[AU]) -> Iterator[Any]:  # noqa: F811  (the fixture imported above)
    made: list[MediaDevice] = []

    def make(transport: str = "UDP", keepalive_s: float = 2.0, channels: tuple[str, ...] = (CHANNEL,),
             **gb: Any) -> tuple[Any, MediaDevice]:
        hub = gb_hub(auto_accept=True, record=True, **gb)
        dev = MediaDevice(port_of(hub), clip, keepalive_s=keepalive_s, channels=channels)
        made.append(dev)
        dev.start()
        return hub, dev

    yield make
    for d in made:
        d.close()


def state(hub: Any, d: str) -> str:
    """offline / degraded / online (signal) / uploading (signal and media reaching the archive)."""
    return str(hub.snapshots.device(d).state) if hub.registry.known(d) else "absent"


def live(hub: Any, d: str) -> bool:
    return state(hub, d) in ("online", "uploading")


def stored(hub: Any, d: str) -> list[Path]:
    from sqlalchemy import select

    from vms.db.models import Segment

    with hub.sessions() as s:
        return [hub.segments.root / p for p in s.scalars(select(Segment.path).where(Segment.device_id == d))]


@pytest.mark.parametrize("mode", ["UDP", "TCP-passive", "TCP-active"])
def test_a_channel_is_invited_recorded_and_ffmpeg_reads_what_was_stored(device: Any, mode: str) -> None:
    hub, dev = device(media_transport=mode)
    wait_until(lambda: len(stored(hub, CHANNEL)) >= 2, 15, "two segments of the channel stored",
               lambda: str(hub.gb28181.player.view()))
    first_stored = time.monotonic()
    offer = dev.invites[0]
    assert offer.session == "Play" and offer.direction == "recvonly" and offer.ssrc is not None
    assert offer.ssrc.startswith("0" + CHANNEL[3:8]) and offer.payloads == ((96, "PS/90000"),)
    assert offer.transport == ("UDP" if mode == "UDP" else "TCP")
    assert first_stored - dev.invited_at[0] < 8  # two 2 s segments: the first one within about 2 s
    wait_until(lambda: state(hub, CHANNEL) == "uploading", 10, "channel uploading", lambda: state(hub, CHANNEL))
    for path in stored(hub, CHANNEL)[:2]:
        with av.open(str(path)) as c:  # FFmpeg's MPEG-TS demuxer and H.264 decoder
            v = c.streams.video[0]
            assert c.format.name == "mpegts" and v.codec_context.name == "h264"
            frames = sum(1 for _ in c.decode(v))
        assert frames >= 25, f"{path}: {frames} frames"
    view = hub.gb28181.player.view()[CHANNEL]
    assert view["state"] == "playing" and view["codec"] == "h264" and view["lost"] == 0
    assert len(dev.invites) == 1  # one INVITE while media flows
    # Stream figures measured on the hub, as an agent reports them: 25 fps, not "low_fps" at start.
    wait_until(lambda: hub.snapshots.device(CHANNEL).fps > 20, 10, "the channel's frame rate measured",
               lambda: str(hub.snapshots.device(CHANNEL)))
    assert "low_fps" not in hub.snapshots.device(CHANNEL).defects
    # The IPC reports its picture as a channel: the channel counts, the IPC (its carrier) does not.
    town = hub.snapshots.center("chengxiang")
    assert town["counts"]["devices"] == 1 and hub.registry.known(IPC), town["counts"]
    # Where the catalog says the channel stands reaches the map and the coverage.
    wait_until(lambda: "gb28181" in hub.coverage.places.get(CHANNEL, {}), 5, "the catalog's position kept")
    place = hub.coverage.places[CHANNEL]["gb28181"]
    assert (place.lon, place.lat) == (121.1183, 31.4556)


def test_lost_video_is_offline_within_10_s_while_keepalives_go_on_and_back_when_it_returns(device: Any) -> None:
    hub, dev = device(keepalive_interval_s=60, keepalive_misses=3)  # 180 s: keepalives cannot explain it
    wait_until(lambda: live(hub, CHANNEL), 15, "channel online", lambda: state(hub, CHANNEL))
    dev.video = False
    lost = time.monotonic()
    wait_until(lambda: state(hub, CHANNEL) == "offline", 10, "channel offline", lambda: state(hub, CHANNEL))
    took = time.monotonic() - lost
    assert took < 10, took
    time.sleep(3)
    assert live(hub, IPC)  # the device answers and keeps alive: only its video is lost
    assert len(dev.invites) >= 2  # the hub invites again
    dev.video = True
    wait_until(lambda: live(hub, CHANNEL), 20, "channel online again", lambda: state(hub, CHANNEL))


def test_a_cut_network_makes_device_and_channel_offline_within_10_s(device: Any) -> None:
    hub, dev = device(keepalive_interval_s=60, keepalive_misses=3)
    wait_until(lambda: live(hub, CHANNEL) and live(hub, IPC), 15, "both online",
               lambda: f"{state(hub, IPC)} {state(hub, CHANNEL)}")
    dev.cut = True
    cut = time.monotonic()
    wait_until(lambda: state(hub, CHANNEL) == "offline" and state(hub, IPC) == "offline", 10, "both offline",
               lambda: f"{state(hub, IPC)} {state(hub, CHANNEL)} {hub.gb28181.counters}")
    assert time.monotonic() - cut < 10
    assert hub.gb28181.counters["probes_unanswered"] >= 1
    dev.cut = False  # its next keepalive is heard, the hub invites again
    wait_until(lambda: live(hub, CHANNEL) and live(hub, IPC), 30, "both online again",
               lambda: f"{state(hub, IPC)} {state(hub, CHANNEL)} {hub.gb28181.player.view()}")


@pytest.mark.parametrize("fault", ["garbage", "foreign_ssrc"])
def test_garbage_ps_or_a_foreign_ssrc_is_never_video(device: Any, fault: str) -> None:
    hub, dev = device()
    setattr(dev, fault, True)
    wait_until(lambda: len(dev.invites) >= 2, 20, "the hub hangs up and invites again",
               lambda: str(hub.gb28181.player.view()))
    view = hub.gb28181.player.view()[CHANNEL]
    assert state(hub, CHANNEL) != "online" and not stored(hub, CHANNEL)
    if fault == "foreign_ssrc":
        assert "SSRC" in view["reason"] or view["ssrc_mismatch"] > 0, view
    else:
        assert "no video" in view["reason"] or "program stream" in view["reason"], view
    setattr(dev, fault, False)
    wait_until(lambda: live(hub, CHANNEL), 30, "online once real video comes",
               lambda: str(hub.gb28181.player.view()))


def test_a_device_that_hangs_up_or_refuses_is_invited_again_with_backoff(device: Any) -> None:
    hub, dev = device()
    wait_until(lambda: live(hub, CHANNEL), 15, "channel online", lambda: state(hub, CHANNEL))
    dev.hang_up()
    wait_until(lambda: len(dev.invites) >= 2, 10, "a new INVITE after the device's BYE",
               lambda: str(hub.gb28181.player.view()))
    assert hub.gb28181.player.counters["device_hangups"] == 1
    wait_until(lambda: hub.gb28181.player.view()[CHANNEL]["state"] == "playing", 10, "playing again")
    dev.refuse = 488
    dev.hang_up()
    wait_until(lambda: len(dev.invites) >= 5, 20, "INVITEs again while refused", lambda: str(dev.invited_at))
    gaps = [b - a for a, b in zip(dev.invited_at[2:], dev.invited_at[3:], strict=False)]
    assert gaps == sorted(gaps) and gaps[-1] > 1.5, gaps  # 1 s, 2 s, 4 s ...: backing off
    view = hub.gb28181.player.view()[CHANNEL]
    assert "488" in view["reason"] and view["failures"] >= 3
    assert not live(hub, CHANNEL)
    dev.refuse = None
    wait_until(lambda: live(hub, CHANNEL), 30, "online once the device answers again", lambda: str(view))


def test_lost_and_reordered_packets_are_counted_and_recording_goes_on(device: Any) -> None:
    hub, dev = device()
    dev.lossy = True
    wait_until(lambda: len(stored(hub, CHANNEL)) >= 3, 20, "segments stored despite losses",
               lambda: str(hub.gb28181.player.view()))
    view = hub.gb28181.player.view()[CHANNEL]
    assert view["lost"] > 0 and view["frames"] > 50, view
    assert len(dev.invites) == 1  # damaged frames are no lost stream
    # Online by its video; the damaged pictures (2.5 % of packets lost) are the analysis' to judge.
    wait_until(lambda: state(hub, CHANNEL) != "offline", 10, "online", lambda: str(hub.snapshots.device(CHANNEL)))


def test_a_second_stream_answered_with_the_first_ones_ssrc_is_refused_and_the_first_records_on(device: Any) -> None:
    """Two channels of one device; the device answers the second INVITE with the SSRC of the first
    stream (and sends under it). The second is hung up and counted, each time it is invited again;
    the first is never disturbed: one INVITE, its video keeps being stored."""
    second = "32058501001310000008"
    hub, dev = device(channels=(CHANNEL, second))
    dev.reuse_ssrc = True
    player = hub.gb28181.player
    wait_until(lambda: player.counters["ssrc_duplicates"] >= 1, 20, "the duplicate SSRC refused",
               lambda: f"{player.counters} {player.view()}")
    wait_until(lambda: len(stored(hub, CHANNEL)) + len(stored(hub, second)) >= 3, 20, "segments stored",
               lambda: str(player.view()))
    view = player.view()
    first, dup = (CHANNEL, second) if view[CHANNEL]["state"] == "playing" else (second, CHANNEL)
    assert view[first]["state"] == "playing" and view[first]["frames"] > 25, view
    assert view[dup]["state"] != "playing" and "already used by another stream" in view[dup]["reason"], view
    assert stored(hub, first) and not stored(hub, dup)
    invites_of_first = sum(1 for o in dev.invites if o.ssrc == view[first]["ssrc"])
    assert invites_of_first == 1, [o.ssrc for o in dev.invites]
    wait_until(lambda: player.counters["ssrc_duplicates"] == len(dev.invites) - 1, 5,
               "every INVITE after the first refused", lambda: f"{player.counters} {len(dev.invites)}")

