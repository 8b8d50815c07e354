"""Shared fixtures: configs on temporary disks, a controllable clock, a real hub process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

CENTERS: list[dict[str, Any]] = [
    {
        "id": "taicang", "name": "太仓市", "level": 1, "civil_code": "320585",
        "children": [
            {"id": "chengxiang", "name": "城厢镇", "level": 2, "civil_code": "32058501"},
            {"id": "shaxi", "name": "沙溪镇", "level": 2, "civil_code": "32058502"},
            {"id": "education", "name": "教育局", "level": 3, "civil_code": "320585", "industries": ["11"]},
        ],
    }
]


class Clock:
    """A clock the test moves by hand, for exact arithmetic on state and history."""

    def __init__(self, t: float = 1_790_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> float:
        self.t += s
        return self.t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int:
    """Terminate, wait ``timeout`` s, then kill: a helper that ignores SIGTERM must not hang the suite."""
    proc.terminate()  # a no-op once it has exited
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def hub_config(data_dir: Path, database_url: str | None = None, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"storage": {"data_dir": str(data_dir)}, "centers": CENTERS}
    if database_url:
        cfg["storage"]["database_url"] = database_url
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def vms_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "vms.cli", *args], capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise AssertionError(f"vms {' '.join(args)} failed: {r.stderr}")
    return r


@dataclass
class HubProcess:
    """`vms serve` in a child process, as an operator would run it."""

    config: Path
    port: int
    tokens: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str, *prefixes: str, name: str | None = None) -> str:
        args = ["token", "create", "--config", str(self.config), "--role", role]
        for p in prefixes:
            args += ["--prefix", p]
        if name:
            args += ["--name", name]
        tok = vms_cli(*args).stdout.strip()
        self.tokens[name or role] = tok
        return tok

    def start(self) -> None:
        assert self.proc is None
        self.log = self.config.parent / "hub.log"
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vms.cli", "serve", "--config", str(self.config), "--port", str(self.port)],
            stdout=out, stderr=out, cwd=self.config.parent,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited: {self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"hub did not start: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=15)
            self.proc = None


@pytest.fixture
def clock() -> Clock:
    return Clock()


PG_URL = os.environ.get("VMS_TEST_PG_URL")  # a server URL whose user may create databases


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None (the embedded SQLite default) or a fresh PostgreSQL database for this test."""
    if request.param == "sqlite":
        yield None
        return
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must test PostgreSQL: set VMS_TEST_PG_URL (the test script starts a server)")
        pytest.skip("no PostgreSQL server: set VMS_TEST_PG_URL")
    import uuid

    from sqlalchemy import create_engine, text

    name = f"vms_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_URL.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def make_hub_process(tmp_path: Path) -> Iterator[Any]:
    made: list[HubProcess] = []

    def make(**sections: Any) -> HubProcess:
        d = tmp_path / f"hub{len(made)}"
        d.mkdir()
        cfg = write_config(d / "hub.yaml", hub_config(d / "data", **sections))
        hp = HubProcess(cfg, free_port())
        made.append(hp)
        return hp

    yield make
    for hp in made:
        hp.stop()


class WebhookSink:
    """A real HTTP server that records Alertmanager-style POSTs; can refuse or be stopped."""

    def __init__(self, port: int | None = None) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.port = port or free_port()
        self.received: list[dict[str, Any]] = []
        self.fail = False
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if sink.fail:
                    self.send_response(503)
                    self.end_headers()
                    return
                sink.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                pass

        self._server_cls = ThreadingHTTPServer
        self._handler = Handler
        self._threading = threading
        self.server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def start(self) -> WebhookSink:
        self.server = self._server_cls(("127.0.0.1", self.port), self._handler)
        self.server.daemon_threads = True
        self._threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def events(self) -> list[tuple[str, str]]:
        return [(p["status"], p["alerts"][0]["labels"]["alertname"]) for p in self.received]

    def wait_for(self, n: int, timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < n:
            time.sleep(0.05)
        return self.received


@pytest.fixture
def webhook() -> Iterator[WebhookSink]:
    sink = WebhookSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Any]:
    """``small_disk("6m")`` mounts a tmpfs of that size: a real disk that really fills up (ENOSPC and
    free space are the kernel's). Skips when the test cannot mount (not root)."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs to fill a disk needs root")
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounts.append(mnt)
        return mnt

    yield mount
    for mnt in mounts:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@dataclass(frozen=True)
class NetnsPair:
    """Two network namespaces joined by a veth pair: a camera side and an agent side."""

    cam: str
    agent: str
    cam_ip: str
    agent_ip: str


@pytest.fixture
def netns_pair() -> Iterator[Any]:
    """``netns_pair("disc", 78)`` makes namespaces on 10.200.78.0/24 with multicast routed over the
    veth, for WS-Discovery tests (its libraries skip loopback). Only these namespaces are contacted."""
    made: list[tuple[str, str, str]] = []

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def make(name: str, subnet: int) -> NetnsPair:
        import shutil

        if os.geteuid() != 0:
            pytest.skip("needs root to create network namespaces")
        if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode:
            pytest.skip("`ip netns` is not available")
        tag = f"{os.getpid() % 100000}"
        pair = NetnsPair(f"{name}-c{tag}", f"{name}-a{tag}", f"10.200.{subnet}.1", f"10.200.{subnet}.2")
        veth_cam, veth_agent = f"{name[:3]}c{tag}", f"{name[:3]}a{tag}"
        made.append((pair.cam, pair.agent, veth_cam))
        ip("netns", "add", pair.cam)
        ip("netns", "add", pair.agent)
        ip("link", "add", veth_cam, "type", "veth", "peer", "name", veth_agent)
        for ns, dev, addr in ((pair.cam, veth_cam, pair.cam_ip), (pair.agent, veth_agent, pair.agent_ip)):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", dev)
        return pair

    yield make
    for cam, agent, veth in made:  # deleting a namespace deletes the veth end inside it
        for ns in (cam, agent):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


@pytest.fixture(scope="session")
def black_segments(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """One-GOP MPEG-TS segments of a street clip that goes black from 8 s to 18 s (26 s, 13 segments)."""
    from bench.eval_quality import Case, encode, split

    d = tmp_path_factory.mktemp("segs")
    encode(Case(1, "day", "black_screen"), d / "clip.ts")
    return [p.read_bytes() for p, _, _ in split(d / "clip.ts", d)]


def wait_until(cond: Callable[[], Any], timeout: float, what: str, context: Callable[[], str] = str) -> Any:
    """``cond()``'s first true value; on timeout the error names ``what`` and adds ``context()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{context()}")


def columns(engine: Any, table: str) -> set[str]:
    """The names of a store table's columns as the database has them."""
    from sqlalchemy import inspect

    with engine.connect() as c:
        return {col["name"] for col in inspect(c).get_columns(table)}


def downgrade(engine: Any, revision: str) -> None:
    """Take the store's schema back to ``revision`` with its migrations' own downgrades."""
    from alembic import command
    from alembic.config import Config

    from vms.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as c:
        cfg.attributes["connection"] = c
        command.downgrade(cfg, revision)


def spool_segment(spool: Any, device_id: str, start: float, duration: float, data: bytes) -> Any:
    """A finished segment in an agent spool, the way the segmenter leaves it (file renamed in, then added)."""
    import hashlib

    from edge_agent.spool import Segment

    sha = hashlib.sha256(data).hexdigest()
    path = spool.root / Segment.file_name(device_id, start, duration, sha)
    path.write_bytes(data)
    seg = Segment(path=path, device_id=device_id, start=start, duration=duration, sha256=sha, size=len(data))
    spool.added(seg)
    return seg
