"""GB/T 28181 media from peers we did not write: SIPp answers the hub's INVITE and plays RTP carrying
a program stream that FFmpeg's own muxer made (``-f vob``: H.264 on stream 0xE2, no stream map).

SIPp registers as a camera, answers the Catalog query with one channel and the hub's INVITE with
its own SSRC in ``y=`` (as many devices do); the RTP goes to the port of the offer SIPp received
(``Replayer``). When the stream ends the hub sees no RTP, hangs up (BYE, which SIPp answers) and
invites again. The hub is a real `vms serve` process; its stored segments are read back with
FFmpeg's demuxer.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
import yaml

from tests.conftest import HubProcess, free_port, stop_process, wait_until
from tests.test_gb28181_sipp import DOMAIN, SERVER_ID, _keepalive, _register
from vms.kernel.timeutil import iso
from vms.media import rtp

CAMERA = "32058501001180000001"  # the registering device (the scenarios' NVR ID)
CHANNEL = "32058501001310000001"
PASSWORD = "nvr-secret-1"
SSRC = "0123456789"  # the device's own, announced in its answer

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None or shutil.which("ffmpeg") is None,
                                reason="needs SIPp (Debian sip-tester) and ffmpeg")


def ffmpeg_ps(path: Path, seconds: int = 6) -> bytes:
    """A program stream made by FFmpeg's own muxer: H.264 Baseline, 1 s GOP."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25", "-t", str(seconds), "-c:v", "libx264", "-profile:v", "baseline",
                    "-g", "25", "-bf", "0", "-f", "vob", str(path)], check=True)
    return path.read_bytes()


def scr_of(pack: bytes) -> int:
    """The 90 kHz system clock reference of an MPEG-2 pack header."""
    b = pack[4:10]
    return (((b[0] >> 3) & 7) << 30 | (b[0] & 3) << 28 | b[1] << 20 | (b[2] >> 3) << 15 | (b[2] & 3) << 13
            | b[3] << 5 | b[4] >> 3)


def rtp_packets(ps: bytes) -> list[tuple[float, bytes]]:
    """RTP packets (PT 96, 90 kHz, the device's SSRC) carrying the program stream pack by pack, each
    with its send time in seconds from each pack's SCR (as a device paces them)."""
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01\xba", ps)]
    out, seq = [], 0
    for a, b in zip(starts, [*starts[1:], len(ps)], strict=True):
        pack = ps[a:b]
        ts = scr_of(pack)
        for pkt in rtp.packetize(pack, seq=seq, timestamp=ts, ssrc=int(SSRC)):
            seq = (seq + 1) & 0xFFFF
            out.append((ts / 90000, pkt))
    return out


class Replayer:
    """Plays the RTP to each new media port the hub offers the channel (read from its own view of the
    stream): what SIPp's ``play_pcap_video`` does for an in-call INVITE; the hub's INVITE is out of
    the registration's call, and there SIPp does not learn the media address."""

    def __init__(self, hub: HubProcess, token: str, packets: list[tuple[float, bytes]]) -> None:
        self.hub, self.headers, self.packets = hub, {"Authorization": f"Bearer {token}"}, packets
        self.played: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _port(self) -> int | None:
        try:
            r = httpx.get(f"{self.hub.url}/api/v1/gb28181/devices", headers=self.headers)
            devices = r.json()["devices"]
        except (httpx.HTTPError, KeyError, ValueError):
            return None
        for d in devices:
            st = d["streams"].get(CHANNEL)
            if st is not None and st["state"] == "playing" and st["port"] not in (None, *self.played):
                return int(st["port"])
        return None

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not self._stop.wait(0.2):
            port = self._port()
            if port is None:
                continue
            self.played.append(port)
            t0, first = time.monotonic(), self.packets[0][0]
            for t, pkt in self.packets:
                delay = t0 + t - first - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                sock.sendto(pkt, ("127.0.0.1", port))


def device_scenario(keepalives: int) -> str:
    """Register and keep alive."""
    body = "".join(_keepalive(10 + k) for k in range(keepalives))
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="GB/T 28181 device: register with digest, keep alive">
{_register(1, auth=False)}
  <recv response="401" auth="true"/>
{_register(2, auth=True)}
  <recv response="200"/>
{body}
</scenario>
"""


def ooc_scenario() -> str:
    """Out-of-call requests from the hub: a Catalog query (answered with one channel), other
    queries (200), or an INVITE (200 with SDP, ACK, then the hub's BYE answered)."""
    ok = """
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]ooc[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>"""
    return f"""<?xml version="1.0" encoding="GB2312" ?>
<scenario name="GB/T 28181 device: catalog, queries, INVITE">
  <recv request="INVITE" optional="true" next="invite"/>
  <recv request="MESSAGE">
    <action>
      <ereg regexp="&lt;SN&gt;([0-9]+)&lt;/SN&gt;" search_in="body" check_it="true" assign_to="whole,sn"/>
      <ereg regexp="Catalog" search_in="body" check_it="false" assign_to="catalog"/>
    </action>
  </recv>
{ok}
  <nop next="catalog" test="catalog"/>
  <nop next="end"/>
  <label id="catalog"/>
  <send retrans="500">
    <![CDATA[
MESSAGE sip:{SERVER_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{CAMERA}@{DOMAIN}>;tag=[pid]catresp
To: <sip:{SERVER_ID}@{DOMAIN}>
Call-ID: [call_id]
CSeq: 20 MESSAGE
X-Answering: [$whole]
Max-Forwards: 70
Content-Type: Application/MANSCDP+xml
Content-Length: [len]

<?xml version="1.0" encoding="GB2312"?>
<Response>
<CmdType>Catalog</CmdType>
<SN>[$sn]</SN>
<DeviceID>{CAMERA}</DeviceID>
<SumNum>1</SumNum>
<DeviceList Num="1">
<Item><DeviceID>{CHANNEL}</DeviceID><Name>南门</Name><Manufacturer>SIPp</Manufacturer><Model>IPC</Model>
<CivilCode>32058501</CivilCode><Parental>0</Parental><ParentID>{CAMERA}</ParentID><Status>ON</Status></Item>
</DeviceList>
</Response>
    ]]>
  </send>
  <recv response="200"/>
  <nop next="end"/>
  <label id="invite"/>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]inv[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:{CHANNEL}@[local_ip]:[local_port]>
Content-Type: application/sdp
Content-Length: [len]

v=0
o={CHANNEL} 0 0 IN IP4 [media_ip]
s=Play
c=IN IP4 [media_ip]
t=0 0
m=video [media_port] RTP/AVP 96
a=sendonly
a=rtpmap:96 PS/90000
y={SSRC}
    ]]>
  </send>
  <recv request="ACK"/>
  <recv request="BYE"/>
{ok}
  <label id="end"/>
</scenario>
"""


def test_sipp_answers_invite_with_ffmpeg_made_ps_and_the_hub_records_it(make_hub_process: Any,
                                                                          tmp_path: Path) -> None:
    ps = ffmpeg_ps(tmp_path / "camera.vob")
    assert ps[:4] == b"\x00\x00\x01\xba" and b"\x00\x00\x01\xe2" in ps  # FFmpeg's own PS, not our packer's
    packets = rtp_packets(ps)
    assert len(packets) > 100
    sip_port = free_port()
    hub: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": SERVER_ID, "host": "127.0.0.1", "port": sip_port,
                 "passwords": {CAMERA: PASSWORD}, "keepalive_interval_s": 5, "keepalive_misses": 2,
                 "auto_accept": True},
    )
    hub.start()
    admin = {"Authorization": f"Bearer {hub.token('admin')}"}
    (tmp_path / "device.xml").write_text(device_scenario(keepalives=40), encoding="latin-1")
    (tmp_path / "ooc.xml").write_bytes(ooc_scenario().encode("gb2312"))
    sipp = subprocess.Popen(
        ["sipp", f"127.0.0.1:{sip_port}", "-sf", "device.xml", "-oocsf", "ooc.xml", "-m", "1", "-l", "1",
         "-t", "u1", "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1", "-mp", str(free_port()),
         "-nostdin", "-timeout", "120s", "-trace_err", "-error_file", "sipp-errors.log"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "sipp.log").open("wb"), cwd=tmp_path)
    replayer = Replayer(hub, hub.tokens["admin"], packets)

    def context() -> str:
        errors = tmp_path / "sipp-errors.log"
        return (f"hub log: {hub.log.read_text()[-3000:] if hub.log else ''}\n"
                f"sipp: {(tmp_path / 'sipp.log').read_text(errors='replace')[-1500:]}\n"
                f"sipp errors: {errors.read_text(errors='replace')[-1500:] if errors.exists() else ''}")

    def segments() -> list[dict[str, Any]]:
        r = httpx.get(f"{hub.url}/api/v1/devices/{CHANNEL}/recordings", headers=admin,
                      params={"start": iso(time.time() - 3600), "end": iso(time.time() + 60)})
        return list(r.json().get("segments", [])) if r.status_code == 200 else []

    try:
        wait_until(lambda: len(segments()) >= 2, 30, "segments of the SIPp channel stored", context)
        state = httpx.get(f"{hub.url}/api/v1/devices/{CHANNEL}", headers=admin).json()["state"]
        assert state != "offline"  # online by its video (the analysis may judge a test pattern)
        data_dir = Path(yaml.safe_load(hub.config.read_text())["storage"]["data_dir"]) / "recordings"
        stored = sorted(data_dir.glob(f"{CHANNEL}/**/*.ts"))
        assert stored, list(data_dir.rglob("*"))[:20]
        with av.open(str(stored[0])) as c:  # FFmpeg's demuxer and decoder on what the hub stored
            v = c.streams.video[0]
            assert v.codec_context.name == "h264" and (v.codec_context.width, v.codec_context.height) == (320, 240)
            assert sum(1 for _ in c.decode(v)) >= 20
        # Live on the wall: the channel's HLS playlist lists its newest segments (duty officer's token).
        duty = {"Authorization": f"Bearer {hub.token('duty')}"}
        playlist = httpx.get(f"{hub.url}/api/v1/live/{CHANNEL}/index.m3u8", headers=duty)
        assert playlist.status_code == 200 and playlist.text.startswith("#EXTM3U") and ".ts" in playlist.text
        # A police clip of it: an MP4 FFmpeg plays, and the pull is audited.
        police = {"Authorization": f"Bearer {hub.token('police')}"}
        segs = segments()
        r = httpx.get(f"{hub.url}/api/v1/devices/{CHANNEL}/clip.mp4", headers=police, timeout=60,
                      params={"start": segs[0]["start"], "end": segs[-1]["end"], "reason": "theft at the gate",
                              "case": "2026-0099"})
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4", r.text[:300]
        (tmp_path / "clip.mp4").write_bytes(r.content)
        with av.open(str(tmp_path / "clip.mp4")) as c:
            assert c.streams.video[0].codec_context.name == "h264" and sum(1 for _ in c.decode(video=0)) >= 20
        audit = httpx.get(f"{hub.url}/api/v1/audit", headers=admin).json()["entries"]
        assert any(e["target"] == CHANNEL and "clip" in e["action"] for e in audit), [e["action"] for e in audit]
        # The 6 s replay ends: the hub hangs up, SIPp answers the BYE, and the hub invites again.
        wait_until(lambda: "ended" in (hub.log.read_text() if hub.log else "")
                   and (hub.log.read_text().count("streaming (UDP") >= 2), 40, "a second INVITE after the stream ended",
                   context)
        before = len(segments())
        wait_until(lambda: len(set(replayer.played)) >= 2, 10, "media to the second INVITE's own port", context)
        wait_until(lambda: len(segments()) > before, 15, "the second stream recorded too", context)
    finally:
        replayer.close()
        stop_process(sipp)
