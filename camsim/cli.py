"""`vms camsim`: run N simulated cameras until Ctrl-C (the lead mounts `app` into the main CLI)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import FrameType

import typer

from camsim.clips import ClipParams
from camsim.sim import DEFAULT_PREFIX, Simulator, device_ids

app = typer.Typer(help="Simulated RTSP/ONVIF cameras on loopback, with fault injection.")


@app.callback(invoke_without_command=True)
def run(
    cameras: int = typer.Option(4, "--cameras", min=1, max=999, help="Number of cameras."),
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
) -> None:
    """Serve the cameras and print them as JSON; stop with Ctrl-C or SIGTERM."""
    try:
        ids = device_ids(cameras, prefix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--prefix") from exc
    params = ClipParams(width=width, height=height, fps=fps, gop_s=gop, bitrate_kbps=bitrate,
                        bframes=bframes, duration_s=duration)
    sim = Simulator(ids, data_dir, rtsp_port=rtsp_port, control_port=control_port,
                    onvif_base_port=None if no_onvif else onvif_port, params=params, host=host,
                    onvif_username=username, onvif_password=password, discovery=discovery)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    typer.echo(f"making clips in {data_dir} and starting {cameras} cameras...", err=True)
    try:
        with sim:
            typer.echo(json.dumps(sim.list_cameras(), indent=1))
            typer.echo(f"control API: {sim.control_url}/cameras  (Ctrl-C to stop)", err=True)
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
