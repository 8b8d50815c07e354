"""Cascade against a peer we did not write: SIPp (Debian's sip-tester) as the superior platform.

SIPp listens as the district or police platform: it challenges the hub's REGISTER with 401 and
checks the digest answer itself (``verifyauth``), asks for the catalog, subscribes to catalog
changes, and waits for the NOTIFY that tells it a camera went dark. Keepalives and the catalog's
MESSAGEs come in calls of their own, which the same scenario answers with 200 (SIPp in server mode
starts every new call at the top of its scenario); every message is traced and the test reads what
the hub sent. The hub is a real ``vms serve``; an agent speaking HTTP
makes the camera online and then dark. Loopback only, over UDP and TCP.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, free_port, stop_process, wait_until
from tests.test_alerts_e2e import Agent

SERVER_ID = "32058501002000000001"  # the town center (this hub)
SUPERIOR = "32058500002000000001"  # the district platform (SIPp)
SUP_DOMAIN = SUPERIOR[:10]
PASSWORD = "district-secret"
CAM = "32058501001320000001"  # shared: in the town
HIDDEN = "32058502001320000009"  # not shared: another town

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="needs SIPp (Debian sip-tester)")


def _ok(extra: str = "") -> str:
    return f"""
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]sup
[last_Call-ID:]
[last_CSeq:]
{extra}Content-Length: 0

    ]]>
  </send>"""


def _request(method: str, cseq: int, body: str, extra: str = "") -> str:
    return f"""
  <send retrans="500">
    <![CDATA[
{method} sip:{SERVER_ID}@{SERVER_ID[:10]} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{SUPERIOR}@{SUP_DOMAIN}>;tag=[pid]sup{cseq}
To: <sip:{SERVER_ID}@{SERVER_ID[:10]}>
Call-ID: [call_id]
CSeq: {cseq} {method}
Contact: <sip:{SUPERIOR}@[local_ip]:[local_port]>
Max-Forwards: 70
{extra}Content-Type: Application/MANSCDP+xml
Content-Length: [len]

{body}
    ]]>
  </send>"""


SUBSCRIBE_HEADERS = "Event: Catalog;id=1\nExpires: 600\n"


def _query(sn: int, cmd: str, device: str) -> str:
    return (f'<?xml version="1.0" encoding="GB2312"?>\n<Query>\n<CmdType>{cmd}</CmdType>\n<SN>{sn}</SN>\n'
            f"<DeviceID>{device}</DeviceID>\n</Query>")


def _register(verify: bool) -> str:
    """The superior's side of a registration: a 401 challenge, then 200 to the answer (whose digest
    SIPp checks itself with ``verify``, stopping on a wrong one)."""
    check = f"""
  <recv request="REGISTER">
    <action>
      <verifyauth assign_to="authvalid" username="{SERVER_ID}" password="{PASSWORD}"/>
    </action>
  </recv>
  <nop hide="true" test="authvalid" next="goodauth"/>
  <nop display="wrong digest"><action><exec int_cmd="stop_now"/></action></nop>
  <label id="goodauth"/>""" if verify else """
  <recv request="REGISTER"/>"""
    return f"""  <recv request="REGISTER"/>
  <send>
    <![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]reg
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="{SUP_DOMAIN}", nonce="[pid]n[call_number]", algorithm=MD5
Content-Length: 0

    ]]>
  </send>{check}
{_ok("Expires: 3600" + chr(10))}"""


SUPERIOR_SCENARIO = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="GB/T 28181 superior platform: challenge, verify, catalog, subscribe, wait for OFF">
  <recv request="MESSAGE" optional="true" next="answer"/>
{_register(verify=True)}
  <pause milliseconds="300"/>
{_request("MESSAGE", 1, _query(701, "Catalog", SERVER_ID))}
  <recv response="200"/>
{_request("MESSAGE", 2, _query(702, "DeviceStatus", HIDDEN))}
  <recv response="403"/>
{_request("SUBSCRIBE", 3, _query(703, "Catalog", SERVER_ID), SUBSCRIBE_HEADERS)}
  <recv response="200"/>
  <label id="wait"/>
  <recv request="NOTIFY">
    <action>
      <ereg regexp="&lt;DeviceID&gt;{CAM}&lt;/DeviceID&gt;&lt;Event&gt;OFF&lt;/Event&gt;" search_in="body"
            check_it="false" assign_to="off"/>
    </action>
  </recv>
{_ok()}
  <nop hide="true" test="off" next="done"/>
  <nop hide="true" next="wait"/>
  <label id="answer"/>
{_ok()}
  <label id="done"/>
</scenario>
"""


def start_superior(tmp: Path, transport: str, port: int) -> subprocess.Popen[bytes]:
    (tmp / "superior.xml").write_text(SUPERIOR_SCENARIO, encoding="latin-1")
    cmd = ["sipp", "-sf", "superior.xml", "-i", "127.0.0.1", "-p", str(port),
           "-t", "u1" if transport == "udp" else "t1", "-nostdin", "-timeout", "90s",
           "-trace_msg", "-message_file", "messages.log", "-trace_err", "-error_file", "errors.log"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(tmp / "sipp.log").open("wb"), cwd=tmp)


def sent_by_hub(tmp: Path, method: str) -> list[str]:
    """The messages the hub sent SIPp, by request method, from SIPp's own trace."""
    log = tmp / "messages.log"
    text = log.read_text(encoding="gb2312", errors="replace") if log.exists() else ""
    blocks = re.split(r"\n-{10,}[^\n]*\n", text)
    return [b for b in blocks if re.search(rf"message received[^\n]*\n\s*{method} sip:", b)]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_superior_gets_registered_catalog_and_an_off_notify_within_10_s(
    transport: str, make_hub_process: Any, tmp_path: Path
) -> None:
    sup_port = free_port()
    hub: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": SERVER_ID, "host": "127.0.0.1", "port": free_port(),
                 "record": False},
        devices=[{"id": CAM, "name": "南门 1", "location": "城厢镇 南门", "lon": 121.1, "lat": 31.45},
                 {"id": HIDDEN, "name": "沙溪 9"}],
        superiors=[{"name": "district", "server_id": SUPERIOR, "host": "127.0.0.1", "port": sup_port,
                    "transport": transport, "password": PASSWORD, "share": ["chengxiang"],
                    "keepalive_interval_s": 2, "catalog_page": 4}],
    )
    hub.token("duty")
    admin = {"Authorization": f"Bearer {hub.token('admin')}"}
    agent_token = hub.token("agent", "32058501", name="edge-1")
    sipp = start_superior(tmp_path, transport, sup_port)
    time.sleep(0.3)  # SIPp listening
    hub.start()

    def links() -> list[dict[str, Any]]:
        return list(httpx.get(f"{hub.url}/api/v1/superiors", headers=admin).json())

    def context() -> str:
        errors = tmp_path / "errors.log"
        return (f"links: {links()}\nhub log: {(hub.log.read_text() if hub.log else '')[-3000:]}\n"
                f"sipp: {(tmp_path / 'sipp.log').read_text(errors='replace')[-2000:]}\n"
                f"errors: {errors.read_text(errors='replace')[-2000:] if errors.exists() else ''}")

    def told_off() -> bool:
        return any(f"<DeviceID>{CAM}</DeviceID><Event>OFF</Event>" in b for b in sent_by_hub(tmp_path, "NOTIFY"))

    try:
        with Agent(hub, agent_token, [CAM]) as agent:
            link = wait_until(lambda: [x for x in links() if x["state"] == "registered" and x["subscriptions"]],
                              20, "registered and subscribed", context)[0]
            assert link["name"] == "district" and link["server_id"] == SUPERIOR
            assert link["address"] == f"{transport}:127.0.0.1:{sup_port}" and link["last_error"] == ""
            wait_until(lambda: httpx.get(f"{hub.url}/api/v1/devices/{CAM}", headers=admin).json()["state"]
                       == "online", 15, "the camera online", context)
            wait_until(lambda: links()[0]["last_keepalive"], 10, "a keepalive answered", context)
            time.sleep(1.5)  # the NOTIFY of it coming online goes first
            assert not told_off()
            agent.dark[CAM] = time.time()
            dark = time.monotonic()
            wait_until(told_off, 20, "a NOTIFY telling SIPp the camera is OFF", context)
            took = time.monotonic() - dark
        assert took < 10, f"OFF told after {took:.1f} s"
        errors = tmp_path / "errors.log"
        assert not errors.exists() or "unexpected" not in errors.read_text(errors="replace").lower(), context()
        catalog = "".join(b for b in sent_by_hub(tmp_path, "MESSAGE") if "<CmdType>Catalog</CmdType>" in b)
        assert f"<DeviceID>{CAM}</DeviceID>" in catalog and "<Name>南门 1</Name>" in catalog
        assert "<Longitude>121.100000</Longitude>" in catalog and "<SN>701</SN>" in catalog
        assert HIDDEN not in catalog  # another town's camera is not shared
        items = re.findall(r"<Item><DeviceID>(\d{20})</DeviceID>", catalog)
        assert [i[10:13] for i in items].count("215") == 1 and "216" in [i[10:13] for i in items], items
        sums = set(re.findall(r"<SumNum>(\d+)</SumNum>", catalog))
        assert sums == {str(len(items))} and len(items) == len(set(items)), (sums, items)  # one total, pages
        assert any("<CmdType>Keepalive</CmdType>" in b for b in sent_by_hub(tmp_path, "MESSAGE"))
        audit = httpx.get(f"{hub.url}/api/v1/audit", headers=admin).json()["entries"]
        assert [(e["actor"], e["target"]) for e in audit if e["action"] == "cascade.refused"] == \
            [("superior:district", HIDDEN)]
    finally:
        if sipp.poll() is None:
            stop_process(sipp)


def test_a_superior_that_refuses_the_password_is_failing_with_an_alert_and_no_tight_loop(
    make_hub_process: Any, tmp_path: Path
) -> None:
    """SIPp answers every REGISTER with 401 (a wrong password): the link fails, backs off, and one
    ``superior_down`` alert says why."""
    sup_port = free_port()
    scenario = tmp_path / "refuse.xml"
    refusal = f"""
  <recv request="REGISTER"/>
  <send>
    <![CDATA[
SIP/2.0 401 Unauthorized
[last_Via:]
[last_From:]
[last_To:];tag=[pid]r
[last_Call-ID:]
[last_CSeq:]
WWW-Authenticate: Digest realm="{SUP_DOMAIN}", nonce="[pid]n[cseq]", algorithm=MD5
Content-Length: 0

    ]]>
  </send>"""
    head = '<?xml version="1.0" encoding="ISO-8859-1" ?>\n<scenario name="superior refusing every REGISTER">'
    scenario.write_text(head + refusal * 40 + "\n</scenario>\n", encoding="latin-1")
    sipp = subprocess.Popen(["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(sup_port), "-t", "u1",
                             "-nostdin", "-timeout", "60s", "-trace_msg", "-message_file", "messages.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    hub: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": SERVER_ID, "host": "127.0.0.1", "port": free_port(), "record": False},
        superiors=[{"name": "police", "server_id": SUPERIOR, "host": "127.0.0.1", "port": sup_port,
                    "password": "wrong", "share": ["32058501"], "retry_max_s": 4}],
    )
    admin = {"Authorization": f"Bearer {hub.token('admin')}"}
    time.sleep(0.3)
    hub.start()
    try:
        def alert() -> list[dict[str, Any]]:
            rows = httpx.get(f"{hub.url}/api/v1/alerts", headers=admin).json()["alerts"]
            return [a for a in rows if a["kind"] == "superior_down"]

        found = wait_until(alert, 20, "a superior_down alert")
        assert len(found) == 1 and "police" in found[0]["title"] and "wrong password" in found[0]["title"]
        link = httpx.get(f"{hub.url}/api/v1/superiors", headers=admin).json()[0]
        assert link["state"] == "failing" and "401" in link["last_error"]
        started = time.monotonic()
        time.sleep(8)
        registers = (tmp_path / "messages.log").read_text(errors="replace").count("REGISTER sip:")
        # Backing off 1, 2, 4, 4 ... s: a handful of attempts in ~12 s (two REGISTERs each), not hundreds.
        assert 2 <= registers <= 24, registers
        assert time.monotonic() - started < 30
        assert len(alert()) == 1  # one alert, updated, not one per attempt
    finally:
        stop_process(sipp)


def _invite(device: str, rtp_port: int, cseq: int) -> str:
    sdp = (f"v=0\no={SUPERIOR} 0 0 IN IP4 127.0.0.1\ns=Play\nc=IN IP4 127.0.0.1\nt=0 0\n"
           f"m=video {rtp_port} RTP/AVP 96\na=recvonly\na=rtpmap:96 PS/90000\ny=0320580001\n")
    return f"""
  <send retrans="500">
    <![CDATA[
INVITE sip:{device}@{SERVER_ID[:10]} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{SUPERIOR}@{SUP_DOMAIN}>;tag=[pid]inv{cseq}
To: <sip:{device}@{SERVER_ID[:10]}>
Call-ID: [call_id]
CSeq: {cseq} INVITE
Contact: <sip:{SUPERIOR}@[local_ip]:[local_port]>
Subject: {device}:0320580001,{SUPERIOR}:0
Max-Forwards: 70
Content-Type: APPLICATION/SDP
Content-Length: [len]

{sdp}
    ]]>
  </send>"""


def live_scenario(rtp_port: int) -> str:
    """Register, ask for a camera it may not see (403), then play the shared one, hang up, play it
    again and wait for the center's BYE when the camera's media stops."""
    ack = """
  <send>
    <![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
[last_From:]
[last_To:]
[last_Call-ID:]
CSeq: {cseq} ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>"""
    bye = """
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{sup}@{dom}>;tag=[pid]inv{cseq}
To: <sip:{cam}@{dom2}>[peer_tag_param]
[last_Call-ID:]
CSeq: {cseq2} BYE
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>"""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="GB/T 28181 superior platform: live video upward">
  <recv request="MESSAGE" optional="true" next="answer"/>
{_register(verify=False)}
  <pause milliseconds="500"/>
{_invite(HIDDEN, rtp_port, 10)}
  <recv response="403"/>
{_invite(CAM, rtp_port, 11)}
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
{ack.format(cseq=11)}
  <pause milliseconds="5000"/>
{bye.format(sup=SUPERIOR, dom=SUP_DOMAIN, cam=CAM, dom2=SERVER_ID[:10], cseq=11, cseq2=12)}
  <pause milliseconds="1000"/>
{_invite(CAM, rtp_port, 13)}
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
{ack.format(cseq=13)}
  <recv request="BYE" timeout="40000"/>
{_ok()}
  <nop hide="true" next="done"/>
  <label id="answer"/>
{_ok()}
  <label id="done"/>
</scenario>
"""


def make_segments(tmp: Path, n: int) -> list[Path]:
    """Real H.264 in 2 s MPEG-TS segments, one GOP each, as an agent cuts them."""
    out = tmp / "segs"
    out.mkdir()
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-t", str(2 * n), "-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-bf", "0",
                    "-f", "segment", "-segment_time", "2", "-reset_timestamps", "1", str(out / "s%03d.ts")],
                   check=True, timeout=120)
    return sorted(out.glob("s*.ts"))


class Feeder:
    """Uploads segments as an agent relaying the camera live would, one every 2 s, until stopped."""

    def __init__(self, hub: HubProcess, token: str, device: str, segments: list[Path]) -> None:
        import threading

        self.hub, self.token, self.device, self.segments = hub, token, device, segments
        self.stop_evt = threading.Event()
        self.answers: list[str] = []  # the hub's answer to each upload
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import hashlib
        import itertools

        with httpx.Client(headers={"Authorization": f"Bearer {self.token}", "Content-Type": "video/mp2t"},
                          timeout=10) as c:
            start = time.time() - 2
            for path in itertools.cycle(self.segments):
                data = path.read_bytes()
                try:
                    r = c.put(f"{self.hub.url}/api/v1/agents/segments/{self.device}", content=data,
                              params={"start": f"{start:.3f}", "duration": "2"},
                              headers={"X-VMS-SHA256": hashlib.sha256(data).hexdigest()})
                    self.answers.append(f"{r.status_code} {r.text[:200]}")
                except httpx.HTTPError as exc:  # the hub is down (restarting): an agent goes on too
                    self.answers.append(f"{type(exc).__name__}: {exc}")
                start += 2
                if self.stop_evt.wait(max(0.0, start + 2 - time.time())):
                    return

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop_evt.set()
        self.thread.join(10)


def test_sipp_superior_plays_a_camera_live_as_ps_over_rtp_and_hears_bye_when_its_media_stops(
    make_hub_process: Any, tmp_path: Path
) -> None:
    import socket

    import av

    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)  # a loaded machine: room for bursts
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(0.5)
    sup_port = free_port()
    hub: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": SERVER_ID, "host": "127.0.0.1", "port": free_port(), "record": False},
        devices=[{"id": CAM, "name": "南门 1"}, {"id": HIDDEN, "name": "沙溪 9"}],
        live={"stale_after_s": 5},
        superiors=[{"name": "police", "server_id": SUPERIOR, "host": "127.0.0.1", "port": sup_port,
                    "password": PASSWORD, "share": ["chengxiang"]}],
    )
    admin = {"Authorization": f"Bearer {hub.token('admin')}"}
    agent = hub.token("agent", "32058501", name="edge-1")
    (tmp_path / "live.xml").write_text(live_scenario(rtp.getsockname()[1]), encoding="latin-1")
    segments = make_segments(tmp_path, 4)
    hub.start()
    packets: list[tuple[float, bytes]] = []
    sipp: subprocess.Popen[bytes] | None = None
    try:
        with Feeder(hub, agent, CAM, segments) as feeder:
            # Uploading (or degraded: the picture checks may not like a test pattern): live media here.
            wait_until(lambda: httpx.get(f"{hub.url}/api/v1/devices/{CAM}", headers=admin).json()["state"]
                       in ("uploading", "degraded"), 45, "the camera live at the center",
                       lambda: f"uploads: {feeder.answers}")
            # The superior comes up now: the center registers at its next try (backing off 1, 2, 4 s).
            sipp = subprocess.Popen(["sipp", "-sf", "live.xml", "-i", "127.0.0.1", "-p", str(sup_port), "-t", "u1",
                                     "-m", "1", "-nostdin", "-timeout", "90s", "-trace_msg", "-message_file",
                                     "messages.log", "-trace_err", "-error_file", "errors.log"],
                                    stdout=subprocess.DEVNULL, stderr=(tmp_path / "sipp.log").open("wb"), cwd=tmp_path)
            # The first stream (5 s, then SIPp's BYE), a second INVITE, and 5 s of that one.
            deadline = time.time() + 40
            while time.time() < min(deadline, packets[0][0] + 12 if packets else deadline):
                try:
                    data = rtp.recv(65536)
                    packets.append((time.time(), data))
                except TimeoutError:
                    continue
            assert packets, f"no RTP\n{(tmp_path / 'messages.log').read_text(errors='replace')[-3000:]}"
        # The camera's media stops with the feeder: the center says BYE, SIPp answers and ends.
        assert sipp.wait(40) == 0, (tmp_path / "errors.log").read_text(errors="replace")[-3000:]
    finally:
        if sipp is not None and sipp.poll() is None:
            stop_process(sipp)
        rtp.close()
    # When the center had the INVITE (its own log, to the millisecond; SIPp's trace clock is coarse).
    assert hub.log is not None
    invited = re.search(r"^([0-9-]+ [0-9:]+,[0-9]{3}) INFO vms.gb28181.upward: GB/T 28181 upward: police invites "
                        + CAM, hub.log.read_text(errors="replace"), re.M)
    assert invited, hub.log.read_text(errors="replace")[-3000:]
    took = packets[0][0] - dt.datetime.strptime(invited.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert 0 <= took < 1.0, f"first RTP packet {took:.2f} s after the INVITE"
    ps = tmp_path / "upward.ps"
    first_stream = [p for t, p in packets if t <= packets[0][0] + 5.5]
    ps.write_bytes(b"".join(p[12:] for p in first_stream))  # RTP headers of 12 bytes: no CSRC or extension
    with av.open(str(ps), format="mpeg") as c:  # FFmpeg's own MPEG-PS demuxer
        v = c.streams.video[0]
        frames = sum(1 for _ in c.decode(v))
        assert v.codec_context.name == "h264" and (v.codec_context.width, v.codec_context.height) == (640, 360)
    assert frames >= 100, frames  # 5 s of 25 fps video, live, not a still
    ssrcs = {int.from_bytes(p[8:12], "big") for _, p in packets}
    assert ssrcs == {320580001}  # the y= the superior asked for
    text = (tmp_path / "messages.log").read_text(errors="replace")
    assert re.search(r"BYE sip:[^\n]*\n", text) and "Forbidden (not shared" in text
    audit = httpx.get(f"{hub.url}/api/v1/audit", headers=admin).json()["entries"]
    assert [e["target"] for e in audit if e["action"] == "cascade.play"] == [CAM, CAM]
    assert [e["target"] for e in audit if e["action"] == "cascade.refused"] == [HIDDEN]


def download_scenario(rtp_port: int, start: int, end: int) -> str:
    """Register, ask which recordings the camera has, download the range at 4x, hang up after 5 s."""
    local = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))  # noqa: E731
    query = (f'<?xml version="1.0" encoding="GB2312"?>\n<Query>\n<CmdType>RecordInfo</CmdType>\n<SN>801</SN>\n'
             f"<DeviceID>{CAM}</DeviceID>\n<StartTime>{local(start)}</StartTime>\n<EndTime>{local(end)}</EndTime>\n"
             "<Type>all</Type>\n</Query>")
    sdp = (f"v=0\no={SUPERIOR} 0 0 IN IP4 127.0.0.1\ns=Download\nu={CAM}:0\nc=IN IP4 127.0.0.1\nt={start} {end}\n"
           f"m=video {rtp_port} RTP/AVP 96\na=recvonly\na=rtpmap:96 PS/90000\na=downloadspeed:4\ny=1320580002\n")
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="GB/T 28181 superior platform: download a recording">
  <recv request="MESSAGE" optional="true" next="answer"/>
{_register(verify=False)}
{_request("MESSAGE", 1, query)}
  <recv response="200"/>
  <pause milliseconds="500"/>
  <send retrans="500">
    <![CDATA[
INVITE sip:{CAM}@{SERVER_ID[:10]} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{SUPERIOR}@{SUP_DOMAIN}>;tag=[pid]dl
To: <sip:{CAM}@{SERVER_ID[:10]}>
Call-ID: [call_id]
CSeq: 20 INVITE
Contact: <sip:{SUPERIOR}@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: APPLICATION/SDP
Content-Length: [len]

{sdp}
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200" rrs="true"/>
  <send>
    <![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
[last_From:]
[last_To:]
[last_Call-ID:]
CSeq: 20 ACK
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <pause milliseconds="6000"/>
  <send retrans="500">
    <![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{SUPERIOR}@{SUP_DOMAIN}>;tag=[pid]dl
To: <sip:{CAM}@{SERVER_ID[:10]}>[peer_tag_param]
[last_Call-ID:]
CSeq: 21 BYE
Max-Forwards: 70
Content-Length: 0

    ]]>
  </send>
  <recv response="200"/>
  <nop hide="true" next="done"/>
  <label id="answer"/>
{_ok()}
  <label id="done"/>
</scenario>
"""


def test_sipp_superior_finds_a_recording_and_downloads_it_faster_than_real_time(
    make_hub_process: Any, tmp_path: Path
) -> None:
    import hashlib
    import socket

    import av

    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)  # a loaded machine: room for bursts
    rtp.bind(("127.0.0.1", 0))
    rtp.settimeout(0.5)
    sup_port = free_port()
    hub: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": SERVER_ID, "host": "127.0.0.1", "port": free_port(), "record": False},
        devices=[{"id": CAM, "name": "南门 1"}],
        superiors=[{"name": "police", "server_id": SUPERIOR, "host": "127.0.0.1", "port": sup_port,
                    "password": PASSWORD, "share": ["chengxiang"]}],
    )
    admin = {"Authorization": f"Bearer {hub.token('admin')}"}
    agent = hub.token("agent", "32058501", name="edge-1")
    segments = make_segments(tmp_path, 5)  # 10 s recorded, an hour ago
    hub.start()
    first = int(time.time()) - 3600
    for k, path in enumerate(segments):
        data = path.read_bytes()
        r = httpx.put(f"{hub.url}/api/v1/agents/segments/{CAM}", content=data,
                      params={"start": str(first + 2 * k), "duration": "2"},
                      headers={"Authorization": f"Bearer {agent}", "Content-Type": "video/mp2t",
                               "X-VMS-SHA256": hashlib.sha256(data).hexdigest()})
        assert r.status_code == 201, r.text
    (tmp_path / "dl.xml").write_text(download_scenario(rtp.getsockname()[1], first - 60, first + 60),
                                     encoding="latin-1")
    sipp = subprocess.Popen(["sipp", "-sf", "dl.xml", "-i", "127.0.0.1", "-p", str(sup_port), "-t", "u1",
                             "-nostdin", "-timeout", "60s", "-trace_msg", "-message_file", "messages.log",
                             "-trace_err", "-error_file", "errors.log"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "sipp.log").open("wb"), cwd=tmp_path)
    packets: list[tuple[float, bytes]] = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not (packets and time.time() - packets[-1][0] > 2.0):
            try:
                data = rtp.recv(65536)
                packets.append((time.time(), data))
            except TimeoutError:
                continue
        wait_until(lambda: "<NotifyType>121</NotifyType>" in "".join(sent_by_hub(tmp_path, "MESSAGE")), 10,
                   "MediaStatus 121 when the recording is sent")
        wait_until(lambda: re.search(r"BYE sip:", (tmp_path / "messages.log").read_text(errors="replace")), 15,
                   "SIPp's BYE")
    finally:
        stop_process(sipp)
        rtp.close()
    assert packets, (tmp_path / "messages.log").read_text(errors="replace")[-3000:]
    records = "".join(b for b in sent_by_hub(tmp_path, "MESSAGE") if "<CmdType>RecordInfo</CmdType>" in b)
    assert "<SumNum>1</SumNum>" in records and "<SN>801</SN>" in records, records[-2000:]
    spans = re.findall(r"<StartTime>([^<]+)</StartTime><EndTime>([^<]+)</EndTime>", records)
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(first))
    assert spans and spans[0][0] == local, spans
    took = packets[-1][0] - packets[0][0]
    assert took < 10 / 2, f"10 s of recording took {took:.1f} s at 4x"
    ps = tmp_path / "download.ps"
    ps.write_bytes(b"".join(p[12:] for _, p in packets))
    with av.open(str(ps), format="mpeg") as c:
        frames = sum(1 for _ in c.decode(c.streams.video[0]))
    assert frames >= 240, frames  # the whole 10 s at 25 fps
    audit = httpx.get(f"{hub.url}/api/v1/audit", headers=admin).json()["entries"]
    pulled = [e for e in audit if e["action"] == "cascade.download"]
    assert [(e["actor"], e["target"]) for e in pulled] == [("superior:police", CAM)]
    assert pulled[0]["detail"]["start"] == first - 60 and pulled[0]["detail"]["speed"] == 4
    assert [e["target"] for e in audit if e["action"] == "cascade.record_info"] == [CAM]
