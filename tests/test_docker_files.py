"""The files under docker/, checked without a Docker engine.

The hub and agent configs validate against the real models; the compose commands parse with the
real CLIs; the Dockerfiles copy only what exists; the entrypoint scripts run here as they run in
the containers; the Prometheus files pass the real promtool (alert unit tests included); every
metric the alert rules and the Grafana dashboard use is one a real hub exposes; and each image
installs only its own extra of pyproject.toml, which holds every package its part imports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import ssl
import stat
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import grimp
import httpx
import pytest
import typer.main
import yaml
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families

import edge_agent.cli
import vms.cli
from camsim.sim import SYSTEM_PYTHON, device_ids
from edge_agent import config as agent_config
from tests.conftest import free_port, stop_process
from vms import config as hub_config

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
PROM = DOCKER / "prometheus"
SERVICES = {"hub", "agent", "camsim", "prometheus", "grafana", "proxy"}
BASES = {"python:3.11-slim-bookworm", "debian:bookworm-slim"}
AGENT_PREFIX = "32058501001320"
#: image -> (its extra in pyproject.toml, the packages of this repository it copies, what its command imports)
PARTS = {
    "hub": ("hub", {"vms"}, ["vms.cli"]),
    "agent": ("agent", {"vms", "edge_agent"}, ["edge_agent"]),
    "camsim": ("sim", {"vms", "camsim"}, ["camsim"]),
}
#: The hub's frameworks: no other image installs them.
HUB_ONLY = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "psycopg", "aiortc", "apprise",
            "prometheus-client"}
#: Imported modules that come from Debian packages the image installs with apt-get, not from pip.
FROM_DEBIAN = {"camsim": {"gi"}}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    return data


def parse_cli(argv: list[str]) -> dict[str, Any]:
    """Parse a command line with the real CLI (without running it); unknown options raise."""
    apps = {"vms": vms.cli.app, "edge-agent": edge_agent.cli.app}
    if argv[:2] == ["vms", "camsim"]:  # `vms camsim` hands its arguments to the simulator's own CLI
        import camsim.cli

        cmd: Any = typer.main.get_command(camsim.cli.app)
        return dict(cmd.make_context("vms camsim", list(argv[2:])).params)
    cmd = typer.main.get_command(apps[argv[0]])
    args = list(argv[1:])
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        cmd = cmd.commands[args.pop(0)]
    params: dict[str, Any] = cmd.make_context(argv[0], args).params
    return params


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / name).read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def installs(extra: str) -> set[str]:
    """The distributions `pip install ".[EXTRA]"` brings (normalized names): the core and the extra,
    and what they require in turn, read from this environment's metadata."""
    project = pyproject()["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"][extra]]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        req = todo.pop()
        key = (norm(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        for line in metadata.requires(req.name) or []:
            child = Requirement(line)
            if child.marker is None or any(child.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(child)
    return {name for name, _ in done}


def tokens_env(tmp: Path) -> tuple[dict[str, str], Path]:
    """Environment for docker/entrypoint-hub.sh outside Docker: docker/hub.yaml on a temporary disk,
    and `vms` on PATH as this interpreter's module."""
    cfg = yaml.safe_load((DOCKER / "hub.yaml").read_text(encoding="utf-8"))
    cfg["storage"]["data_dir"] = str(tmp / "data")
    cfg["server"]["host"] = "127.0.0.1"
    config = tmp / "hub.yaml"
    config.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "vms"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m vms.cli "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    hub_env = compose()["services"]["hub"]["environment"]
    env = {**os.environ, **{k: str(v) for k, v in hub_env.items()}}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        VMS_CONFIG=str(config),
        VMS_TOKEN_DIR=str(tmp / "tokens"),
    )
    return env, config


def run_hub_entrypoint(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(DOCKER / "entrypoint-hub.sh"), *command], env=env,
                          cwd=Path(env["VMS_TOKEN_DIR"]).parent, capture_output=True, text=True, timeout=120)


# -- configs and compose ------------------------------------------------------------------------
def test_hub_and_agent_configs_validate_and_match_the_simulator() -> None:
    hub = hub_config.load(DOCKER / "hub.yaml")
    assert hub.server.port == 8700
    assert str(hub.storage.data_dir) == "/var/lib/vms"
    assert not hub.metrics.public  # Prometheus scrapes with a token
    agent = agent_config.load(DOCKER / "agent.yaml")
    assert agent.hub_url == "http://hub:8700"
    assert agent.id_prefix == AGENT_PREFIX
    cams = device_ids(8)
    assert [c.url for c in agent.cameras] == [f"rtsp://camsim:8554/cam/{d}" for d in cams]
    assert [c.device_id for c in agent.cameras] == cams
    assert str(agent.data_dir) == "/var/lib/edge-agent"


def test_compose_services_builds_mounts_ports_and_commands() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == SERVICES
    declared = set(doc["volumes"])
    for name, svc in services.items():
        if "build" in svc:
            assert (DOCKER / svc["build"]["context"]).resolve() == ROOT, name
            assert (ROOT / svc["build"]["dockerfile"]).is_file(), name
        else:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", svc["image"]), f"{name}: pin the image version"
        for vol in svc.get("volumes", []):
            src, dst, *mode = vol.split(":")
            assert dst.startswith("/"), vol
            if src.startswith("."):
                assert (DOCKER / src).exists(), f"{name}: {src} is not in the repository"
                assert mode == ["ro"], f"{name}: mount {src} read-only"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
        for dep in svc.get("depends_on", []):
            assert dep in services
    assert {p.split(":")[-1] for s in services.values() for p in s.get("ports", [])} == {
        "8700", "8554", "8555", "9090", "3000", "443"}
    assert set(declared) == {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])
                             if not v.startswith(".")}

    hub = services["hub"]
    assert hub["command"] == ["vms", "serve", "--config", "/etc/vms/hub.yaml", "--host", "0.0.0.0"]
    assert parse_cli(hub["command"])["host"] == "0.0.0.0"
    assert hub["ports"] == ["127.0.0.1:8700:8700"]  # plain HTTP on this machine only; TLS through the proxy
    token_dir = hub["environment"]["VMS_TOKEN_DIR"]
    assert f"tokens:{token_dir}" in hub["volumes"]
    assert "hub-data:/var/lib/vms" in hub["volumes"]
    assert hub["environment"]["VMS_AGENT_PREFIXES"] == AGENT_PREFIX

    sim = services["camsim"]
    params = parse_cli(sim["command"])
    assert sim["command"][:2] == ["vms", "camsim"]
    assert params["cameras"] == len(agent_config.load(DOCKER / "agent.yaml").cameras) == 8
    assert (params["host"], params["rtsp_port"], params["control_port"]) == ("0.0.0.0", 8554, 8555)
    assert params["prefix"] == AGENT_PREFIX

    agent = services["agent"]
    assert agent["command"] == ["edge-agent", "run", "--config", "/etc/vms/agent.yaml"]
    parse_cli(agent["command"])
    assert agent["environment"]["VMS_AGENT_TOKEN_FILE"] == f"{token_dir}/agent.token"
    assert f"tokens:{token_dir}:ro" in agent["volumes"]
    assert agent["depends_on"]["hub"]["condition"] == "service_healthy"

    prom = services["prometheus"]
    assert f"tokens:{token_dir}:ro" in prom["volumes"]
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = cfg["scrape_configs"]
    assert job["authorization"]["credentials_file"] == f"{token_dir}/prometheus.token"
    assert job["static_configs"][0]["targets"] == ["hub:8700"]
    assert job["metrics_path"] == "/metrics"

    ds = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text(encoding="utf-8"))
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/vms.yml").read_text(encoding="utf-8"))
    path = prov["providers"][0]["options"]["path"]
    assert "./grafana/dashboards:" + path + ":ro" in services["grafana"]["volumes"]


def test_dockerfiles_copy_only_what_exists_and_run_unprivileged() -> None:
    apt = re.search(r"APT_PACKAGES=\(([^)]*)\)", (ROOT / "scripts/setup.sh").read_text(encoding="utf-8"))
    assert apt
    setup_packages = set(apt.group(1).split())
    services = compose()["services"]
    for svc in ("hub", "agent", "camsim"):
        name = f"{svc}.Dockerfile"
        ins = dockerfile(name)
        stages = {a.split()[-1] for i, a in ins if i == "FROM" and " AS " in a}
        for i, a in ins:
            if i == "FROM":
                assert a.split()[0] in BASES | stages, f"{name}: base {a}"
        final = ins[max(n for n, (i, _) in enumerate(ins) if i == "FROM"):]
        users = [a for i, a in final if i == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{name}: the final stage must run as a user"
        assert any(i == "VOLUME" for i, _ in final), f"{name}: declare the data volume"
        allowed = {
            line[1:] for line in (DOCKER / f"{name}.dockerignore").read_text(encoding="utf-8").splitlines()
            if line.startswith("!")
        }
        for i, a in ins:
            if i == "COPY" and "--from=" not in a:
                *sources, _dest = [w for w in a.split() if not w.startswith("--")]
                for src in sources:
                    assert (ROOT / src).exists(), f"{name}: COPY {src} is not in the repository"
                    assert src.rstrip("/") in allowed, f"{name}: {src} is excluded by {name}.dockerignore"
        entry = [json.loads(a) for i, a in final if i == "ENTRYPOINT"]
        cmd = next(json.loads(a) for i, a in final if i == "CMD")
        if entry:
            script = Path(entry[0][0]).name
            assert any(i == "COPY" and f"docker/{script}" in a for i, a in final)
            assert os.access(DOCKER / script, os.X_OK), f"docker/{script} must be executable"
            subprocess.run(["sh", "-n", str(DOCKER / script)], check=True)
        assert cmd == services[svc]["command"], f"{name}: CMD and compose command differ"
        parse_cli(cmd)
        if svc == "hub":
            hc = next(a for i, a in final if i == "HEALTHCHECK")
            assert "/healthz" in hc
        if svc == "camsim":
            installed = set()
            for i, a in ins:
                if i == "RUN" and "apt-get install" in a:
                    words = a.split("--no-install-recommends", 1)[1].split("&&")[0].split()
                    installed.update(words)
            needed = {"python3", "python3-gi", "python3-gst-1.0", "gir1.2-gst-rtsp-server-1.0",
                      "gstreamer1.0-plugins-good", "gstreamer1.0-plugins-bad"}
            assert needed <= installed
            assert installed - {"ca-certificates", "python3-venv"} <= setup_packages


def test_each_image_installs_only_its_own_extra() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    setup = re.search(r'^EXTRAS="([^"]*)"$', (ROOT / "scripts/setup.sh").read_text(encoding="utf-8"), re.M)
    assert setup and set(setup.group(1).split(",")) == set(extras), "scripts/setup.sh installs every extra"
    for svc, (extra, packages, _imports) in PARTS.items():
        name = f"{svc}.Dockerfile"
        ins = dockerfile(name)
        pips = [a for i, a in ins if i == "RUN" and "pip install" in a]
        assert len(pips) == 1, f"{name}: one pip install"
        targets = [w for w in shlex.split(pips[0].split("pip install", 1)[1]) if not w.startswith("-")]
        assert targets == [f"/src[{extra}]"], f"{name}: installs {targets}, not the {extra} extra alone"
        assert extra in extras
        copied = {src.rstrip("/") for i, a in ins if i == "COPY" and "--from=" not in a
                  for src in [w for w in a.split() if not w.startswith("--")][:-1]}
        assert copied & {"vms", "edge_agent", "camsim"} == packages, f"{name}: copies {sorted(copied)}"
        allowed = {line[1:] for line in (DOCKER / f"{name}.dockerignore").read_text(encoding="utf-8").splitlines()
                   if line.startswith("!")}
        assert allowed == copied, f"{name}.dockerignore lets in what the image does not copy"
        if svc != "hub":
            assert not installs(extra) & HUB_ONLY, f"the {extra} extra brings hub frameworks"
    assert installs("hub") >= HUB_ONLY


def test_each_extra_holds_what_its_part_imports() -> None:
    """Every third-party module a part imports (at any depth, lazy imports too) comes with its extra."""
    graph = grimp.build_graph("vms", "edge_agent", "camsim", include_external_packages=True, cache_dir=None)
    dists = {mod: {norm(d) for d in names} for mod, names in metadata.packages_distributions().items()}
    ours = {"vms", "edge_agent", "camsim"}
    for svc, (extra, _packages, roots) in PARTS.items():
        imported = {m for r in roots for m in graph.find_upstream_modules(r, as_package=True)}
        external = {m for m in imported if m.split(".")[0] not in ours and m not in sys.stdlib_module_names}
        have = installs(extra)
        missing = {m for m in external if not dists.get(m, set()) & have} - FROM_DEBIAN.get(svc, set())
        assert not missing, f"the {extra} extra lacks what {', '.join(roots)} imports: {sorted(missing)}"


def healthcheck(name: str) -> list[str]:
    """The image's HEALTHCHECK command, with this interpreter for the image's `python`."""
    hc = next(a for i, a in dockerfile(name) if i == "HEALTHCHECK")
    argv: list[str] = json.loads(hc.split("CMD", 1)[1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="system python3 with GStreamer bindings missing")
def test_camsim_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    """The compose command of the simulator (on loopback, free ports, tiny clips) and the image's
    HEALTHCHECK against it."""
    argv = compose()["services"]["camsim"]["command"]
    rtsp, control = free_port(), free_port()
    swap = {"--host": "127.0.0.1", "--rtsp-port": str(rtsp), "--control-port": str(control),
            "--data-dir": str(tmp_path), "--cameras": "2"}
    args = [swap.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
    args += ["--duration", "1", "--width", "160", "--height", "96"]
    assert args[:2] == ["vms", "camsim"]
    check = healthcheck("camsim.Dockerfile")
    env = {**os.environ, "CAMSIM_HEALTH_URL": f"http://127.0.0.1:{control}/health"}
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0
    proc = subprocess.Popen([sys.executable, "-m", "vms.cli", *args[1:]], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0:
            assert proc.poll() is None, "vms camsim exited"
            assert time.monotonic() < deadline, "simulator never passed its healthcheck"
            time.sleep(0.3)
        cams = httpx.get(f"http://127.0.0.1:{control}/cameras", timeout=10).json()
        assert [c["device_id"] for c in cams] == device_ids(2)
    finally:
        stop_process(proc, timeout=30)


# -- the TLS proxy ------------------------------------------------------------------------------
def caddy() -> str:
    found = shutil.which("caddy")
    if not found:
        pytest.skip("caddy not found: install the Debian package `caddy` (scripts/setup.sh)")
    return found


def adapt(tool: str, caddyfile: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The Caddyfile as Caddy's own JSON config (parsed by the real Caddy, nothing started)."""
    r = subprocess.run([tool, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, **(env or {})}, cwd=caddyfile.parent)
    assert r.returncode == 0, f"caddy adapt {caddyfile.name}:\n{r.stderr}"
    config: dict[str, Any] = json.loads(r.stdout)
    return config


def test_caddyfile_parses_and_proxies_the_hub_over_tls_only() -> None:
    tool = caddy()
    proxy = compose()["services"]["proxy"]
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    assert proxy["ports"] == ["8443:443"] and proxy["depends_on"]["hub"]["condition"] == "service_healthy"
    cfg = adapt(tool, DOCKER / "Caddyfile", {"VMS_SITE_ADDRESS": "vms.center.internal"})
    (server,) = cfg["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"]
    route = server["routes"][0]
    assert route["match"] == [{"host": ["vms.center.internal"]}]
    handlers = [h for sub in route["handle"] for r in sub["routes"] for h in r["handle"]]
    rp = next(h for h in handlers if h["handler"] == "reverse_proxy")
    assert rp["upstreams"] == [{"dial": "hub:8700"}]
    assert rp["flush_interval"] == -1  # event streams and growing clips are not buffered
    (policy,) = cfg["apps"]["tls"]["automation"]["policies"]
    assert [i["module"] for i in policy["issuers"]] == ["internal"]  # no certificate fetched from the internet
    assert "logging" not in cfg  # no access log: the event stream's token is in its URL
    assert cfg["admin"] == {"disabled": True}


def trust(root: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(root))


def test_caddyfile_serves_a_real_hub_over_tls(tmp_path: Path, make_hub_process: Any) -> None:
    """The same Caddyfile, pointed at a hub on loopback: TLS from Caddy's own CA, the event stream
    passed through as it comes."""
    tool = caddy()
    hp = make_hub_process()
    token = hp.token("duty")
    hp.start()
    port = free_port()
    text = (DOCKER / "Caddyfile").read_text(encoding="utf-8")
    assert "reverse_proxy hub:8700" in text
    text = text.replace("reverse_proxy hub:8700", f"reverse_proxy 127.0.0.1:{hp.port}")
    text = text.replace("\tadmin off\n", "\tadmin off\n\tdefault_bind 127.0.0.1\n", 1)
    (tmp_path / "Caddyfile").write_text(text, encoding="utf-8")
    env = {**os.environ, "VMS_SITE_ADDRESS": f"localhost:{port}", "HOME": str(tmp_path),
           "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    log = (tmp_path / "caddy.log").open("wb")
    proc = subprocess.Popen([tool, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
                            stdout=log, stderr=log, env=env, cwd=tmp_path)
    try:
        root = tmp_path / "data/caddy/pki/authorities/local/root.crt"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "caddy.log").read_text()
            try:
                if root.exists() and httpx.get(f"https://localhost:{port}/healthz", verify=trust(root),
                                               timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "caddy.log").read_text()[-3000:]
            time.sleep(0.2)
        url = f"https://localhost:{port}"
        r = httpx.get(url + "/api/v1/devices", headers={"Authorization": f"Bearer {token}"}, verify=trust(root))
        assert r.status_code == 200 and r.headers["strict-transport-security"].startswith("max-age=")
        assert "server" not in r.headers
        ticket = httpx.post(url + "/api/v1/events/ticket", headers={"Authorization": f"Bearer {token}"},
                            verify=trust(root)).json()["ticket"]
        with httpx.stream("GET", url + "/api/v1/events", params={"token": ticket}, verify=trust(root),
                          timeout=10) as s:
            lines = s.iter_lines()
            assert next(line for line in lines if line.startswith("event:")) == "event: snapshot"
        with pytest.raises(httpx.HTTPError):  # TLS only: nothing answers plain HTTP on the port
            httpx.get(f"http://localhost:{port}/healthz", timeout=2).raise_for_status()
    finally:
        stop_process(proc)
        log.close()
    assert token not in (tmp_path / "caddy.log").read_text()


# -- Prometheus ---------------------------------------------------------------------------------
def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if not found:
        pytest.skip("promtool not found: install the Debian package `prometheus` (scripts/setup.sh)")
    return found


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    tool = promtool()
    token = tmp_path / "prometheus.token"
    token.write_text("vms_0_token", encoding="utf-8")
    for f in PROM.iterdir():
        shutil.copy(f, tmp_path / f.name)
    cfg = tmp_path / "prometheus.yml"
    text = cfg.read_text(encoding="utf-8")
    assert "/run/vms-tokens/prometheus.token" in text
    cfg.write_text(text.replace("/run/vms-tokens/prometheus.token", str(token)), encoding="utf-8")
    for args in (["check", "config", str(cfg)], ["check", "rules", str(tmp_path / "alerts.yml")],
                 ["test", "rules", str(tmp_path / "alerts_test.yml")]):
        r = subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"

    rules = {r["alert"]: r for g in yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))["groups"]
             for r in g["rules"]}
    assert {"CameraOffline", "CenterUploadRateBelowTarget", "CenterIntactRateBelow98", "HubDown"} <= set(rules)
    assert (rules["CameraOffline"]["expr"], rules["CameraOffline"]["for"]) == ("vms_device_up == 0", "1m")
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text(encoding="utf-8"))["tests"]
    fired = [t for case in tests for t in case["alert_rule_test"]
             if t["alertname"] == "CameraOffline" and t["exp_alerts"]]
    assert fired, "alerts_test.yml must show CameraOffline firing"


def test_promtool_rule_test_fails_when_the_rule_is_wrong(tmp_path: Path) -> None:
    """The unit test has teeth: with a longer `for`, CameraOffline would not fire when it expects."""
    tool = promtool()
    shutil.copy(PROM / "alerts_test.yml", tmp_path)
    text = (PROM / "alerts.yml").read_text(encoding="utf-8")
    broken = text.replace("expr: vms_device_up == 0\n        for: 1m", "expr: vms_device_up == 0\n        for: 5m")
    assert broken != text
    (tmp_path / "alerts.yml").write_text(broken, encoding="utf-8")
    r = subprocess.run([tool, "test", "rules", str(tmp_path / "alerts_test.yml")], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode != 0


# -- entrypoints --------------------------------------------------------------------------------
def test_hub_entrypoint_creates_tokens_once(tmp_path: Path) -> None:
    env, config = tokens_env(tmp_path)
    starts = tmp_path / "starts"
    record = [sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write('start\\n')", str(starts)]
    tokens = Path(env["VMS_TOKEN_DIR"])

    first = run_hub_entrypoint(env, *record)
    assert first.returncode == 0, first.stderr
    files = {p.name: p.read_text() for p in tokens.iterdir()}
    assert set(files) == {"agent.token", "prometheus.token"}
    for name, tok in files.items():
        assert re.fullmatch(r"vms_[0-9a-f]+_[A-Za-z0-9_-]+", tok), name
        assert stat.S_IMODE((tokens / name).stat().st_mode) == 0o644
    second = run_hub_entrypoint(env, *record)
    assert second.returncode == 0, second.stderr
    assert "keeping" in second.stderr and "created" not in second.stderr
    assert {p.name: p.read_text() for p in tokens.iterdir()} == files
    assert starts.read_text() == "start\nstart\n"  # the command ran once per start, after the tokens

    listed = subprocess.run(["vms", "token", "list", "--config", str(config)], env=env, capture_output=True,
                            text=True, timeout=60, check=True).stdout.splitlines()
    rows = sorted(tuple(line.split("\t")) for line in listed)
    assert [r[:4] for r in rows] == [("edge-1", "agent", AGENT_PREFIX, "active"), ("prometheus", "duty", "", "active")]
    assert {r[4] for r in rows} == {"expires never"}

    # A lost token file is not papered over: the start fails and says what to do.
    (tokens / "agent.token").unlink()
    lost = run_hub_entrypoint(env, *record)
    assert lost.returncode != 0
    assert "edge-1" in lost.stderr and "revoke" in lost.stderr
    assert starts.read_text() == "start\nstart\n"


def test_agent_entrypoint_puts_the_token_into_a_private_config(tmp_path: Path) -> None:
    token_file = tmp_path / "agent.token"
    token_file.write_text("vms_0123456789abcdef_Secret-Token_x", encoding="utf-8")
    runtime = tmp_path / "run" / "agent.yaml"
    runtime.parent.mkdir()
    env = {**os.environ, "VMS_AGENT_TOKEN_FILE": str(token_file), "VMS_AGENT_RUNTIME_CONFIG": str(runtime),
           "VMS_TOKEN_WAIT_S": "0"}
    probe = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], "
             "'env': os.environ.get('VMS_AGENT_TOKEN')}))")
    cmd = ["sh", str(DOCKER / "entrypoint-agent.sh"), sys.executable, "-c", probe,
           "run", "--config", str(DOCKER / "agent.yaml"), "--log-level", "INFO"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"argv": ["run", "--config", str(runtime), "--log-level", "INFO"],
                   "env": "vms_0123456789abcdef_Secret-Token_x"}
    cfg = agent_config.load(runtime)
    assert cfg.token == "vms_0123456789abcdef_Secret-Token_x"
    assert cfg.model_dump(exclude={"token"}) == agent_config.load(DOCKER / "agent.yaml").model_dump(exclude={"token"})
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o600

    token_file.write_text("not a token\n", encoding="utf-8")
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=30).returncode != 0
    token_file.unlink()
    missing = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "no token" in missing.stderr


# -- metric names -------------------------------------------------------------------------------
METRIC = re.compile(r"\b(vms_[a-z0-9_]+)\b")
LABEL_REF = re.compile(r"\{\{\s*\$?(?:labels\.)?([a-z_]+)\s*\}\}")


def dashboard_exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in ("expr", "definition") and isinstance(v, str)]
        return found + [e for v in node.values() for e in dashboard_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in dashboard_exprs(v)]
    return []


def test_dashboard_and_alerts_use_metrics_the_hub_exposes(tmp_path: Path, make_hub_process: Any) -> None:
    hp = make_hub_process()
    env, config = tokens_env(tmp_path)
    assert run_hub_entrypoint(env, "true").returncode == 0
    hp.config.write_text(config.read_text(encoding="utf-8"), encoding="utf-8")
    hp.start()
    tokens = Path(env["VMS_TOKEN_DIR"])
    agent_tok = (tokens / "agent.token").read_text()
    prom_tok = (tokens / "prometheus.token").read_text()
    device = device_ids(1)[0]
    hb = httpx.post(f"{hp.url}/api/v1/agents/heartbeat", headers={"Authorization": f"Bearer {agent_tok}"},
                    json={"sent_at": time.time(), "cameras": [
                        {"device_id": device, "connected": True, "last_packet_age_s": 0.1, "fps": 25}]}, timeout=10)
    assert hb.status_code == 200, hb.text
    assert hb.json()["accepted"] == 1
    assert httpx.get(f"{hp.url}/metrics", headers={"Authorization": f"Bearer {agent_tok}"}).status_code == 403
    scrape = httpx.get(f"{hp.url}/metrics", headers={"Authorization": f"Bearer {prom_tok}"}, timeout=10)
    assert scrape.status_code == 200

    exposed: set[str] = set()
    labels: set[str] = {"job", "instance"}
    for fam in text_string_to_metric_families(scrape.text):
        for s in fam.samples:
            exposed.add(s.name)
            labels.update(s.labels)
    assert {"vms_device_up", "vms_device_last_seen_timestamp_seconds", "vms_center_online_ratio"} <= exposed

    rules = [r for g in yaml.safe_load((PROM / "alerts.yml").read_text(encoding="utf-8"))["groups"]
             for r in g["rules"]]
    dash = json.loads((DOCKER / "grafana/dashboards/vms.json").read_text(encoding="utf-8"))
    exprs = [r["expr"] for r in rules] + dashboard_exprs(dash)
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used - exposed == set(), f"names the hub does not expose: {sorted(used - exposed)}"
    for e in exprs:
        assert METRIC.search(e) or e == 'up{job="vms-hub"} == 0', f"expression without a hub metric: {e}"
    dash_used = {m for e in dashboard_exprs(dash) for m in METRIC.findall(e)}
    assert {"vms_center_online_ratio", "vms_center_upload_ratio", "vms_center_intact_ratio", "vms_device_up",
            "vms_device_fps", "vms_device_bitrate_bps", "vms_alerts_open"} <= dash_used

    texts = [v for r in rules for v in r.get("annotations", {}).values()]
    texts += [t.get("legendFormat", "") for p in dash["panels"] for t in p.get("targets", [])]
    referenced = {m for t in texts for m in LABEL_REF.findall(t)} - {"value"}
    assert referenced <= labels, f"labels the hub does not set: {sorted(referenced - labels)}"
    ds_uid = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text(
        encoding="utf-8"))["datasources"][0]["uid"]
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {ds_uid}

    # The hub image's HEALTHCHECK command, as Docker would run it, against this hub and a dead port.
    argv = healthcheck("hub.Dockerfile")
    ok = subprocess.run(argv, env={**os.environ, "VMS_HEALTH_URL": f"{hp.url}/healthz"}, timeout=30)
    assert ok.returncode == 0
    dead = subprocess.run(argv, env={**os.environ, "VMS_HEALTH_URL": f"http://127.0.0.1:{free_port()}/healthz"},
                          capture_output=True, timeout=30)
    assert dead.returncode != 0
