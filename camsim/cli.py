"""`vms camsim`: run N simulated cameras (RTSP/ONVIF, and GB/T 28181 devices with `--gb-server`) until Ctrl-C."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType

import typer

from camsim.clips import ClipParams
from camsim.gb28181 import GbServer, fleet
from camsim.sim import DEFAULT_PREFIX, Simulator, device_ids

app = typer.Typer(help="Simulated RTSP/ONVIF cameras on loopback, with fault injection.")


@app.callback(invoke_without_command=True)
def run(
    cameras: int = typer.Option(4, "--cameras", min=0, max=999, help="Number of RTSP cameras."),
    prefix: str = typer.Option(DEFAULT_PREFIX, "--prefix", help="14-digit GB/T 28181 allocation prefix."),
    rtsp_port: int = typer.Option(8554, "--rtsp-port"),
    control_port: int = typer.Option(8555, "--control-port", help="HTTP fault-injection API."),
    onvif_port: int = typer.Option(18000, "--onvif-port", help="First ONVIF port; camera i gets base + i."),
    no_onvif: bool = typer.Option(False, "--no-onvif", help="Do not serve ONVIF."),
    discovery: bool = typer.Option(False, "--discovery", help="Answer WS-Discovery probes on UDP 3702."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to serve on."),
    data_dir: Path = typer.Option(Path("data/camsim"), "--data-dir", help="Clip cache and server log."),
    width: int = typer.Option(640, "--width"),
    height: int = typer.Option(360, "--height"),
    fps: int = typer.Option(25, "--fps"),
    gop: float = typer.Option(2.0, "--gop", help="Keyframe interval in seconds."),
    bitrate: int = typer.Option(1500, "--bitrate", help="Bitrate cap in kbit/s."),
    bframes: int = typer.Option(2, "--bframes", help="B-frames for High profile cameras."),
    duration: float = typer.Option(10.0, "--duration", help="Clip length in seconds (looped)."),
    username: str = typer.Option("admin", "--username", help="ONVIF user."),
    password: str = typer.Option("secret", "--password", help="ONVIF password."),
    gb_server: str = typer.Option("", "--gb-server", help="HOST:PORT of a GB/T 28181 center: run GB devices."),
    gb_server_id: str = typer.Option("32058500002000000001", "--gb-server-id", help="The center's 20-digit ID."),
    gb_password: str = typer.Option("", "--gb-password", help="The devices' SIP password."),
    gb_cameras: int = typer.Option(1, "--gb-cameras", min=0, max=999, help="GB IPCs (each with one channel)."),
    gb_nvr_channels: int = typer.Option(0, "--gb-nvr-channels", min=0, max=999, help="Channels of a GB NVR (0: none)."),
    gb_transport: str = typer.Option("UDP", "--gb-transport", help="GB signaling: UDP or TCP."),
    gb_keepalive: float = typer.Option(60.0, "--gb-keepalive", min=1, help="GB keepalive interval (s)."),
    gb_control_port: int = typer.Option(8556, "--gb-control-port", help="HTTP fault API of the GB devices."),
) -> None:
    """Serve the cameras and print them as JSON; stop with Ctrl-C or SIGTERM."""
    try:
        ids = device_ids(cameras, prefix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--prefix") from exc
    params = ClipParams(width=width, height=height, fps=fps, gop_s=gop, bitrate_kbps=bitrate,
                        bframes=bframes, duration_s=duration)
    if not cameras and not gb_server:
        raise typer.BadParameter("no cameras: give --cameras N or --gb-server HOST:PORT", param_hint="--cameras")
    gb = []
    if gb_server:
        gb_host, _, gb_port = gb_server.rpartition(":")
        if not gb_host or not gb_port.isdigit() or gb_transport not in ("UDP", "TCP"):
            raise typer.BadParameter("expected HOST:PORT (and --gb-transport UDP or TCP)", param_hint="--gb-server")
        server = GbServer(gb_host, int(gb_port), gb_server_id)
        gb = fleet(server, gb_password, cameras=gb_cameras, nvr_channels=gb_nvr_channels, prefix=prefix[:10],
                   transport=gb_transport, keepalive_s=gb_keepalive, clip=replace(params, bframes=0))
    sim = Simulator(ids, data_dir, rtsp_port=rtsp_port, control_port=control_port,
                    onvif_base_port=None if no_onvif else onvif_port, params=params, host=host,
                    onvif_username=username, onvif_password=password, discovery=discovery,
                    gb_devices=gb, gb_control_port=gb_control_port if gb else None)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    typer.echo(f"making clips in {data_dir} and starting {cameras} cameras...", err=True)
    try:
        with sim:
            typer.echo(json.dumps(sim.list_cameras(), indent=1))
            typer.echo(f"control API: {sim.control_url}/cameras  (Ctrl-C to stop)", err=True)
            if sim.gb_control_url:
                typer.echo(f"GB/T 28181 fault API: {sim.gb_control_url}/cameras", err=True)
            while sim.running:
                time.sleep(0.5)
            typer.echo(f"camera server exited; log tail:\n{sim.log_tail()}", err=True)
            raise typer.Exit(1)
    except KeyboardInterrupt:
        typer.echo("stopping", err=True)
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
