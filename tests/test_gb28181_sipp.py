"""GB/T 28181 access against a peer we did not write: SIPp (Debian's sip-tester) acting as an NVR.

SIPp registers with digest authentication, keeps alive once a second, and answers the hub's
Catalog query from an out-of-call scenario with a two-channel catalog in GB2312. The hub is a real
`vms serve` process; everything is on loopback, over UDP and over TCP.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, free_port, stop_process, wait_until

SERVER_ID = "32058501002000000001"
DOMAIN = SERVER_ID[:10]
NVR = "32058501001180000001"
CHANNELS = ["32058501001310000001", "32058501001310000002"]
PASSWORD = "nvr-secret-1"

pytestmark = pytest.mark.skipif(shutil.which("sipp") is None, reason="needs SIPp (Debian sip-tester)")


def _register(cseq: int, auth: bool) -> str:
    auth_line = f"[authentication username={NVR} password={PASSWORD}]\n" if auth else ""
    return f"""
  <send retrans="500">
    <![CDATA[
REGISTER sip:{SERVER_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{NVR}@{DOMAIN}>;tag=[pid]reg[call_number]
To: <sip:{NVR}@{DOMAIN}>
Call-ID: [call_id]
CSeq: {cseq} REGISTER
Contact: <sip:{NVR}@[local_ip]:[local_port]>
Max-Forwards: 70
User-Agent: SIPp GB device
Expires: 3600
{auth_line}Content-Length: 0

    ]]>
  </send>"""


def _keepalive(sn: int) -> str:
    return f"""
  <send retrans="500">
    <![CDATA[
MESSAGE sip:{SERVER_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{NVR}@{DOMAIN}>;tag=[pid]ka{sn}
To: <sip:{SERVER_ID}@{DOMAIN}>
Call-ID: [call_id]
CSeq: {sn} MESSAGE
Max-Forwards: 70
Content-Type: Application/MANSCDP+xml
Content-Length: [len]

<?xml version="1.0" encoding="GB2312"?>
<Notify>
<CmdType>Keepalive</CmdType>
<SN>{sn}</SN>
<DeviceID>{NVR}</DeviceID>
<Status>OK</Status>
</Notify>
    ]]>
  </send>
  <recv response="200"/>
  <pause milliseconds="1000"/>"""


def device_scenario(keepalives: int) -> str:
    body = "".join(_keepalive(10 + k) for k in range(keepalives))
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="GB/T 28181 NVR: register with digest, keep alive">
{_register(1, auth=False)}
  <recv response="401" auth="true"/>
{_register(2, auth=True)}
  <recv response="200"/>
{body}
</scenario>
"""


CATALOG_ITEMS = "".join(
    f"""<Item>
<DeviceID>{ch}</DeviceID>
<Name>Camera {k + 1} 南门</Name>
<Manufacturer>SIPp</Manufacturer>
<Model>IPC-{k + 1}</Model>
<CivilCode>32058501</CivilCode>
<Address>城厢镇 南门 {k + 1}</Address>
<Parental>0</Parental>
<ParentID>{NVR}</ParentID>
<Status>ON</Status>
<Longitude>121.1</Longitude>
<Latitude>31.45</Latitude>
</Item>
"""
    for k, ch in enumerate(CHANNELS)
)

# Answers the hub's Catalog query (a MESSAGE with a Call-ID of its own: out of the registration's
# call) with 200, then sends the catalog, echoing the query's SN.
CATALOG_SCENARIO = f"""<?xml version="1.0" encoding="GB2312" ?>
<scenario name="GB/T 28181 NVR: answer a Catalog query">
  <recv request="MESSAGE">
    <action>
      <ereg regexp="&lt;SN&gt;([0-9]+)&lt;/SN&gt;" search_in="body" check_it="true" assign_to="whole,sn"/>
    </action>
  </recv>
  <send>
    <![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]cat
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
MESSAGE sip:{SERVER_ID}@{DOMAIN} SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];rport;branch=[branch]
From: <sip:{NVR}@{DOMAIN}>;tag=[pid]catresp
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
<DeviceID>{NVR}</DeviceID>
<SumNum>{len(CHANNELS)}</SumNum>
<DeviceList Num="{len(CHANNELS)}">
{CATALOG_ITEMS}</DeviceList>
</Response>
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"""


def start_sipp(tmp: Path, transport: str, sip_port: int, keepalives: int) -> subprocess.Popen[bytes]:
    main = tmp / "device.xml"
    main.write_text(device_scenario(keepalives), encoding="latin-1")
    ooc = tmp / "catalog.xml"
    ooc.write_bytes(CATALOG_SCENARIO.encode("gb2312"))
    cmd = [
        "sipp", f"127.0.0.1:{sip_port}", "-sf", str(main), "-oocsf", str(ooc), "-m", "1", "-l", "1",
        "-t", "u1" if transport == "udp" else "t1", "-i", "127.0.0.1", "-p", str(free_port()),
        "-nostdin", "-timeout", "120s", "-trace_err", "-error_file", str(tmp / "sipp-errors.log"),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=(tmp / "sipp.log").open("wb"), cwd=tmp)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_nvr_registers_its_catalog_is_accepted_and_it_goes_dark_when_keepalives_stop(
    transport: str, make_hub_process: Any, tmp_path: Path
) -> None:
    sip_port = free_port()
    hub: HubProcess = make_hub_process(
        gb28181={"enabled": True, "server_id": SERVER_ID, "host": "127.0.0.1", "port": sip_port,
                 "passwords": {NVR: PASSWORD}, "keepalive_interval_s": 5, "keepalive_misses": 1,
                 "record": False},  # signaling alone: SIPp answering INVITE is in test_gb28181_sipp_media.py
    )
    hub.start()
    admin = {"Authorization": f"Bearer {hub.token('admin')}"}
    sipp = start_sipp(tmp_path, transport, sip_port, keepalives=25)
    try:
        def pending() -> dict[str, Any]:
            r = httpx.get(f"{hub.url}/api/v1/discovered", params={"state": "pending"}, headers=admin)
            return {c["device_id"]: c for c in r.json()["cameras"]}

        def context() -> str:
            log = hub.log.read_text()[-3000:] if hub.log else ""
            return f"pending: {list(pending())}\nhub log: {log}\nsipp: {(tmp_path / 'sipp.log').read_text()[-2000:]}"

        found = wait_until(lambda: set(pending()) >= {NVR, *CHANNELS} and pending(), 20,
                           "the NVR and its two channels pending", context)
        assert {found[c]["source"] for c in (NVR, *CHANNELS)} == {"gb28181"}
        assert found[CHANNELS[0]]["name"] == "Camera 1 南门"  # GB2312 body decoded
        assert found[CHANNELS[1]]["manufacturer"] == "SIPp" and found[CHANNELS[1]]["model"] == "IPC-2"
        # Pending: not a device yet, so nothing counts against the center.
        assert httpx.get(f"{hub.url}/api/v1/devices/{CHANNELS[0]}", headers=admin).status_code == 404
        for d in (NVR, *CHANNELS):
            r = httpx.post(f"{hub.url}/api/v1/discovered/{d}/accept", json={"comment": "site survey"}, headers=admin)
            assert r.status_code == 200, r.text

        def state(d: str) -> str:
            return str(httpx.get(f"{hub.url}/api/v1/devices/{d}", headers=admin).json()["state"])

        wait_until(lambda: all(state(d) == "online" for d in (NVR, *CHANNELS)), 15, "all three online",
                   lambda: f"states {[state(d) for d in (NVR, *CHANNELS)]}")
        reg = httpx.get(f"{hub.url}/api/v1/gb28181/devices", headers=admin).json()
        assert [d["device_id"] for d in reg["devices"]] == [NVR] and reg["domain"] == DOMAIN
        assert reg["devices"][0]["channels"] == dict.fromkeys(CHANNELS, "ON")
        assert reg["devices"][0]["peer"].startswith(transport + ":127.0.0.1:")
        centers = httpx.get(f"{hub.url}/api/v1/centers/chengxiang", headers=admin).json()
        assert centers["counts"]["devices"] == 2  # the two channels: the NVR counts through them
        assert sipp.wait(60) == 0, (tmp_path / "sipp.log").read_text(errors="replace")
        stopped = time.monotonic()
        wait_until(lambda: all(state(d) == "offline" for d in CHANNELS), 15, "both channels offline",
                   lambda: f"states {[state(d) for d in CHANNELS]}")
        # keepalive_interval_s × keepalive_misses = 5 s of silence, seen by the next 1 s tick.
        assert time.monotonic() - stopped < 5 + 1 + 3
        audit = httpx.get(f"{hub.url}/api/v1/audit", headers=admin).json()
        accepted = [e["target"] for e in audit["entries"] if e["action"] == "camera.accept"]
        assert set(accepted) >= {NVR, *CHANNELS}
    finally:
        if sipp.poll() is None:
            stop_process(sipp)
