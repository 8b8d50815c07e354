"""Pre-encoded H.264 MPEG-TS clips that look enough like a street camera to exercise analysis.

Clips are encoded once with PyAV and cached by their parameters, because live encoding costs 7-16%
of a core per camera while looping a clip costs about 0.3%. Motion is periodic over the clip length
so the loop point is seamless, and the bitrate is capped so streams look like real cameras.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import av
import cv2
import numpy as np

#: Bump when the picture generator changes, so cached clips are rebuilt.
CLIP_VERSION = 2

#: Clip variants: the healthy stream and one per picture fault.
VARIANTS: tuple[str, ...] = ("normal", "black", "freeze", "blur", "cover", "lowfps")

#: Variants encoded at constant quality under the bitrate cap: a black or frozen picture, or one
#: frame a second, costs a real camera far less than its nominal bitrate.
_CONSTANT_QUALITY = frozenset({"black", "freeze", "lowfps"})

Frame = np.ndarray


@dataclass(frozen=True)
class ClipParams:
    """Encoding parameters; cameras with equal parameters share the same clip files."""

    width: int = 640
    height: int = 360
    fps: int = 25
    gop_s: float = 2.0
    bitrate_kbps: int = 1500
    #: B-frames per GOP run; 0 encodes Baseline profile, more encodes High profile.
    bframes: int = 2
    duration_s: float = 10.0
    seed: int = 1

    @property
    def profile(self) -> str:
        return "high" if self.bframes > 0 else "baseline"

    def key(self, variant: str) -> str:
        """Short stable hash of everything that changes the clip's bytes."""
        blob = json.dumps({"v": CLIP_VERSION, "variant": variant, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]

    def filename(self, variant: str) -> str:
        return (
            f"{variant}_{self.width}x{self.height}_{self.fps}fps_{self.profile}"
            f"_{self.bitrate_kbps}k_{self.key(variant)}.ts"
        )


# --------------------------------------------------------------------------- picture generator


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth random field in [0, 1): gives surfaces a texture instead of flat colour."""
    small = rng.random((max(2, h // cell + 2), max(2, w // cell + 2)), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def make_scene(width: int, height: int, seed: int = 1) -> Frame:
    """Static street-like background (RGB uint8): sky, building row, road with lane marks, kerb."""
    rng = np.random.default_rng(seed)
    h, w = height, width
    img = np.zeros((h, w, 3), np.float32)
    horizon = int(h * 0.42)
    # Sky: vertical gradient with faint cloud texture.
    t = np.linspace(0.0, 1.0, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = (1 - t) * np.array([120, 150, 190]) + t * np.array([200, 205, 210])
    img[:horizon] += 25 * (_value_noise(rng, horizon, w, max(8, w // 12))[..., None] - 0.5)
    # Buildings with windows along the horizon.
    x = 0
    while x < w:
        bw = int(rng.integers(w // 14, w // 6))
        top = int(rng.integers(int(h * 0.08), int(h * 0.32)))
        colour = rng.integers(60, 170, 3).astype(np.float32)
        img[top:horizon, x : x + bw] = colour
        for wy in range(top + 6, horizon - 8, max(6, h // 30)):
            for wx in range(x + 4, x + bw - 6, max(7, w // 60)):
                lit = rng.random() < 0.3
                shade = np.array([230, 215, 150]) if lit else colour * 0.45
                img[wy : wy + max(3, h // 90), wx : wx + max(3, w // 160)] = shade
        img[top : top + 2, x : x + bw] = colour * 0.6  # roof edge
        x += bw + int(rng.integers(0, w // 40 + 1))
    # Kerb/sidewalk band and road.
    kerb = horizon + int(h * 0.08)
    img[horizon:kerb] = np.array([150, 145, 135])
    img[horizon:kerb] += 20 * (_value_noise(rng, kerb - horizon, w, 6)[..., None] - 0.5)
    img[kerb:] = np.array([78, 80, 84])
    img[kerb:] += 30 * (_value_noise(rng, h - kerb, w, 4)[..., None] - 0.5)
    img[kerb : kerb + 3] = 200
    # Perspective lane markings converging to a vanishing point above the horizon.
    vp = (w // 2, horizon - h // 10)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    for frac in (-0.6, -0.2, 0.2, 0.6):
        bottom = (int(w / 2 + frac * w * 1.2), h)
        start_y = kerb + 4
        s = (start_y - vp[1]) / (h - vp[1])
        start = (int(vp[0] + (bottom[0] - vp[0]) * s), start_y)
        cv2.line(canvas, start, bottom, (215, 215, 200), max(1, w // 320), cv2.LINE_AA)
    # Fine static grain (asphalt, plaster), then a street lamp pole for a few hard edges.
    grain = rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    canvas = np.clip(canvas.astype(np.float32) + grain, 0, 255).astype(np.uint8)
    px = int(w * 0.8)
    cv2.line(canvas, (px, int(h * 0.15)), (px, kerb + 10), (40, 40, 45), max(2, w // 200))
    cv2.line(canvas, (px, int(h * 0.15)), (px - w // 20, int(h * 0.15)), (40, 40, 45), max(2, w // 200))
    return canvas


@dataclass(frozen=True)
class _Mover:
    """An object crossing the view a whole number of times per clip, so the loop is seamless."""

    y: float  # centre row as a fraction of height
    size: tuple[float, float]  # width, height as fractions of the frame
    laps: int  # crossings per clip; negative runs right-to-left
    colour: tuple[int, int, int]
    phase: float


_MOVERS = (
    _Mover(0.70, (0.16, 0.09), 2, (170, 30, 30), 0.0),
    _Mover(0.84, (0.20, 0.11), -3, (30, 60, 150), 0.4),
    _Mover(0.62, (0.12, 0.07), -1, (220, 220, 215), 0.7),
    _Mover(0.50, (0.025, 0.10), 1, (60, 90, 60), 0.2),  # pedestrian on the kerb
)


def _draw_movers(img: Frame, t: float) -> None:
    """Draw the moving objects at clip phase t in [0, 1)."""
    h, w = img.shape[:2]
    for m in _MOVERS:
        ow, oh = int(m.size[0] * w), int(m.size[1] * h)
        span = w + ow
        x = int(((m.phase + m.laps * t) % 1.0) * span) - ow
        y = int(m.y * h) - oh // 2
        cv2.rectangle(img, (x, y), (x + ow, y + oh), m.colour, -1)
        if ow > oh:  # vehicles: windows and wheels give edges that move
            cv2.rectangle(img, (x + ow // 5, y + 2), (x + 4 * ow // 5, y + oh // 3), (35, 40, 50), -1)
            r = max(2, oh // 5)
            for wx in (x + ow // 5, x + 4 * ow // 5):
                cv2.circle(img, (wx, y + oh), r, (15, 15, 15), -1)


def _osd(img: Frame, index: int, fps: int) -> None:
    """Burn in a camera-style clock and frame counter (white on a dark outline)."""
    secs = index // fps
    text = f"VMS-SIM 2025-01-01 08:{secs // 60:02d}:{secs % 60:02d}  #{index:05d}"
    scale = img.shape[0] / 1000
    org = (int(10 * scale) + 4, int(36 * scale) + 8)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), max(2, int(4 * scale)))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), max(1, int(2 * scale)))


class _SensorNoise:
    """A small bank of noise fields cycled per frame: looks like sensor grain, costs one add."""

    def __init__(self, rng: np.random.Generator, h: int, w: int, sigma: float, bank: int = 8) -> None:
        fields = rng.normal(0.0, sigma, (bank, h, w)).round().astype(np.int16)
        self._fields = [cv2.merge([f, f, f]) for f in fields]
        self._i = 0

    def apply(self, img: Frame) -> Frame:
        self._i = (self._i + 1) % len(self._fields)
        return cv2.add(img, self._fields[self._i], dtype=cv2.CV_8U)


def _cover_mask(h: int, w: int) -> np.ndarray:
    """A dark blob over ~85% of the view, like a bag or tape over the lens, leaving a ragged edge."""
    mask = np.zeros((h, w), np.uint8)
    pts = np.array(
        [[0, 0], [int(w * 0.93), 0], [int(w * 0.88), int(h * 0.4)], [int(w * 0.95), int(h * 0.75)],
         [int(w * 0.7), h], [0, h]],
        np.int32,
    )
    cv2.fillPoly(mask, [pts], 255)
    return mask > 0


def render_frames(params: ClipParams, variant: str) -> Iterable[Frame]:
    """Yield the RGB frames of one clip variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown clip variant {variant!r}; expected one of {VARIANTS}")
    h, w = params.height, params.width
    rng = np.random.default_rng(params.seed + 1000)
    fps = 1 if variant == "lowfps" else params.fps
    n = max(1, round(params.duration_s * fps))
    scene = make_scene(w, h, params.seed)
    mask = _cover_mask(h, w) if variant == "cover" else None
    shade = np.broadcast_to((18 + 10 * np.linspace(0, 1, w))[None, :, None], (h, w, 3)).astype(np.uint8)
    sigma_blur = max(w, h) / 80
    noise = _SensorNoise(rng, h, w, 1.0 if variant in ("blur", "black") else 2.0)
    first: Frame | None = None
    for i in range(n):
        if variant == "black":
            yield noise.apply(np.zeros((h, w, 3), np.uint8))
            continue
        if variant == "freeze" and first is not None:
            yield first
            continue
        img = scene.copy()
        _draw_movers(img, i / n)
        if variant == "blur":  # defocus acts on the optics, before sensor noise and the OSD
            img = cv2.GaussianBlur(img, (0, 0), sigma_blur)
        if mask is not None:
            img[mask] = shade[mask]
        img = noise.apply(img)
        _osd(img, i * params.fps // fps, params.fps)
        if variant == "freeze":
            first = img
        yield img


# --------------------------------------------------------------------------- encoder


def encode_clip(params: ClipParams, variant: str, path: Path) -> Path:
    """Encode one variant to MPEG-TS at `path` (written to a temp file, then renamed: atomic)."""
    fps = 1 if variant == "lowfps" else params.fps
    gop = max(1, round(params.gop_s * fps))
    kbps = params.bitrate_kbps
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".ts.part", dir=path.parent)
    os.close(fd)
    try:
        # At 1 fps a variable-rate TS carries a PCR only once a second, and GStreamer's tsdemux then
        # halves the frame spacing; a constant mux rate adds PCRs (and padding) between frames.
        mux = {"muxrate": str(2 * kbps * 1000)} if fps < 5 else {}
        with av.open(tmp_name, mode="w", format="mpegts", options=mux) as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = params.width, params.height
            stream.pix_fmt = "yuv420p"
            x264 = (
                f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={params.bframes}:"
                f"vbv-maxrate={kbps}:vbv-bufsize={2 * kbps}:repeat-headers=1"
            )
            options: dict[str, Any] = {"preset": "veryfast", "profile": params.profile, "x264-params": x264}
            if variant in _CONSTANT_QUALITY:
                options["crf"] = "23"
            else:
                stream.bit_rate = kbps * 1000
            stream.options = options
            for i, rgb in enumerate(render_frames(params, variant)):
                # BT.601 limited range, which is what players assume for untagged H.264.
                yuv = cast("np.ndarray[Any, np.dtype[np.uint8]]", cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420))
                frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return path


def ensure_clip(params: ClipParams, variant: str, cache_dir: Path | str) -> Path:
    """Return the cached clip for (params, variant), encoding it first if it is missing."""
    path = Path(cache_dir) / params.filename(variant)
    if not path.exists():
        encode_clip(params, variant, path)
    return path


def ensure_clips(
    params: ClipParams, cache_dir: Path | str, variants: Iterable[str] = VARIANTS
) -> dict[str, Path]:
    """Return {variant: clip path} for every requested variant, encoding the missing ones."""
    return {v: ensure_clip(params, v, cache_dir) for v in variants}
