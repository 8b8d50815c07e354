"""Tokens cannot be abused (issue 16, items 5 and 10): a bounded cache that keeps no misses, expiry and
last use, the token checked before a body is read, event streams per token, bounded registration
and audit pages.

The hub runs in-process on a real SQLite store, reached over real HTTP requests through its ASGI app
(httpx), with a hand-moved clock; the event-stream limit is tested against `vms serve`.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import Clock, HubProcess, columns, downgrade, hub_config, vms_cli, write_config
from vms import audit, auth
from vms.api import create_app
from vms.config import HubConfig
from vms.db.models import AuditEntry, Token
from vms.hub import Hub

PREFIX = "32058501001320"


def make_hub(tmp_path: Path, clock: Clock, **sections: Any) -> Hub:
    return Hub(HubConfig.model_validate(hub_config(tmp_path / "data", None, **sections)), clock=clock)


@contextlib.asynccontextmanager
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(hub, run_threads=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_made_up_tokens_are_not_cached_and_the_cache_is_bounded(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    duty, _ = auth.create(hub.sessions, "duty", "duty")
    async with client(hub) as c:
        assert (await c.get("/api/v1/devices", headers=bearer(duty))).status_code == 200
        assert len(hub.tokens) == 1
        for _ in range(2000):  # well-formed, never issued: each is a miss
            r = await c.get("/api/v1/devices", headers=bearer(f"vms_{secrets.token_hex(8)}_{secrets.token_urlsafe(8)}"))
            assert r.status_code == 401 and r.json()["detail"] == "invalid or revoked token"
        assert len(hub.tokens) == 1  # before: 2001 entries, one per made-up ID, kept for ever
        assert (await c.get("/api/v1/devices", headers=bearer(duty))).status_code == 200

    small = auth.TokenCache(hub.sessions, clock, max_entries=3)
    tokens = [auth.create(hub.sessions, "police", f"officer-{i}")[0] for i in range(5)]
    for _ in range(2):
        for t in tokens:  # every token still works: the least recently used is read again
            assert small.check(t) is not None
            assert len(small) <= 3
    hub.engine.dispose()


async def test_a_token_expires_with_a_clear_401_and_its_last_use_is_kept(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    admin, _ = auth.create(hub.sessions, "admin", "root")
    async with client(hub) as c:
        r = await c.post("/api/v1/tokens", headers=bearer(admin),
                         json={"role": "duty", "name": "night-shift", "expires_days": 1})
        assert r.status_code == 201, r.text
        shift = r.json()["token"]
        assert r.json()["expires_at"] is not None
        assert (await c.post("/api/v1/tokens", headers=bearer(admin),
                             json={"role": "duty", "expires_days": 0})).status_code == 422
        assert (await c.get("/api/v1/devices", headers=bearer(shift))).status_code == 200
        used_at = clock.t
        hub.tokens.flush_used(force=True)  # what the tick does at most once a minute
        listed = {t["name"]: t for t in (await c.get("/api/v1/tokens", headers=bearer(admin))).json()["tokens"]}
        assert listed["night-shift"]["last_used_at"] is not None and listed["night-shift"]["expires_at"]
        with hub.sessions() as s:
            row = s.scalars(select(Token).where(Token.name == "night-shift")).one()
            assert row.last_used_at == used_at and row.expires_at == pytest.approx(used_at + 86400)

        clock.advance(86400 + 1)
        r = await c.get("/api/v1/devices", headers=bearer(shift))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["detail"].startswith("token 'night-shift' expired at ")
        r = await c.post("/api/v1/alerts/1/ack", headers=bearer(shift), json={})
        assert r.status_code == 401 and "expired" in r.json()["detail"]
        # Only after the secret matched does the answer say more than "invalid".
        wrong = shift.rsplit("_", 1)[0] + "_wrong"
        assert (await c.get("/api/v1/devices", headers=bearer(wrong))).json()["detail"] == "invalid or revoked token"
        assert (await c.get("/api/v1/devices", headers=bearer(admin))).status_code == 200  # no expiry: never
    hub.engine.dispose()


def test_cli_creates_an_expiring_token_and_lists_expiry_and_last_use(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "hub.yaml", hub_config(tmp_path / "data"))
    token = vms_cli("token", "create", "--config", str(cfg), "--role", "police", "--name", "li",
                    "--expires-days", "30").stdout.strip()
    assert token.startswith("vms_")
    bad = vms_cli("token", "create", "--config", str(cfg), "--role", "police", "--expires-days", "-1", check=False)
    assert bad.returncode == 2 and "expires_days must be more than 0" in bad.stderr
    (line,) = vms_cli("token", "list", "--config", str(cfg)).stdout.splitlines()
    name, role, _prefixes, state, expires, last = line.split("\t")
    assert (name, role, state, last) == ("li", "police", "active", "last used never")
    assert expires.startswith("expires 20") and "never" not in expires


async def test_a_bad_token_is_refused_before_the_body_is_read(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    duty, _ = auth.create(hub.sessions, "duty", "duty")
    agent, _ = auth.create(hub.sessions, "agent", "edge-1", [PREFIX])
    broken = b'{"comment": "unterminated'
    json_type = {"Content-Type": "application/json"}
    async with client(hub) as c:
        for headers in ({}, bearer("vms_0123456789abcdef_nope"), bearer("not-even-a-token")):
            r = await c.post("/api/v1/alerts/1/ack", content=broken, headers={**json_type, **headers})
            assert r.status_code == 401, (headers, r.text)  # before: 422 naming the broken JSON
            r = await c.post("/api/v1/agents/heartbeat", content=broken, headers={**json_type, **headers})
            assert r.status_code == 401
            r = await c.put(f"/api/v1/agents/segments/{PREFIX}000001", params={"start": 1, "duration": 2},
                            content=b"\0" * 1000, headers={**headers, "X-VMS-SHA256": "0" * 64})
            assert r.status_code == 401
        # A valid token learns what is wrong with its body, as before; the role is still checked.
        r = await c.post("/api/v1/alerts/1/ack", content=broken, headers={**json_type, **bearer(duty)})
        assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
        r = await c.post("/api/v1/agents/heartbeat", content=b"{}", headers={**json_type, **bearer(duty)})
        assert r.status_code == 403
        r = await c.post("/api/v1/agents/heartbeat", content=broken, headers={**json_type, **bearer(agent)})
        assert r.status_code == 422
    hub.engine.dispose()


async def test_agent_registration_is_bounded(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    agent, _ = auth.create(hub.sessions, "agent", "edge-1", [PREFIX])
    other, _ = auth.create(hub.sessions, "agent", "edge-2", ["32058502"])
    body = {"protocol": 1, "version": "t", "hostname": "h"}
    async with client(hub) as c:
        for _ in range(6):
            assert (await c.post("/api/v1/agents/register", json=body, headers=bearer(agent))).status_code == 200
            clock.advance(1)
        r = await c.post("/api/v1/agents/register", json=body, headers=bearer(agent))
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 54
        assert "registered 6 times in the last 60 s" in r.json()["detail"]
        assert (await c.post("/api/v1/agents/register", json=body, headers=bearer(other))).status_code == 200
        clock.advance(55)  # the first registration left the window
        assert (await c.post("/api/v1/agents/register", json=body, headers=bearer(agent))).status_code == 200
    with hub.sessions() as s:
        n = s.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "agent.register", AuditEntry.target == "edge-1"))
    assert n == 7  # the refused one wrote nothing
    hub.engine.dispose()


async def test_the_audit_log_is_read_in_bounded_pages(tmp_path: Path, clock: Clock) -> None:
    hub = make_hub(tmp_path, clock)
    admin, _ = auth.create(hub.sessions, "admin", "root")
    for i in range(25):
        audit.append(hub.sessions, at=clock.t + i, actor="li", role="police", action="clip.pull", target=f"t{i}")
    async with client(hub) as c:
        seen: list[int] = []
        before: int | None = None
        while True:
            params: dict[str, Any] = {"limit": 10, **({"before": before} if before else {})}
            page = (await c.get("/api/v1/audit", params=params, headers=bearer(admin))).json()
            assert page["verified"] is True and page["rows"] == 25 and len(page["entries"]) <= 10
            seq = [e["seq"] for e in page["entries"]]
            assert seq == sorted(seq)
            seen = seq + seen
            before = page["next_before"]
            if before is None:
                break
        assert seen == list(range(1, 26))
        r = await c.get("/api/v1/audit", params={"limit": 1001}, headers=bearer(admin))
        assert r.status_code == 422
        quick = (await c.get("/api/v1/audit", params={"verify": "false"}, headers=bearer(admin))).json()
        assert quick["verified"] is None and [e["seq"] for e in quick["entries"]] == list(range(1, 26))
    hub.engine.dispose()


def test_event_streams_are_limited_per_token(make_hub_process: Any) -> None:
    hp: HubProcess = make_hub_process(server={"max_event_streams_per_token": 2})
    hp.token("duty", name="wall")
    hp.token("police", name="li")
    hp.start()
    url = hp.url + "/api/v1/events"

    lines: list[Any] = []  # each open stream's reader: dropping one would close its connection

    def opened(stack: contextlib.ExitStack, token: str) -> httpx.Response:
        ticket = httpx.post(url + "/ticket", headers=bearer(token), timeout=10).json()["ticket"]
        r = stack.enter_context(httpx.stream("GET", url, params={"token": ticket}, timeout=10))
        if r.status_code == 200:
            lines.append(r.iter_lines())
            next(lines[-1])  # the stream is running
        return r

    with contextlib.ExitStack() as stack:
        assert opened(stack, hp.tokens["wall"]).status_code == 200
        with contextlib.ExitStack() as second:
            assert opened(second, hp.tokens["wall"]).status_code == 200
            third = httpx.get(url, headers=bearer(hp.tokens["wall"]), timeout=10)
            assert third.status_code == 429 and third.headers["retry-after"] == "5"
            assert "max_event_streams_per_token" in third.json()["detail"]
            with contextlib.ExitStack() as other:
                assert opened(other, hp.tokens["li"]).status_code == 200  # another token has its own
        # A closed stream gives its place back (as soon as the hub sees the client gone).
        deadline = time.monotonic() + 10
        while True:
            with contextlib.ExitStack() as again:
                if opened(again, hp.tokens["wall"]).status_code == 200:
                    break
            assert time.monotonic() < deadline, "a closed stream kept its place"
            time.sleep(0.2)


def test_token_columns_migrate_up_and_down(tmp_path: Path) -> None:
    from vms.db import make_engine, migrate

    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        migrate(engine)
        assert {"expires_at", "last_used_at"} <= columns(engine, "tokens")
        assert "release_reason" in columns(engine, "legal_holds")
        downgrade(engine, "0006")
        old = columns(engine, "tokens")
        assert not {"expires_at", "last_used_at"} & old and "revoked_at" in old
        assert "release_reason" not in columns(engine, "legal_holds")
        migrate(engine)
        assert {"expires_at", "last_used_at"} <= columns(engine, "tokens")
    finally:
        engine.dispose()
