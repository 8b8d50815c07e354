"""The ``vms`` command: serve the hub, work with IDs, tokens, reports and the audit log."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from vms import config as config_mod
from vms.kernel import ids

app = typer.Typer(
    help="Video monitoring-center hub (GB/T 28181).", no_args_is_help=True, pretty_exceptions_enable=False
)
id_app = typer.Typer(help="GB/T 28181 20-digit device IDs.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (stored hashed).", no_args_is_help=True)
config_app = typer.Typer(help="The hub configuration.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
sites_app = typer.Typer(help="Sites that must be covered: check and import GeoJSON or CSV.", no_args_is_help=True)
app.add_typer(id_app, name="id")
app.add_typer(token_app, name="token")
app.add_typer(config_app, name="config")
app.add_typer(audit_app, name="audit")
app.add_typer(sites_app, name="sites")

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Hub YAML config.")]


def _die(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _load(path: Path) -> config_mod.HubConfig:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        _die(str(exc), 2)
        raise  # unreachable; keeps type checkers informed


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


# -- ids --------------------------------------------------------------------------------------
@id_app.command("check")
def id_check(device_id: str) -> None:
    """Exit 0 if DEVICE_ID is a valid 20-digit ID; else exit 1 with the reason."""
    try:
        ids.parse(device_id)
    except ids.InvalidDeviceId as exc:
        _die(f"invalid ID {device_id!r}: {exc}")
    typer.echo("ok")


@id_app.command("parse")
def id_parse(device_id: str) -> None:
    """Print the ID's fields (civil code, industry, type, network, serial) as JSON."""
    try:
        parsed = ids.parse(device_id)
    except ids.InvalidDeviceId as exc:
        _die(f"invalid ID {device_id!r}: {exc}")
        return
    typer.echo(json.dumps(parsed.describe(), ensure_ascii=False, indent=2))


@id_app.command("new")
def id_new(
    prefix: Annotated[str, typer.Option(help="14-19 digit prefix: center, industry, type, network.")],
    count: Annotated[int, typer.Option(min=1, max=100000)] = 1,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Avoid IDs known to this hub.")] = None,
) -> None:
    """Allocate the next free ID(s) under PREFIX."""
    taken: set[str] = set()
    if config is not None:
        from sqlalchemy import select

        from vms.db import open_store
        from vms.db.models import Device

        cfg = _load(config)
        engine, sessions = open_store(cfg.storage.url())
        with sessions() as s:
            taken.update(s.scalars(select(Device.id).where(Device.id.startswith(prefix))))
        engine.dispose()
    for _ in range(count):
        try:
            new = ids.allocate(prefix, taken)
        except ids.InvalidDeviceId as exc:
            _die(str(exc))
            return
        taken.add(new)
        typer.echo(new)


# -- config -----------------------------------------------------------------------------------
@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the hub configuration."""
    typer.echo(json.dumps(config_mod.schema(), indent=2, ensure_ascii=False))


@config_app.command("check")
def config_check(path: Path) -> None:
    """Validate a config file; print the center tree."""
    cfg = _load(path)
    from vms.centers import LEVEL_NAMES, CenterTree

    for c in CenterTree(cfg.centers):
        typer.echo(
            f"{'  ' * (len(c.path()) - 1)}{c.id}: {c.name} (level {c.level}, {LEVEL_NAMES[c.level]}, "
            f"civil {c.civil_code}{', industries ' + ','.join(c.industries) if c.industries else ''})"
        )
    typer.echo("ok")


# -- serve ------------------------------------------------------------------------------------
@app.command()
def serve(
    config: ConfigOpt,
    host: Annotated[str | None, typer.Option(help="Override server.host")] = None,
    port: Annotated[int | None, typer.Option(help="Override server.port")] = None,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run the hub until interrupted."""
    import uvicorn

    from vms.api import create_app
    from vms.audit import AuditKeyError
    from vms.hub import Hub

    _logging(log_level)
    cfg = _load(config)
    server = cfg.server.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    cfg = cfg.model_copy(update={"server": server})
    try:
        hub = Hub(cfg)
    except AuditKeyError as exc:  # e.g. a key others may read: the file and the fix, no traceback
        _die(f"cannot start: {exc}", 2)
        return
    uvicorn.run(create_app(hub), host=server.host, port=server.port, log_level=log_level.lower(), access_log=False,
                timeout_graceful_shutdown=3)  # open event streams (web pages) never finish by themselves


# -- tokens -----------------------------------------------------------------------------------
@token_app.command("create")
def token_create(
    config: ConfigOpt,
    role: Annotated[str, typer.Option(help="duty | maintenance | police | admin | agent")],
    prefix: Annotated[list[str] | None, typer.Option(help="ID prefix an agent may speak for (repeatable).")] = None,
    name: Annotated[str | None, typer.Option(help="Token name; an agent's name is its agent ID.")] = None,
    expires_days: Annotated[float | None, typer.Option(help="Refused after this many days (default: never).")] = None,
) -> None:
    """Create a token and print it (it is shown only once)."""
    from vms import audit, auth
    from vms.db import open_store

    cfg = _load(config)
    engine, sessions = open_store(cfg.storage.url())
    try:
        token, p = auth.create(sessions, role, name, prefix or [], expires_days)
    except (auth.TokenError, ids.InvalidDeviceId) as exc:
        _die(str(exc), 2)
        return
    import time

    audit.append(
        sessions,
        at=time.time(),
        actor="cli",
        role="admin",
        action="token.create",
        target=p.name,
        detail={"role": p.role.value, "prefixes": list(p.prefixes), "expires_days": expires_days},
    )
    engine.dispose()
    typer.echo(token)


@token_app.command("list")
def token_list(config: ConfigOpt) -> None:
    """Tokens, oldest first: name, role, prefixes, state, expiry and last use (up to a minute behind)."""
    import time

    from sqlalchemy import select

    from vms.db import open_store
    from vms.db.models import Token
    from vms.kernel.timeutil import iso

    cfg = _load(config)
    engine, sessions = open_store(cfg.storage.url())
    now = time.time()
    with sessions() as s:
        for t in s.scalars(select(Token).order_by(Token.created_at)):
            expired = t.expires_at is not None and t.expires_at <= now
            state = "revoked" if t.revoked_at else "expired" if expired else "active"
            typer.echo(f"{t.name}\t{t.role}\t{','.join(t.prefixes or [])}\t{state}\t"
                       f"expires {iso(t.expires_at) or 'never'}\tlast used {iso(t.last_used_at) or 'never'}")
    engine.dispose()


@token_app.command("revoke")
def token_revoke(config: ConfigOpt, name: str) -> None:
    from vms import auth
    from vms.db import open_store

    cfg = _load(config)
    engine, sessions = open_store(cfg.storage.url())
    try:
        auth.revoke(sessions, name)
    except auth.TokenError as exc:
        _die(str(exc))
    engine.dispose()
    typer.echo(f"revoked {name}")


# -- reports ----------------------------------------------------------------------------------
@app.command()
def report(
    config: ConfigOpt,
    center: Annotated[str | None, typer.Option(help="Only this center and its sub-centers.")] = None,
    period: Annotated[str | None, typer.Option(help="1h, 24h, 7d, 30d or a month like 2026-11")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="RFC 3339 with zone, or Unix seconds")] = None,
    to: Annotated[str | None, typer.Option("--to")] = None,
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "csv",
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Availability per center and per device (worst first) for a window."""
    import time

    from vms import reports
    from vms.centers import UnknownCenter
    from vms.hub import Hub
    from vms.kernel.timeutil import BadTime, window

    if fmt not in ("csv", "json"):
        _die("--format must be csv or json", 2)
    cfg = _load(config)
    try:
        start, end = window(period, from_, to, time.time(), cfg.server.timezone)
    except BadTime as exc:
        _die(str(exc), 2)
        return
    hub = Hub(cfg, read_only=True)
    try:
        rep = reports.availability(hub.monitor, start, end, center)
    except UnknownCenter as exc:
        _die(str(exc), 2)
        return
    finally:
        hub.engine.dispose()
    text = reports.to_csv(rep) if fmt == "csv" else json.dumps(rep, ensure_ascii=False, indent=2)
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        typer.echo(text)


# -- clips ------------------------------------------------------------------------------------
@app.command()
def clip(
    device_id: str,
    from_: Annotated[str, typer.Option("--from", help="RFC 3339 with zone, or Unix seconds")],
    to: Annotated[str, typer.Option("--to")],
    output: Annotated[Path, typer.Option("--output", "-o", help="MP4 file; its manifest goes to FILE.json")],
    hub: Annotated[str, typer.Option(help="Hub URL")] = "http://127.0.0.1:8700",
    token: Annotated[str, typer.Option(envvar="VMS_TOKEN", help="A police or admin token")] = "",
    reason: Annotated[str, typer.Option(help="Why (audited)")] = "",
    case: Annotated[str, typer.Option(help="Case number (audited)")] = "",
) -> None:
    """Pull a clip of DEVICE_ID from the hub (audited there), verify its SHA-256, save it with its manifest."""
    from vms.archive.client import ClipClientError, pull_clip

    try:
        job = pull_clip(hub, token, device_id, from_, to, output, reason, case)
    except (ClipClientError, OSError) as exc:
        _die(str(exc))
        return
    except Exception as exc:  # network errors: say what failed, not a traceback
        _die(f"cannot reach the hub at {hub}: {exc}")
        return
    typer.echo(f"{output}: {job['bytes']} bytes, sha256 {job['sha256']}, {len(job['gaps'])} gap(s)")


# -- sites ------------------------------------------------------------------------------------
def _sites_format(path: Path) -> str:
    return "csv" if path.suffix.lower() == ".csv" else "geojson"


@sites_app.command("check")
def sites_check(path: Path, config: ConfigOpt) -> None:
    """Check a GeoJSON or CSV file of sites against the config's centers and district, storing nothing."""
    from vms import sites as geo

    cfg = _load(config)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _die(f"{path}: cannot read: {exc}")
        return
    parse = geo.parse_csv_sites if _sites_format(path) == "csv" else geo.parse_geojson_sites
    try:
        found = parse(text, [c.id for c in _centers(cfg)], cfg.map.bounds())
    except geo.GeoError as exc:
        _die(f"{path}: {exc}")
        return
    kinds = sorted({s.kind.value for s in found})
    typer.echo(f"ok: {len(found)} site(s) of kinds {', '.join(kinds)}")


def _centers(cfg: config_mod.HubConfig) -> list[config_mod.CenterConfig]:
    stack, out = list(cfg.centers), []
    while stack:
        c = stack.pop()
        out.append(c)
        stack.extend(c.children)
    return out


@sites_app.command("import")
def sites_import(
    path: Path,
    hub: Annotated[str, typer.Option(help="Hub URL")] = "http://127.0.0.1:8700",
    token: Annotated[str, typer.Option(envvar="VMS_TOKEN", help="An admin token")] = "",
) -> None:
    """Add or replace the sites of a GeoJSON or CSV file (.csv) through the hub (all or none; audited there)."""
    import httpx

    fmt = _sites_format(path)
    try:
        body = path.read_bytes()
        r = httpx.post(f"{hub.rstrip('/')}/api/v1/sites/import", params={"format": fmt}, content=body, timeout=60,
                       headers={"Authorization": f"Bearer {token}",
                                "Content-Type": "text/csv" if fmt == "csv" else "application/geo+json"})
    except OSError as exc:
        _die(f"{path}: cannot read: {exc}")
        return
    except httpx.HTTPError as exc:
        _die(f"cannot reach the hub at {hub}: {exc}")
        return
    if r.status_code != 200:
        _die(f"hub answered {r.status_code}: {r.json().get('detail', r.text) if r.content else ''}")
    res = r.json()
    typer.echo(f"imported {res['imported']} site(s): {res['created']} new, {res['updated']} replaced")


# -- audit ------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(
    config: ConfigOpt,
    anchor: Annotated[list[Path] | None, typer.Option(
        help="More checkpoints to check against (repeatable): a clip manifest, or JSON lines of checkpoints "
        "collected from the hub's log or a copy of its checkpoints file.")] = None,
) -> None:
    """Check the audit log's hash chain and its signed checkpoints; exit 1 naming every problem: the first
    bad row, rows missing at the end, a chain rebuilt without the key, a checkpoint with a wrong HMAC."""
    from vms import audit
    from vms.db import open_store
    from vms.kernel.timeutil import iso

    cfg = _load(config)
    key_file, checkpoints_file = audit.anchor_files(cfg)
    try:
        key = audit.load_key(key_file, create=False)
    except (audit.AuditKeyError, OSError) as exc:
        _die(f"cannot check the checkpoints: {exc}")
        return
    entries: list[tuple[str, audit.Checkpoint | str]] = []
    for path in ([checkpoints_file] if checkpoints_file.exists() else []) + list(anchor or []):
        try:
            entries += audit.parse_checkpoints(path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            _die(f"cannot read checkpoints from {path}: {exc}")
    problems: list[str] = []
    if key is None and entries:
        problems.append(f"no checkpoint key at {key_file} (audit.key_file): the checkpoints cannot be checked")
    elif key is not None and not checkpoints_file.exists():
        problems.append(f"no checkpoints file at {checkpoints_file} although the key exists: it was removed")
    engine, sessions = open_store(cfg.storage.url())
    try:
        v = audit.verify(sessions)
        report = audit.check_anchors(sessions, key, entries) if key is not None else None
    finally:
        engine.dispose()
    if not v.ok:
        problems.insert(0, f"audit log broken at row {v.first_bad_seq}: {v.reason} "
                           f"({v.rows} rows verified before it)")
    if report is not None:
        problems += report.problems
    if problems:
        _die("\n".join(problems))
    newest = report.newest if report is not None else None
    if newest is None:
        typer.echo(f"ok: {v.rows} rows, chain intact; no signed checkpoint yet (the hub signs them once it runs)")
        return
    typer.echo(f"ok: {v.rows} rows, chain intact; {report.checked if report else 0} signed checkpoint(s) agree, "
               f"the newest (signed {iso(newest.at)}) covers row {newest.seq}; {v.rows - newest.seq} newer row(s) "
               "not covered yet")


@audit_app.command("export")
def audit_export(config: ConfigOpt) -> None:
    """Print the audit log as JSON lines (with hashes, so a copy can be verified elsewhere)."""
    from vms import audit
    from vms.db import open_store

    cfg = _load(config)
    engine, sessions = open_store(cfg.storage.url())
    for row in audit.export(sessions):
        typer.echo(json.dumps(row, ensure_ascii=False))
    engine.dispose()


# -- demo and simulator -------------------------------------------------------------------
@app.command()
def demo(
    cameras: Annotated[int, typer.Option(min=1, max=64, help="Simulated cameras.")] = 8,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Hub port [default: 8700 if free]")] = None,
    data_dir: Annotated[Path, typer.Option(help="Everything the demo writes.")] = Path("data/demo"),
    rtsp_port: Annotated[int | None, typer.Option(min=1, max=65535, help="[default: 8554 if free]")] = None,
    control_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="Simulator fault API [default: 8555 if free]")] = None,
    gb_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="The hub's GB/T 28181 SIP port, UDP and TCP [default: a free one]")] = None,
    gb_control_port: Annotated[int | None, typer.Option(
        min=1, max=65535, help="GB/T 28181 devices' fault API [default: a free one]")] = None,
    levels: Annotated[int, typer.Option(
        min=1, max=2, help="1: one hub for the whole district; 2: a district hub above two town hubs, "
        "linked by GB/T 28181 cascade")] = 1,
) -> None:
    """Run simulator, edge agent and hub together until Ctrl-C; writes DATA_DIR/demo.json.

    With --levels 2 each town's center is a hub of its own (its cameras, agent and GB/T 28181 device)
    registered with the district's hub, which sees, plays and pulls the towns' cameras through the cascade.
    A port not given is the usual one if it is free, else any free one; demo.json lists them all. A port
    given that is in use, or a part that does not start, stops the demo with a message saying why."""
    import signal
    import time

    from vms.demo import Demo

    _logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the demo's own polling while its parts start
    d = Demo(cameras, port, data_dir, rtsp_port, control_port, gb_port=gb_port, gb_control_port=gb_control_port,
             levels=levels)

    def on_term(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    failed: str | None = None
    try:
        info = d.start()
        ports = info["ports"]
        typer.echo(f"hub:        {info['hub_url']}  (API docs at /docs)")
        for town in info.get("towns", []):
            typer.echo(f"town hub:   {town['hub_url']}  ({town['center']}, registered with the district above)")
        typer.echo(f"cameras:    rtsp://127.0.0.1:{ports['rtsp']}/cam/ID  (GB/T 28181 SIP on port {ports['gb_sip']})")
        typer.echo(f"simulator:  {info['camsim_control_url']}/cameras  (POST /cameras/ID/fault)")
        typer.echo(f"tokens, ports and cameras: {data_dir / 'demo.json'}")
        typer.echo("Ctrl-C to stop.")
        while (failed := d.failure()) is None:
            time.sleep(1)
    except KeyboardInterrupt:
        failed = None
    except (RuntimeError, OSError) as exc:
        failed = str(exc)
    finally:
        d.stop()
    if failed:
        _die(f"demo stopped: {failed}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def camsim(ctx: typer.Context) -> None:
    """Simulated RTSP/ONVIF cameras with fault injection (`vms camsim --help` for options)."""
    from camsim.cli import app as camsim_app  # imported on use: it loads PyAV and OpenCV

    camsim_app(ctx.args, prog_name="vms camsim")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
