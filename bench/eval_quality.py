"""Evaluation set for the video-quality checks, made at run time, and the table it scores.

    .venv/bin/python bench/eval_quality.py [--seeds 6] [--first-seed 1] [--jobs 2]

Clips look like street cameras (camsim's textured street scene, moving vehicles and pedestrians,
sensor grain, a ticking OSD clock) under clean conditions (day, night noise, dusk fading, sudden
light changes, busy traffic, an empty scene with almost no sensor grain) and with one defect
injected from ``ON`` to ``OFF`` seconds. Each clip is encoded with libx264 (GOP 2 s, bitrate capped
like a camera), cut into one-GOP MPEG-TS segments as the agent does, and analysed by
:class:`vms.analysis.sampler.SegmentSampler` exactly as the hub does. Clips run at 5 fps:
keyframes, which are all the quality checks read, are the same as at 25 fps, and encoding costs
five times less.

Defect clips cycle through the conditions day, busy, grainy, night, still and dusk with the seed;
``--first-seed 7`` gives a held-out set of other scenes, traffic and grain under the same conditions.
Defects are what the camera would show: a black screen, a blue "NO VIDEO" screen, an exposure gain
(too dark: x0.12; too bright: x2.2 plus a veil, by day and at dusk), a dark cover over most of the
lens, defocus, a colour gain per channel, snow, interference bars, a held picture, a turned camera.
Too bright at night is glare instead (see ``_glare``): a night camera already runs at full gain, so a
gain on its dark picture brightens it to a normal day level without clipping anything, which is not
over-exposure; real night over-exposure is a light flooding the lens and clipping a wide bloom.

Scoring per check, per clip: a defect clip scores a true positive if its check is raised between
``ON`` and ``OFF`` (+ two keyframes), a false negative otherwise; any other check raised in any clip
is a false positive for that check. Delay is counted in keyframes after the hysteresis
(``raise_after - 1`` bad samples are required by design). Targets: precision and recall >= 0.95,
zero raises on clean clips, delay <= 2 keyframes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from camsim.clips import make_scene
from vms.analysis.config import CHECKS, AnalysisConfig
from vms.analysis.sampler import SegmentSampler, Work

W, H, FPS, GOP_S = 640, 360, 5, 2.0
CLIP_S, ON, OFF = 26.0, 8.0, 18.0
T0 = 1_790_000_000.0  # media time of the first frame
CLEAN = ("day", "night", "dusk", "lights", "busy", "still")
DEFECT_CONDITIONS = ("day", "busy", "grainy", "night", "still", "dusk")
Frame = np.ndarray


@dataclass(frozen=True)
class Case:
    seed: int
    condition: str
    defect: str | None = None

    @property
    def name(self) -> str:
        return f"{self.defect or 'clean'}-{self.condition}-s{self.seed}"


# --------------------------------------------------------------------------- pictures


def _movers(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(count):
        out.append(
            {
                "y": rng.uniform(0.55, 0.9),
                "w": rng.uniform(0.06, 0.22),
                "h": rng.uniform(0.05, 0.12),
                "speed": rng.choice([-1, 1]) * rng.uniform(0.04, 0.15),
                "phase": rng.uniform(0, 1),
                "colour": tuple(int(c) for c in rng.integers(20, 235, 3)),
            }
        )
    return out


def _draw_movers(img: Frame, movers: list[dict[str, Any]], t: float) -> None:
    h, w = img.shape[:2]
    for m in movers:
        ow, oh = int(m["w"] * w), int(m["h"] * h)
        x = int(((m["phase"] + m["speed"] * t) % 1.0) * (w + ow)) - ow
        y = int(m["y"] * h) - oh // 2
        cv2.rectangle(img, (x, y), (x + ow, y + oh), m["colour"], -1)
        cv2.rectangle(img, (x + ow // 5, y + 2), (x + 4 * ow // 5, y + oh // 3), (35, 40, 50), -1)
        for wx in (x + ow // 5, x + 4 * ow // 5):
            cv2.circle(img, (wx, y + oh), max(2, oh // 5), (15, 15, 15), -1)


def _osd(img: Frame, t: float) -> None:
    s = int(t)
    text = f"2025-01-01 20:{s // 60:02d}:{s % 60:02d}  CAM-01"
    cv2.putText(img, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3)
    cv2.putText(img, text, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)


def _gain(case: Case, t: float) -> float:
    if case.condition == "night":
        return 0.42
    if case.condition == "dusk":
        return 1.0 - 0.55 * t / CLIP_S
    if case.condition == "lights":
        return 0.6 if ON <= t < OFF else 1.0
    return 1.0


def _cover_mask(rng: np.random.Generator) -> np.ndarray:
    share = rng.uniform(0.55, 0.85)
    pts = [(0, 0), (int(W * share * 1.1), 0), (int(W * share), int(H * 0.5)), (int(W * share * 1.15), H), (0, H)]
    if rng.random() < 0.5:
        pts = [(W - x, y) for x, y in pts]
    mask = np.zeros((H, W), np.uint8)
    cv2.fillPoly(mask, [np.array(pts, np.int32)], 255)
    return mask > 0


def _glare(seed: int) -> Frame:
    """Light added before the sensor clips, in RGB levels: a bloom around a source near the lens plus veil.

    Over-exposure at night is a light, not a gain: the camera already runs at full gain, so an
    exposure fault cannot brighten the whole view further; headlights turned at the lens, or the
    camera's own IR reflected by rain or a web on the dome, flood it and clip a wide bloom white.
    """
    g = np.random.default_rng(10_000 + seed)  # its own stream: the clip's grain stays as it was
    cx, cy = g.uniform(0.25, 0.75) * W, g.uniform(0.35, 0.75) * H
    radius = g.uniform(0.35, 0.5) * W
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    bloom = 500.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / radius**2)
    return (bloom + 40.0)[..., None].astype(np.float32)


def frames(case: Case) -> Iterator[tuple[float, Frame]]:
    """(t, RGB frame) of one clip."""
    rng = np.random.default_rng(case.seed * 100 + CLEAN.index(case.condition) if case.condition in CLEAN else case.seed)
    pano = make_scene(int(W * 1.5), H, seed=case.seed)
    movers = _movers(rng, {"busy": 8, "still": 0}.get(case.condition, 3))
    # "still": an empty scene from a camera with strong noise reduction, the hardest case for "frozen"
    sigma = {"night": 6.0, "grainy": 4.0, "still": 0.5}.get(case.condition, 2.0)
    cover = _cover_mask(rng)
    cover_colour = np.array(rng.integers(20, 60, 3), np.float32)
    cast = [np.array(g, np.float32) for g in ((1.0, 0.75, 0.4), (0.55, 1.0, 0.55), (0.55, 0.75, 1.3))]
    glare = _glare(case.seed) if case.defect == "too_bright" and case.condition == "night" else None
    held: Frame | None = None
    for i in range(int(CLIP_S * FPS)):
        t = i / FPS
        bad = case.defect is not None and ON <= t < OFF
        x0 = int(W * 0.45) if bad and case.defect == "scene_change" else int(W * 0.1)
        img = pano[:, x0 : x0 + W].copy()
        _draw_movers(img, movers, t)
        f = img.astype(np.float32) * _gain(case, t)
        if case.condition == "night":
            f[: int(H * 0.42)] *= 0.3  # dark sky
        if bad:
            f = _inject(case, f, rng, cover, cover_colour, cast) if glare is None else f + glare
        if bad and case.defect == "frozen":
            if held is None:
                held = np.clip(f + rng.normal(0, sigma, f.shape), 0, 255).astype(np.uint8)
            out = held.copy()
        else:
            out = np.clip(f + rng.normal(0, sigma, (H, W, 1)), 0, 255).astype(np.uint8)
        if not (bad and case.defect == "solid_screen"):
            _osd(out, t)  # the encoder burns the clock in, whatever the sensor sees
        yield t, out


def _inject(
    case: Case, f: Frame, rng: np.random.Generator, cover: np.ndarray, cover_colour: np.ndarray, cast: list[np.ndarray]
) -> Frame:
    d = case.defect
    if d == "black_screen":
        return np.zeros_like(f)
    if d == "solid_screen":
        screen = np.empty(f.shape, np.uint8)
        screen[:] = (10, 20, 160)
        cv2.putText(screen, "NO VIDEO", (W // 3, H // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
        return screen.astype(np.float32)
    if d == "too_dark":
        return f * 0.12
    if d == "too_bright":
        return f * 2.2 + 90
    if d == "occlusion":
        out = f.copy()
        shade = cover_colour * np.linspace(0.85, 1.15, W, dtype=np.float32)[None, :, None]
        out[cover] = np.broadcast_to(shade, f.shape)[cover]
        return out
    if d == "blur":
        return cv2.GaussianBlur(f, (0, 0), W * 0.01)
    if d == "color_cast":
        return f * cast[case.seed % 3]
    if d == "snow_noise":
        out = f + rng.normal(0, 30, f.shape[:2])[..., None]
        salt = rng.random(f.shape[:2]) < 0.02
        out[salt] = rng.choice([0.0, 255.0], size=(int(salt.sum()), 1))
        return out
    if d == "stripes":
        period = (14.0, 20.0, 26.0)[case.seed % 3]
        phase = rng.uniform(0, 2 * math.pi)
        if case.seed % 2:
            wave = 18 * np.sin(2 * math.pi * np.arange(H) / period + phase)[:, None, None]
        else:
            wave = 18 * np.sin(2 * math.pi * np.arange(W) / period + phase)[None, :, None]
        return f + wave
    return f  # frozen, scene_change (handled by the caller), signal_loss (segments replaced)


# --------------------------------------------------------------------------- encoding


def encode(case: Case, path: Path) -> None:
    """H.264 MPEG-TS, GOP 2 s, ~1.5 Mbps-at-25-fps quality under a VBV cap, like camsim's clips."""
    gop = int(GOP_S * FPS)
    with av.open(str(path), "w", format="mpegts") as c:
        st = c.add_stream("libx264", rate=FPS)
        st.width, st.height, st.pix_fmt = W, H, "yuv420p"
        st.options = {
            "preset": "veryfast",
            "crf": "23",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=2:vbv-maxrate=1500:vbv-bufsize=3000",
        }
        for i, (_, rgb) in enumerate(frames(case)):
            fr = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            fr.pts = i
            c.mux(st.encode(fr))
        c.mux(st.encode(None))


def split(path: Path, out_dir: Path) -> list[tuple[Path, float, float]]:
    """Cut at keyframes into MPEG-TS segments (stream copy), as the agent does: (path, start, end)."""
    segs: list[tuple[Path, float, float]] = []
    with av.open(str(path)) as src:
        ins = src.streams.video[0]
        out: Any = None
        ost: Any = None
        start = 0.0
        for pkt in src.demux(ins):
            if pkt.pts is None:
                continue
            t = float(pkt.pts * pkt.time_base)
            if pkt.is_keyframe:
                if out is not None:
                    out.close()
                    segs[-1] = (segs[-1][0], segs[-1][1], T0 + t - start)
                if not segs:
                    start = t
                p = out_dir / f"{len(segs):04d}.ts"
                out = av.open(str(p), "w", format="mpegts")
                ost = out.add_stream_from_template(ins)
                segs.append((p, T0 + t - start, T0 + t - start + GOP_S))
            if out is not None:
                pkt.stream = ost
                out.mux(pkt)
        if out is not None:
            out.close()
    return segs


# --------------------------------------------------------------------------- running and scoring


@dataclass
class CaseResult:
    case: Case
    raised: list[tuple[str, float]] = field(default_factory=list)  # (check, seconds into the clip)
    cleared: list[tuple[str, float]] = field(default_factory=list)
    keyframes: int = 0
    #: Analysed from another stream than the case's (a sub stream too narrow is left for the main one).
    fallback: str | None = None


def run_case(case: Case, cfg: AnalysisConfig | None = None, work_dir: Path | None = None) -> CaseResult:
    cfg = cfg or AnalysisConfig()
    with tempfile.TemporaryDirectory(dir=work_dir) as d:
        clip = Path(d) / "clip.ts"
        encode(case, clip)
        segs = split(clip, Path(d))
        sampler = SegmentSampler(cfg)
        res = CaseResult(case)
        for p, start, end in segs:
            if case.defect == "signal_loss" and ON <= start - T0 < OFF:
                p.write_bytes(os.urandom(188 * 50))  # the media is gone: nothing decodable arrives
            rep = sampler.analyse(Work("32058501001320000001", str(p), start, end))
            res.keyframes += rep.keyframes
            for e in rep.events:
                (res.raised if e.raised else res.cleared).append((e.check, round(e.at - T0, 3)))
    return res


def cases(seeds: int, first: int = 1) -> list[Case]:
    """Clean clips of every condition and one clip per check, for seeds ``first`` .. ``first + seeds - 1``."""
    todo = range(first, first + seeds)
    out = [Case(s, c) for s in todo for c in CLEAN]
    k = len(DEFECT_CONDITIONS)
    out += [Case(s, DEFECT_CONDITIONS[(s - 1) % k], d) for s in todo for d in CHECKS]
    return out


def score(
    results: list[CaseResult], cfg: AnalysisConfig, on: float = ON, off: float = OFF, gop_s: float = GOP_S
) -> tuple[dict[str, dict[str, Any]], int]:
    """Per check: true/false positives, misses, delays; and the raises on clean clips."""
    table: dict[str, dict[str, Any]] = {c: {"tp": 0, "fn": 0, "fp": 0, "delays": [], "cleared": 0} for c in CHECKS}
    clean_alarms = 0
    for r in results:
        target = r.case.defect
        for check, at in r.raised:
            if check == target and on <= at < off + 2 * gop_s:
                continue
            table[check]["fp"] += 1
            if target is None:
                clean_alarms += 1
        if target is None:
            continue
        hits = [at for check, at in r.raised if check == target and on <= at < off + 2 * gop_s]
        row = table[target]
        if hits:
            row["tp"] += 1
            n = cfg.hysteresis_for(target).raise_after  # type: ignore[arg-type]
            row["delays"].append(round((hits[0] - on) / gop_s) - (n - 1))
            if any(check == target and at >= off for check, at in r.cleared):
                row["cleared"] += 1
        else:
            row["fn"] += 1
    return table, clean_alarms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6, help="clips per check; conditions cycle with the seed")
    ap.add_argument("--first-seed", type=int, default=1, help="first seed; 7 with --seeds 6 is a held-out set")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--verbose", action="store_true", help="print every clip's raises")
    args = ap.parse_args()
    cfg = AnalysisConfig()
    todo = cases(args.seeds, args.first_seed)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as ex:
        results = list(ex.map(run_case, todo))
    took = time.perf_counter() - t0
    if args.verbose:
        for r in results:
            print(f"{r.case.name:32s} raised={r.raised} cleared={r.cleared}")
    table, clean_alarms = score(results, cfg)
    n_clean = sum(1 for c in todo if c.defect is None)
    print(
        f"evaluation set: seeds {args.first_seed}-{args.first_seed + args.seeds - 1}, "
        f"{len(todo)} clips ({n_clean} clean, {len(todo) - n_clean} with a defect), "
        f"{W}x{H}, GOP {GOP_S:g} s, defect from {ON:g} s to {OFF:g} s; {took:.0f} s on {args.jobs} process(es)"
    )
    print_table(table, clean_alarms)


def print_table(table: dict[str, dict[str, Any]], clean_alarms: int) -> None:
    print(
        f"{'check':14s} {'clips':>5s} {'TP':>3s} {'FN':>3s} {'FP':>3s} {'precision':>9s} {'recall':>6s} "
        f"{'delay(kf after hysteresis)':>27s} {'cleared':>7s}"
    )
    worst_p = worst_r = 1.0
    for check, row in table.items():
        tp, fn, fp = row["tp"], row["fn"], row["fp"]
        p = tp / (tp + fp) if tp + fp else 1.0
        rc = tp / (tp + fn) if tp + fn else 1.0
        worst_p, worst_r = min(worst_p, p), min(worst_r, rc)
        d = row["delays"]
        dtxt = f"max {max(d)} mean {sum(d) / len(d):.1f}" if d else "-"
        print(f"{check:14s} {tp + fn:5d} {tp:3d} {fn:3d} {fp:3d} {p:9.2f} {rc:6.2f} {dtxt:>27s} {row['cleared']:7d}")
    print(
        f"false alarms on clean clips: {clean_alarms} (target 0); worst precision {worst_p:.2f}, "
        f"worst recall {worst_r:.2f} (target >= 0.95)"
    )


if __name__ == "__main__":
    main()
