"""Media tokens through the real app (uvicorn in a thread, real SQLite): the only ``?token=`` the live
HLS routes take, for one device and stream, short-lived; a person's token in a URL is refused."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, hub_config, wait_until
from vms.auth import USE_MEDIA_TOKEN, MediaTokens, create

PREFIX = "32058501001320"
CAM = PREFIX + "000001"
OTHER = PREFIX + "000002"
UNKNOWN = "32058501001320000099"
LIVE = "/api/v1/live"
SEG_S = 2.0


class App:
    """The hub's app served by uvicorn in a thread of this process, with live segments of CAM and OTHER."""

    def __init__(self, data: Path, segments: list[bytes]) -> None:
        import uvicorn

        from vms.api import create_app
        from vms.config import HubConfig
        from vms.hub import Hub

        cfg = hub_config(data, devices=[{"id": CAM, "name": "entrance"}, {"id": OTHER, "name": "gate"}],
                         archive={"min_free_bytes": 0}, live={"media_token_ttl_s": 60},
                         retention={"emergency_free_bytes": 0, "emergency_target_free_bytes": 0})
        self.hub = Hub(HubConfig.model_validate(cfg))
        self.tokens = {role: create(self.hub.sessions, role, name=role)[0] for role in ("duty", "police")}
        self.tokens["agent"] = create(self.hub.sessions, "agent", name="agent", prefixes=[PREFIX])[0]
        self.app = create_app(self.hub)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the in-process hub to listen")
        t0 = time.time() - 3 * SEG_S
        for dev in (CAM, OTHER):
            for k, seg in enumerate(segments[:3]):
                r = httpx.put(f"{self.url}/api/v1/agents/segments/{dev}", content=seg, timeout=30,
                              params={"start": t0 + k * SEG_S, "duration": SEG_S},
                              headers={**self.auth("agent"), "X-VMS-SHA256": hashlib.sha256(seg).hexdigest()})
                assert r.status_code == 201, r.text

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=20, **kw)

    def media_token(self, device_id: str, role: str = "duty", **params: str) -> dict[str, Any]:
        r = httpx.post(f"{self.url}{LIVE}/{device_id}/media-token", headers=self.auth(role), params=params, timeout=10)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, black_segments: list[bytes]) -> Iterator[App]:
    a = App(tmp_path_factory.mktemp("media") / "data", black_segments)
    yield a
    a.stop()


def segment_uris(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_a_media_token_plays_its_device(app: App) -> None:
    body = app.media_token(CAM)
    token = body["token"]
    assert body["device_id"] == CAM and body["streams"] == ["main", "sub"] and body["ttl_s"] == 60
    assert token.startswith("vmm.") and app.tokens["duty"] not in token
    r = app.get(f"{LIVE}/{CAM}/index.m3u8", params={"token": token})
    assert r.status_code == 200, r.text
    uris = segment_uris(r.text)
    assert uris and all(u.endswith(f".ts?token={token}") for u in uris)  # the segments carry it too
    seg = app.get(f"{LIVE}/{CAM}/{uris[-1]}")
    assert seg.status_code == 200 and seg.headers["content-type"] == "video/mp2t"
    # The bearer header works as before, and wins over a query token; no token then in the playlist.
    r = app.get(f"{LIVE}/{CAM}/index.m3u8", params={"token": "junk"}, headers=app.auth("police"))
    assert r.status_code == 200 and "token=" not in r.text


def test_another_device_or_stream_is_forbidden(app: App) -> None:
    token = app.media_token(CAM)["token"]
    for path in (f"{LIVE}/{OTHER}/index.m3u8", f"{LIVE}/{OTHER}/segments/1.ts"):
        r = app.get(path, params={"token": token})
        assert r.status_code == 403 and r.json()["detail"] == f"this media token is for device {CAM}, not {OTHER}"
    main_only = app.media_token(CAM, stream="main")
    assert main_only["streams"] == ["main"]
    r = app.get(f"{LIVE}/{CAM}/index.m3u8", params={"token": main_only["token"], "stream": "sub"})
    assert r.status_code == 403
    assert r.json()["detail"] == f"this media token allows the main stream of {CAM}, not the sub stream"


def test_expired_forged_and_bearer_tokens_in_the_query_are_unauthorized(app: App) -> None:
    signer: MediaTokens = app.app.state.media_tokens  # the hub's own key: a real token, issued long ago
    who = app.hub.tokens.authenticate(app.tokens["duty"])
    expired = signer.encode(signer.issue(who, CAM, ("main",), now=time.time() - 61))
    r = app.get(f"{LIVE}/{CAM}/index.m3u8", params={"token": expired})
    assert r.status_code == 401 and r.json()["detail"].startswith("media token expired at ")
    assert r.headers["www-authenticate"] == "Bearer"
    foreign = MediaTokens(60).encode(MediaTokens(60).issue(who, CAM, ("main",)))
    r = app.get(f"{LIVE}/{CAM}/segments/1.ts", params={"token": foreign})
    assert r.status_code == 401 and r.json()["detail"].startswith("media token not signed by this hub")
    for path in (f"{LIVE}/{CAM}/index.m3u8", f"{LIVE}/{CAM}/segments/1.ts"):
        r = app.get(path, params={"token": app.tokens["duty"]})
        assert r.status_code == 401 and r.json()["detail"] == USE_MEDIA_TOKEN, path


def test_who_may_get_one(app: App) -> None:
    r = httpx.post(f"{app.url}{LIVE}/{CAM}/media-token", timeout=10)
    assert r.status_code == 401
    r = httpx.post(f"{app.url}{LIVE}/{CAM}/media-token", headers=app.auth("agent"), timeout=10)
    assert r.status_code == 403 and "'agent' may not" in r.json()["detail"]
    r = httpx.post(f"{app.url}{LIVE}/{UNKNOWN}/media-token", headers=app.auth("duty"), timeout=10)
    assert r.status_code == 404 and r.json()["detail"] == f"unknown device {UNKNOWN}"
    r = httpx.post(f"{app.url}{LIVE}/{CAM}/media-token", headers=app.auth("duty"), params={"stream": "x"}, timeout=10)
    assert r.status_code == 422


def test_revoking_the_holders_token_stops_its_media_tokens(app: App) -> None:
    from vms.auth import revoke

    token = app.media_token(CAM, role="police")["token"]
    assert app.get(f"{LIVE}/{CAM}/index.m3u8", params={"token": token}).status_code == 200
    revoke(app.hub.sessions, "police")
    wait_until(lambda: app.get(f"{LIVE}/{CAM}/index.m3u8", params={"token": token}).status_code == 401,
               app.hub.tokens.ttl_s + 10, "the revocation to reach the token cache")
    r = app.get(f"{LIVE}/{CAM}/index.m3u8", params={"token": token})
    assert r.json()["detail"] == "the token this media token was issued to is revoked"
