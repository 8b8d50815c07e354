"""GB/T 28181 access: bad input and the ways a device leaves, against a real hub on loopback sockets.

The device side here is a small client of our own (tests/test_gb28181_sipp.py runs SIPp, a peer we
did not write); the hub is the real one, in this process, with its SIP server on UDP and TCP.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import columns, downgrade, free_port, hub_config, wait_until
from vms.config import HubConfig
from vms.gb28181 import digest, manscdp, sip
from vms.hub import Hub
from vms.metrics import registry_for, render

SERVER_ID = "32058501002000000001"
DOMAIN = SERVER_ID[:10]
IPC = "32058501001320000007"
CHANNEL = "32058501001310000007"
PASSWORD = "ipc-secret"


class Device:
    """A GB/T 28181 device's signaling, over UDP or TCP, one request at a time."""

    def __init__(self, port: int, device_id: str = IPC, transport: str = "UDP") -> None:
        self.device_id, self.transport, self.server = device_id, transport, ("127.0.0.1", port)
        if transport == "UDP":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
        else:
            self.sock = socket.create_connection(self.server, timeout=5)
        self.sock.settimeout(5)
        self.buf = bytearray()
        self.cseq = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: sip.Message | bytes) -> None:
        data = msg if isinstance(msg, bytes) else sip.serialize(msg)
        if self.transport == "UDP":
            self.sock.sendto(data, self.server)
        else:
            self.sock.sendall(data)

    def recv(self, timeout: float = 5.0) -> sip.Message:
        self.sock.settimeout(timeout)
        if self.transport == "UDP":
            return sip.parse(self.sock.recv(65535))
        while True:
            frame = sip.frame_stream(self.buf)
            if frame is not None:
                return sip.parse(frame)
            chunk = self.sock.recv(65535)
            if not chunk:
                raise ConnectionError("hub closed the connection")
            self.buf += chunk

    def response(self, timeout: float = 5.0) -> sip.Response:
        """The next response, skipping requests the hub sends meanwhile (answered 200)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.recv(max(0.1, deadline - time.monotonic()))
            if isinstance(m, sip.Response):
                return m
            self.send(sip.response_to(m, 200, to_tag=sip.new_tag()))

    def request(self, method: str, extra: dict[str, str] | None = None, body: bytes = b"") -> sip.Request:
        self.cseq += 1
        local = self.sock.getsockname()
        h = sip.Headers()
        h.set("Via", f"SIP/2.0/{self.transport} {local[0]}:{local[1]};rport;branch={sip.new_branch()}")
        h.set("From", f"<sip:{self.device_id}@{DOMAIN}>;tag={sip.new_tag()}")
        h.set("To", f"<sip:{self.device_id if method == 'REGISTER' else SERVER_ID}@{DOMAIN}>")
        h.set("Call-ID", sip.new_call_id())
        h.set("CSeq", f"{self.cseq} {method}")
        h.set("Max-Forwards", "70")
        h.set("Contact", f"<sip:{self.device_id}@{local[0]}:{local[1]}>")
        for k, v in (extra or {}).items():
            h.set(k, v)
        if body:
            h.set("Content-Type", "Application/MANSCDP+xml")
        return sip.Request(method, f"sip:{SERVER_ID}@{DOMAIN}", h, body)

    def register(self, password: str = PASSWORD, expires: int = 3600) -> sip.Response:
        self.send(self.request("REGISTER", {"Expires": str(expires)}))
        challenge = self.response()
        assert challenge.status == 401, challenge
        ch = digest.parse_challenge(challenge.headers.get("WWW-Authenticate") or "")
        auth = digest.client_authorization(ch, "REGISTER", f"sip:{SERVER_ID}@{DOMAIN}", self.device_id, password,
                                           secrets.token_hex(8), 1)
        self.last_auth = auth
        self.send(self.request("REGISTER", {"Expires": str(expires), "Authorization": auth}))
        return self.response()

    def keepalive(self, sn: int = 1) -> sip.Response:
        body = manscdp.build("Notify", "Keepalive", sn, self.device_id, {"Status": "OK"})
        self.send(self.request("MESSAGE", body=body))
        return self.response()

    def answer_catalog(self, items: list[dict[str, str]], sum_num: int | None = None,
                       encoding: str = "GB2312", label: str | None = None) -> None:
        """Wait for the hub's Catalog query, answer 200 and send the catalog (optionally mislabelled)."""
        while True:
            q = self.recv(10)
            if isinstance(q, sip.Request) and q.method == "MESSAGE" and b"Catalog" in q.body:
                break
        self.send(sip.response_to(q, 200, to_tag=sip.new_tag()))
        sn = manscdp.parse(q.body).sn
        body = manscdp.build("Response", "Catalog", sn, self.device_id,
                             {"SumNum": str(sum_num if sum_num is not None else len(items))}, encoding=encoding,
                             items=items)
        if label is not None:
            body = body.replace(f'encoding="{encoding}"'.encode(), f'encoding="{label}"'.encode(), 1)
        self.send(self.request("MESSAGE", body=body))
        assert self.response().status == 200


def item(device_id: str, name: str, status: str = "ON") -> dict[str, str]:
    return {"DeviceID": device_id, "Name": name, "Manufacturer": "Acme", "Model": "X1", "CivilCode": "32058501",
            "ParentID": IPC, "Status": status}


@pytest.fixture
def gb_hub(tmp_path: Path) -> Iterator[Any]:
    made: list[Hub] = []

    def make(**gb: Any) -> Hub:
        section = {"enabled": True, "server_id": SERVER_ID, "port": free_port(), "passwords": {IPC: PASSWORD},
                   "keepalive_interval_s": 5, "keepalive_misses": 1, "catalog_timeout_s": 2,
                   "record": False, **gb}  # signaling alone here; media: tests/test_gb28181_media.py
        cfg = HubConfig.model_validate(hub_config(tmp_path / f"data{len(made)}", gb28181=section))
        hub = Hub(cfg)
        hub.start()
        made.append(hub)
        return hub

    yield make
    for h in made:
        h.stop()


def port_of(hub: Hub) -> int:
    return hub.cfg.gb28181.port


def discovered(hub: Hub) -> dict[str, Any]:
    from sqlalchemy import select

    from vms.db.models import DiscoveredCamera

    with hub.sessions() as s:
        return {r.device_id: r for r in s.scalars(select(DiscoveredCamera))}


def test_wrong_password_replayed_nonce_foreign_and_invalid_ids_are_refused(gb_hub: Any) -> None:
    hub = gb_hub()
    dev = Device(port_of(hub))
    try:
        assert dev.register(password="wrong").status == 403
        assert dev.register().status == 200
        # The same Authorization again (a captured REGISTER replayed): a fresh challenge, not a registration.
        dev.send(dev.request("REGISTER", {"Expires": "3600", "Authorization": dev.last_auth}))
        assert dev.response().status == 401
        assert hub.gb28181 is not None
        assert hub.gb28181.counters["bad_password"] == 1 and hub.gb28181.counters["replayed_nonces"] == 1
        foreign = Device(port_of(hub), "11010000001320000001")  # Beijing: no center of this tree covers it
        foreign.send(foreign.request("REGISTER"))
        r = foreign.response()
        assert r.status == 403 and "outside" in r.reason
        foreign.close()
        bad = Device(port_of(hub), "3205850100132000000X")
        bad.send(bad.request("REGISTER"))
        r = bad.response()
        assert r.status == 400 and "invalid device ID" in r.reason
        bad.close()
        wait_until(lambda: IPC in discovered(hub), 5, "the registered device among the discovered cameras")
        assert "11010000001320000001" not in discovered(hub)
        text = render(registry_for(hub)).decode()
        assert 'vms_gb28181_events_total{kind="bad_password"} 1.0' in text
        assert "vms_gb28181_registered_devices 1.0" in text
    finally:
        dev.close()


def test_malformed_sip_is_dropped_and_the_server_keeps_answering(gb_hub: Any) -> None:
    hub = gb_hub()
    dev = Device(port_of(hub))
    try:
        for junk in (b"\x00\xff garbage", b"REGISTER sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n",
                     b"INVITE\r\n\r\n", b"SIP/2.0 abc OK\r\n\r\n", b"A" * 60_000):
            dev.send(junk)
        assert dev.register().status == 200
        assert hub.gb28181 is not None and hub.gb28181.transport.counters.malformed >= 4
        # A MESSAGE whose XML is broken gets 400, and nothing changes.
        dev.send(dev.request("MESSAGE", body=b"<?xml version='1.0'?><Notify><CmdType>Keepalive</CmdType>"))
        assert dev.response().status == 400
        # A keepalive from a device that never registered is told so (it registers again).
        other = Device(port_of(hub), "32058501001320000099")
        assert other.keepalive().status == 404
        other.close()
    finally:
        dev.close()


def test_a_register_flood_from_one_address_is_rate_limited_not_fatal(gb_hub: Any) -> None:
    hub = gb_hub(register_rate=5.0)
    dev = Device(port_of(hub))
    try:
        for _ in range(200):
            dev.send(dev.request("REGISTER"))
        answered = 0
        while True:
            try:
                dev.recv(0.5)
                answered += 1
            except TimeoutError:
                break
        assert 5 <= answered <= 20  # the burst (10) and what refilled meanwhile
        gb = hub.gb28181
        assert gb is not None
        # Every REGISTER that reached the hub was answered or dropped by the limit (on a loaded machine
        # the kernel may drop some of the 200 datagrams before the hub reads them: those never count).
        # Counted at the hub, once it has dealt with the last one: on a loaded machine a datagram read
        # may still be on its way through the limit, and an answer may come after the reads above.
        c = gb.transport.counters
        assert c.received >= 100
        wait_until(lambda: gb.limit.dropped + c.sent == c.received, 5, "every REGISTER answered or dropped",
                   lambda: f"{gb.limit.dropped} dropped, {c}")
        assert c.sent >= answered
        time.sleep(1.0)  # the bucket refills: the device gets in
        assert dev.register().status == 200
    finally:
        dev.close()


def test_mislabelled_charset_and_a_catalog_that_never_completes(gb_hub: Any) -> None:
    hub = gb_hub()
    dev = Device(port_of(hub))
    try:
        assert dev.register().status == 200
        # SumNum says 3, two arrive; and the body is UTF-8 although its prolog says GB2312.
        dev.answer_catalog([item(CHANNEL, "东门 一号"), item("32058501001310000008", "东门 二号")], sum_num=3,
                           encoding="UTF-8", label="GB2312")
        wait_until(lambda: {CHANNEL, "32058501001310000008"} <= set(discovered(hub)), 10,
                   "the two channels that arrived kept after the catalog timed out")
        assert discovered(hub)[CHANNEL].name == "东门 一号"
        assert hub.gb28181 is not None and hub.gb28181.counters["catalog_incomplete"] == 1
    finally:
        dev.close()


@pytest.mark.parametrize("leave", ["deregister", "tcp-close"])
def test_a_device_that_leaves_is_offline_at_the_next_tick(gb_hub: Any, leave: str) -> None:
    hub = gb_hub(auto_accept=True, keepalive_interval_s=60, keepalive_misses=3)  # 180 s: only leaving can explain it
    dev = Device(port_of(hub), transport="TCP")
    try:
        assert dev.register().status == 200
        dev.answer_catalog([item(CHANNEL, "北门")])

        def states() -> list[str]:
            return [hub.snapshots.device(d).state for d in (IPC, CHANNEL) if hub.registry.known(d)]

        def beat_until_online() -> bool:
            dev.keepalive()
            return states() == ["online", "online"]

        wait_until(beat_until_online, 15, "device and channel online", lambda: str(states()))
        left = time.monotonic()
        if leave == "deregister":
            dev.send(dev.request("REGISTER", {"Expires": "0"}))
            ch = dev.response()
            auth = digest.client_authorization(digest.parse_challenge(ch.headers.get("WWW-Authenticate") or ""),
                                               "REGISTER", f"sip:{SERVER_ID}@{DOMAIN}", IPC, PASSWORD, "c0ffee", 1)
            dev.send(dev.request("REGISTER", {"Expires": "0", "Authorization": auth}))
            assert dev.response().status == 200
        else:
            dev.close()
        wait_until(lambda: states() == ["offline", "offline"], 5, "both offline", lambda: str(states()))
        assert time.monotonic() - left < 3.0  # the next 1 s tick, not 180 s of missed keepalives
    finally:
        dev.close()


def test_catalog_events_darken_light_and_flag_a_channel(gb_hub: Any) -> None:
    """VLOST (video lost) and OFF darken a channel while its device keeps alive; ON lights it again;
    DEFECT raises a defect, so the channel is degraded (an alert through the one alert writer), until ON."""
    hub = gb_hub(auto_accept=True, keepalive_interval_s=60, keepalive_misses=3)
    dev = Device(port_of(hub))
    try:
        assert dev.register().status == 200
        dev.answer_catalog([item(CHANNEL, "西门")])

        def state() -> str:
            return hub.snapshots.device(CHANNEL).state if hub.registry.known(CHANNEL) else "absent"

        def beat_until(want: str) -> bool:
            dev.keepalive()
            return state() == want

        def notify(event: str) -> None:
            body = manscdp.build("Notify", "Catalog", 7, IPC, {"SumNum": "1"},
                                 items=[{**item(CHANNEL, "西门"), "Event": event}])
            dev.send(dev.request("MESSAGE", body=body))
            assert dev.response().status == 200

        wait_until(lambda: beat_until("online"), 15, "channel online", state)
        notify("VLOST")
        wait_until(lambda: beat_until("offline"), 5, "channel offline on VLOST although keepalives go on", state)
        notify("ON")
        wait_until(lambda: beat_until("online"), 10, "channel online again on ON", state)
        notify("DEFECT")
        wait_until(lambda: beat_until("degraded"), 5, "channel degraded on DEFECT", state)
        assert "device_defect" in hub.snapshots.device(CHANNEL).defects
        book = hub.monitor.book
        wait_until(lambda: any(a.kind == "device_degraded" and a.device_id == CHANNEL for a in book.open.values()),
                   5, "a device_degraded alert")
        notify("ON")  # the device says the channel is fine again
        wait_until(lambda: beat_until("online"), 5, "channel online once the defect is cleared", state)
    finally:
        dev.close()


def test_a_device_alarm_is_an_alert_and_is_answered(gb_hub: Any) -> None:
    """An Alarm notification (here a tamper alarm of a channel) becomes one device_alarm alert through
    the alert writer, the same alarm again changes nothing, and the hub answers with a Response."""
    hub = gb_hub(auto_accept=True, keepalive_interval_s=60)
    dev = Device(port_of(hub))
    try:
        assert dev.register().status == 200
        dev.answer_catalog([item(CHANNEL, "北门")])
        wait_until(lambda: hub.registry.known(CHANNEL), 5, "the channel accepted")
        body = manscdp.build("Notify", "Alarm", 31, CHANNEL,
                             {"AlarmPriority": "1", "AlarmMethod": "5", "AlarmTime": "2026-12-06T08:00:00",
                              "AlarmDescription": "镜头遮挡"})
        for _ in range(2):
            dev.send(dev.request("MESSAGE", body=body))
            assert dev.response().status == 200
            answer = dev.recv(5)
            assert isinstance(answer, sip.Request) and answer.method == "MESSAGE", answer
            got = manscdp.parse(answer.body)
            assert (got.root, got.cmd, got.sn, got.fields.get("Result")) == ("Response", "Alarm", 31, "OK")
            dev.send(sip.response_to(answer, 200, to_tag=sip.new_tag()))

        from sqlalchemy import select

        from vms.db.models import Alert

        def alarms() -> list[Any]:
            with hub.sessions() as s:
                return list(s.scalars(select(Alert).where(Alert.kind == "device_alarm")))

        rows = wait_until(alarms, 5, "a device_alarm alert")
        assert len(rows) == 1 and rows[0].device_id == CHANNEL and "镜头遮挡" in rows[0].title
        assert hub.gb28181.counters["alarms"] == 2
    finally:
        dev.close()


def test_a_camera_a_lower_platform_adds_and_at_once_deletes_stays_out_of_service(gb_hub: Any) -> None:
    """A lower platform (a town center) that shares a camera and takes it back in the same breath (an ADD,
    then a DEL: a town learning that a device it just shared carries channels) leaves it out of service
    here and out of the centers' figures: the DEL is applied after the ADD's report, never before it."""
    platform = "32058501002000000009"
    added, marker = "32058501001320000021", "32058501001310000022"
    hub = gb_hub(auto_accept=True, passwords={platform: PASSWORD})
    dev = Device(port_of(hub), platform)
    try:
        assert dev.register().status == 200
        dev.answer_catalog([item(CHANNEL, "西门")])
        wait_until(lambda: hub.registry.known(CHANNEL), 10, "the shared camera")

        def notify(sn: int, items: list[dict[str, str]]) -> None:
            body = manscdp.build("Notify", "Catalog", sn, platform, {"SumNum": str(len(items))}, items=items)
            dev.send(dev.request("MESSAGE", body=body))
            assert dev.response().status == 200

        notify(8, [{**item(added, "东门 IPC"), "Event": "ADD"}, {"DeviceID": added, "Event": "DEL"}])
        notify(9, [{**item(marker, "北门"), "Event": "ADD"}])  # reports are applied in order: once this one is,
        wait_until(lambda: hub.registry.known(marker), 10, "the camera added after")  # so is the DEL before it
        h = hub.health

        def counted() -> str:
            return str([(h.ids[i], "retired" if h.retired[i] else "carrier" if h.carrier[i] else "counted")
                        for i in range(h.n)])

        # The platform counts through its cameras once its catalog is known (within a second); the camera
        # it took back stays out, for good.
        wait_until(lambda: hub.snapshots.centers()[0]["counts"]["devices"] == 2, 5, "two cameras counted", counted)
        time.sleep(1.5)
        assert hub.snapshots.centers()[0]["counts"]["devices"] == 2, counted()
        assert added not in hub.snapshots.states([added, marker])
        assert added not in [d[0] for d in hub.snapshots.in_service()]
    finally:
        dev.close()


def test_a_device_is_shared_upward_once_known_not_to_carry_channels_and_that_survives_a_restart(gb_hub: Any) -> None:
    """A device registering by SIP may carry channels (an NVR, an IPC that reports its picture as one).
    Until its catalog is read it is not in what the hub shares with superior platforms: told of it, a
    superior would add it and then, once it turned out a carrier, delete it (the district showed the
    towns' NVRs as retired devices). Once read, a carrier stays out and its channels go in; a device
    without channels goes in. Whether a device carries is kept in the store: the restarted hub neither
    counts nor shares the NVR as a device before it registers again."""
    plain = "32058501001320000008"
    hub = gb_hub(auto_accept=True, catalog_timeout_s=30, passwords={IPC: PASSWORD, plain: PASSWORD})

    def shared(h: Hub) -> list[str]:
        return [d[0] for d in h.snapshots.in_service()]

    def devices(h: Hub) -> int:
        return int(h.snapshots.centers()[0]["counts"]["devices"])

    nvr, cam = Device(port_of(hub)), Device(port_of(hub), plain)
    try:
        assert nvr.register().status == 200 and cam.register().status == 200
        wait_until(lambda: hub.registry.known(IPC) and hub.registry.known(plain), 10, "both registered devices")
        time.sleep(1.5)  # the hub's second-by-second work has run: still no catalog, so not known
        assert shared(hub) == [] and hub.snapshots.states([IPC, plain]) == {}
        nvr.answer_catalog([item(CHANNEL, "西门")])
        cam.answer_catalog([])
        wait_until(lambda: sorted(shared(hub)) == sorted([CHANNEL, plain]), 10, "the channel and the plain camera",
                   lambda: str(shared(hub)))
        assert devices(hub) == 2  # the channel and the camera; the NVR counts through its channel
    finally:
        nvr.close()
        cam.close()
    hub.stop()
    again = Hub(hub.cfg)  # the same store; neither device has registered with it yet
    again.start()
    try:
        assert sorted(shared(again)) == sorted([CHANNEL, plain])
        assert devices(again) == 2
    finally:
        again.stop()


def test_the_carrier_column_migrates_up_and_down_and_old_devices_are_no_carriers(
    tmp_path: Path, database_url: str | None
) -> None:
    """Devices stored before the column existed are what the hub took them for then: no carriers
    until their catalog says otherwise (not "not known", which would keep them from superiors)."""
    from sqlalchemy import text

    from vms.db import make_engine, migrate

    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'm.db'}")
    try:
        migrate(engine)
        downgrade(engine, "0007")
        assert "carrier" not in columns(engine, "devices")
        with engine.begin() as c:
            c.execute(text("INSERT INTO devices (id, name, location, created_at) VALUES (:d, '', '', 1.0)"),
                      {"d": IPC})
        migrate(engine)
        with engine.connect() as c:
            assert c.execute(text("SELECT carrier FROM devices")).scalar_one() == 0  # False
        downgrade(engine, "0007")
        assert "carrier" not in columns(engine, "devices")
    finally:
        engine.dispose()
