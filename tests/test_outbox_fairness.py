"""The outbox against real receivers on loopback: a dead one (closed port, 5xx, or silent) never
delays a healthy one, raises one ``receiver_down`` alert that does not loop, and resolves it when
it delivers again. Webhook URLs hold secrets: they never reach logs, ``last_error`` or alerts."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Clock, WebhookSink, free_port, hub_config
from vms.alerts import AlertKind
from vms.config import HubConfig
from vms.db.models import Alert, Delivery
from vms.hub import Hub
from vms.notify import redact_url
from vms.services.alerting import NewAlert

SECRET = "s3cr3t-T0KEN"


def make_hub(tmp_path: Path, clock: Clock, receivers: list[dict[str, Any]], **alerts: Any) -> Hub:
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data", alerts={"receivers": receivers, **alerts}))
    return Hub(cfg, clock=clock)


def hook(name: str, url: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "kind": "webhook", "url": url, **kw}


def raise_alerts(hub: Hub, n: int, tag: str = "a") -> None:
    """``n`` alerts through the one alert writer, as the archive raises its own."""
    for i in range(n):
        hub.alerts.raise_or_update(NewAlert(f"{tag}{i}", AlertKind.STORAGE_LOW, f"{tag}{i}", hub.clock()))


def rows(hub: Hub, **where: Any) -> list[Any]:
    with hub.sessions() as s:
        q = select(Delivery).filter_by(**where).order_by(Delivery.id)
        return list(s.scalars(q))


def kinds(hub: Hub, kind: AlertKind) -> list[Alert]:
    with hub.sessions() as s:
        return list(s.scalars(select(Alert).where(Alert.kind == kind.value).order_by(Alert.id)))


class Answer500:
    """A receiver that is up but answers every POST with HTTP 500."""

    def __init__(self) -> None:
        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(500)
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Silent:
    """Accepts connections (the kernel's backlog) and never answers: a hung receiver."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def stop(self) -> None:
        self.sock.close()


@pytest.fixture(params=["refused", "http500"])
def dead_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A dead receiver's URL, with a secret in its path and query as real webhook URLs have."""
    if request.param == "refused":
        yield f"http://127.0.0.1:{free_port()}/hook/{SECRET}?access_token={SECRET}"
        return
    srv = Answer500()
    yield f"http://127.0.0.1:{srv.port}/hook/{SECRET}?access_token={SECRET}"
    srv.stop()


def test_dead_receiver_with_200_pending_does_not_block_healthy(tmp_path: Path, clock: Clock, webhook: WebhookSink,
                                                               dead_url: str) -> None:
    # The dead receiver was the only one while 200 alerts were raised: 200 deliveries wait for it.
    hub = make_hub(tmp_path, clock, [hook("dead", dead_url)])
    raise_alerts(hub, 200, "old")
    hub.outbox.drain(clock.t)
    hub.stop()
    hub = make_hub(tmp_path, clock, [hook("dead", dead_url), hook("crew", webhook.url)])
    raise_alerts(hub, 10, "new")
    assert hub.outbox.drain(clock.advance(1)) == 10  # before: 0 of 10 (the oldest 200 were all the dead one's)
    assert [p["alerts"][0]["fingerprint"] for p in webhook.received] == [f"new{i}" for i in range(10)]
    assert len(rows(hub, receiver="dead", status="pending")) == 210
    hub.stop()


def test_silent_receiver_does_not_delay_healthy(tmp_path: Path, clock: Clock, webhook: WebhookSink) -> None:
    silent = Silent()
    try:
        hub = make_hub(tmp_path, clock, [hook("hung", f"http://127.0.0.1:{silent.port}/x", timeout_s=3),
                                         hook("crew", webhook.url)], receiver_down_after_s=3600)
        raise_alerts(hub, 5)
        t0 = time.monotonic()
        th = threading.Thread(target=hub.outbox.drain, args=(clock.t,))
        th.start()
        webhook.wait_for(5, timeout=10)
        took = time.monotonic() - t0
        th.join(15)
        assert len(webhook.received) == 5
        assert took < 2.5  # before: after the hung receiver's 3 s timeout
        (first, *_) = rows(hub, receiver="hung")
        assert first.attempts == 1 and first.status == "pending"
        # Known to fail now: its next attempt runs on in the background and holds no round up.
        raise_alerts(hub, 5, "b")
        t0 = time.monotonic()
        assert hub.outbox.drain(clock.advance(60)) == 5
        assert time.monotonic() - t0 < 2.5 and len(webhook.received) == 10
        assert hub.outbox.drain(clock.advance(60)) == 0  # its attempt is still running: not a second one
        time.sleep(3)
        hub.outbox.drain(clock.advance(1))
        assert rows(hub, receiver="hung")[0].attempts == 2
        hub.stop()
    finally:
        silent.stop()


def drain_for(hub: Hub, clock: Clock, seconds: int, step: int = 5) -> None:
    for _ in range(seconds // step):
        hub.outbox.drain(clock.advance(step))


def test_dead_receiver_raises_one_alert_without_loop_and_resolves(tmp_path: Path, clock: Clock,
                                                                  webhook: WebhookSink) -> None:
    port = free_port()
    dead_url = f"http://127.0.0.1:{port}/hook/{SECRET}?access_token={SECRET}"
    cfg = dict(retry_initial_s=1, retry_max_s=30, receiver_down_after_s=60)
    hub = make_hub(tmp_path, clock, [hook("dead", dead_url), hook("crew", webhook.url)], **cfg)
    raise_alerts(hub, 1)
    drain_for(hub, clock, 55)
    assert kinds(hub, AlertKind.RECEIVER_DOWN) == []  # not yet: it has failed for less than a minute
    drain_for(hub, clock, 30 * 60)  # half an hour of retries (every <= 30 s) while it stays dead
    (down,) = kinds(hub, AlertKind.RECEIVER_DOWN)
    assert down.state == "open" and down.severity == "critical"
    assert "dead" in down.title and SECRET not in down.title + str(down.detail)
    assert webhook.events() == [("firing", "storage_low"), ("firing", "receiver_down")]
    (dead_row,) = rows(hub, receiver="dead")  # its own alert is not queued for it: nothing to loop on
    assert dead_row.payload["alerts"][0]["labels"]["alertname"] == "storage_low"
    assert dead_row.status == "pending" and "refused" in dead_row.last_error and SECRET not in dead_row.last_error
    assert dead_row.attempts > 30  # it kept trying, alone
    # Back: it gets its backlog in order, its alert resolves, and nothing opens again.
    back = WebhookSink(port).start()
    try:
        drain_for(hub, clock, 35)
        drain_for(hub, clock, 5)
        assert kinds(hub, AlertKind.RECEIVER_DOWN)[0].state == "resolved"
        assert back.events() == [("firing", "storage_low")]
        assert webhook.events()[2:] == [("resolved", "receiver_down")]
        drain_for(hub, clock, 600)
        assert len(kinds(hub, AlertKind.RECEIVER_DOWN)) == 1 and len(back.received) == 1
        assert rows(hub, status="pending") == []
    finally:
        back.stop()
    hub.stop()


def test_all_receivers_dead_one_alert_each_and_bounded_queues(tmp_path: Path, clock: Clock) -> None:
    urls = [f"http://127.0.0.1:{free_port()}/{SECRET}" for _ in range(2)]
    hub = make_hub(tmp_path, clock, [hook("a", urls[0]), hook("b", urls[1])],
                   retry_initial_s=1, retry_max_s=10, receiver_down_after_s=30)
    raise_alerts(hub, 1)
    drain_for(hub, clock, 3600, step=2)
    assert len(kinds(hub, AlertKind.RECEIVER_DOWN)) == 2  # one per receiver, not one per failure
    assert len(rows(hub)) == 2 * 2  # each queue: the alert and the other's receiver_down, no more
    hub.stop()
    # A restart while they stay dead opens nothing new; the active alerts are known from the store.
    hub = make_hub(tmp_path, clock, [hook("a", urls[0]), hook("b", urls[1])],
                   retry_initial_s=1, retry_max_s=10, receiver_down_after_s=30)
    drain_for(hub, clock, 600, step=2)
    assert [a.state for a in kinds(hub, AlertKind.RECEIVER_DOWN)] == ["open", "open"]
    assert len(rows(hub)) == 4
    hub.stop()


def test_restart_then_recovery_resolves_the_alert_raised_before(tmp_path: Path, clock: Clock,
                                                                webhook: WebhookSink) -> None:
    port = free_port()
    receivers = [hook("dead", f"http://127.0.0.1:{port}/x"), hook("crew", webhook.url)]
    hub = make_hub(tmp_path, clock, receivers, retry_initial_s=1, retry_max_s=10, receiver_down_after_s=20)
    raise_alerts(hub, 1)
    drain_for(hub, clock, 60)
    assert [a.state for a in kinds(hub, AlertKind.RECEIVER_DOWN)] == ["open"]
    hub.stop()
    back = WebhookSink(port).start()
    try:
        hub = make_hub(tmp_path, clock, receivers, retry_initial_s=1, retry_max_s=10, receiver_down_after_s=20)
        drain_for(hub, clock, 30)
        assert [a.state for a in kinds(hub, AlertKind.RECEIVER_DOWN)] == ["resolved"]
        assert back.events() == [("firing", "storage_low")]
        assert webhook.events() == [("firing", "storage_low"), ("firing", "receiver_down"),
                                    ("resolved", "receiver_down")]
        hub.stop()
    finally:
        back.stop()


def test_webhook_secrets_stay_out_of_logs_and_errors(tmp_path: Path, clock: Clock, webhook: WebhookSink,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    failing = Answer500()
    try:
        good = f"{webhook.url}?access_token={SECRET}"
        bad = f"http://u:{SECRET}@127.0.0.1:{failing.port}/robot/send?key={SECRET}"
        hub = make_hub(tmp_path, clock, [hook("crew", good), hook("chat", bad)], receiver_down_after_s=1)
        raise_alerts(hub, 1)
        # httpx's own level too: an earlier test in the same process may have quietened it.
        with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger="httpx"):
            hub.outbox.drain(clock.t)
            hub.outbox.drain(clock.advance(5))
        assert len(webhook.received) == 1
        assert "HTTP Request" in caplog.text and "127.0.0.1" in caplog.text  # httpx logged the requests ...
        assert SECRET not in caplog.text  # ... without their secrets
        (row,) = rows(hub, receiver="chat", status="pending")[:1]
        assert row.last_error == f"HTTP 500 from http://127.0.0.1:{failing.port}/***"
        (down,) = kinds(hub, AlertKind.RECEIVER_DOWN)
        assert SECRET not in down.title + str(down.detail)
        hub.stop()
    finally:
        failing.stop()


def test_redact_url() -> None:
    assert redact_url("https://oapi.dingtalk.com/robot/send?access_token=abc") == "https://oapi.dingtalk.com/***"
    assert redact_url("http://user:pw@10.0.0.1:8080/") == "http://10.0.0.1:8080/***"
    assert redact_url("http://10.0.0.1:8080") == "http://10.0.0.1:8080"
    assert redact_url("dingtalk://TOKEN/", keep_host=False) == "dingtalk://***"
    assert redact_url("not a url") == "***"
