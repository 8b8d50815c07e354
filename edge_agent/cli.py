"""``edge-agent``: discover cameras, or run the agent from a config file or from flags."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path

import typer
from pydantic import ValidationError

from .config import AgentConfig, CameraConfig, ConfigError, format_errors, load

app = typer.Typer(add_completion=False, no_args_is_help=True, help="VMS edge agent.")


@app.command()
def discover(
    timeout: float = typer.Option(3.0, help="Seconds to wait for WS-Discovery answers (and each ONVIF query)."),
    username: str = typer.Option("", envvar="ONVIF_USERNAME", help="ONVIF user."),
    password: str = typer.Option("", envvar="ONVIF_PASSWORD", help="ONVIF password."),
    host: list[str] = typer.Option(
        [], "--host", help="HOST[:PORT] of an ONVIF device to query directly (another subnet or VLAN, where "
        "WS-Discovery does not reach); repeat for more. Port 80 if not given.",
    ),
    multicast: bool | None = typer.Option(
        None, "--multicast/--no-multicast", help="WS-Discovery on this network segment; default: on without "
        "--host, off with it.",
    ),
) -> None:
    """Probe for ONVIF cameras and print them as JSON; why a device could not be read is logged to stderr."""
    from .config import OnvifHost
    from .discovery import discover as run_discovery

    hosts: list[OnvifHost] = []
    for text in host:
        try:
            hosts.append(OnvifHost.parse(text))
        except ValidationError as exc:
            raise typer.BadParameter(f"{text!r}: {format_errors(exc)}", param_hint="--host") from None
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--host") from None
    cams = run_discovery(username, password, timeout, multicast=not hosts if multicast is None else multicast,
                         hosts=list({h.address: h for h in hosts}.values()))
    typer.echo(json.dumps([c.model_dump() for c in cams], indent=2))


@app.command()
def run(
    config: Path | None = typer.Option(None, "--config", "-c", help="Agent YAML config."),
    hub: str | None = typer.Option(None, help="Hub base URL (instead of --config)."),
    token: str | None = typer.Option(None, envvar="VMS_AGENT_TOKEN", help="Agent bearer token."),
    camera: list[str] = typer.Option([], help="RTSP URL of a camera; repeat for more."),
    sub: list[str] = typer.Option(
        [], help='Sub-stream RTSP URL of the --camera at the same position (live view only; "" for none).'
    ),
    id_prefix: str | None = typer.Option(None, help="14-digit prefix to allocate device IDs from."),
    data_dir: Path = typer.Option(Path("./agent-data"), help="Registry and spool directory."),
    segment_seconds: float = typer.Option(4.0, help="Target segment length."),
    log_level: str = typer.Option("INFO", help="DEBUG, INFO, WARNING, ERROR."),
) -> None:
    """Relay cameras to the hub until interrupted."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns what matters
    try:
        if config is not None:
            cfg = load(config)
        else:
            if not hub or not token:
                raise typer.BadParameter("give --config, or --hub and --token with one or more --camera")
            if len(sub) > len(camera):
                raise typer.BadParameter(f"{len(sub)} --sub for {len(camera)} --camera: each --sub pairs with "
                                         "the --camera at its position")
            subs = [*(x or None for x in sub), *[None] * (len(camera) - len(sub))]
            cfg = AgentConfig(hub_url=hub, token=token, id_prefix=id_prefix, data_dir=data_dir,
                              segment_seconds=segment_seconds,
                              cameras=[CameraConfig(url=u, sub_url=s) for u, s in zip(camera, subs, strict=True)])
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except ValidationError as exc:
        typer.echo(f"invalid options:\n{format_errors(exc)}", err=True)
        raise typer.Exit(2) from None
    from .agent import Agent, AgentError
    from .registry import RegistryError

    async def _main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(_main())
    except (AgentError, RegistryError) as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
