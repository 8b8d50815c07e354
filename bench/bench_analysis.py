"""Frame-analysis cost on one core, against a baseline decode measured in the same run.

    .venv/bin/python bench/bench_analysis.py [--seconds 12] [--repeat 3]

Prints:
- quality diagnosis on 1080p25 4 Mbps GOP 2 s segments (every keyframe checked): keyframes/s and
  cameras per core, against a keyframe-only decode of the same segments (target >= 0.9 of the
  baseline);
- motion on 640x360 25 fps sub-stream segments analysed at 5 fps (plus every keyframe checked):
  streams per core, against a full decode of the same segments (target >= 0.8);
- µs per check on a 640x360 picture and on the 320x180 analysis picture;
- memory per analysed camera, its learned normal included (target < 1 MB).
Clips are camsim street scenes encoded with PyAV at run time (cached under the temp directory)
and cut into one-GOP MPEG-TS segments, the hub's worst case.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.eval_quality import split
from camsim.clips import ClipParams, ensure_clip
from vms.analysis import checks as C
from vms.analysis.analyzer import DeviceAnalyzer, Picture
from vms.analysis.config import AnalysisConfig
from vms.analysis.motion import MotionDetector
from vms.analysis.sampler import SegmentSampler, Work, plane_view

CACHE = Path(tempfile.gettempdir()) / "vms-bench-analysis"


def segments(params: ClipParams) -> list[Path]:
    clip = ensure_clip(params, "normal", CACHE)
    out = CACHE / clip.stem
    if not out.exists():
        out.mkdir(parents=True)
        split(clip, out)
    return sorted(out.glob("*.ts"))


def testsrc_segment(seconds: float) -> Path:
    """A 1080p 4 Mbps stream of FFmpeg's testsrc2 with a keyframe every 2 s, made with the ffmpeg CLI."""
    out = CACHE / f"testsrc2-1080p-{seconds:g}s.ts"
    if not out.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=1920x1080:rate=25", "-t", str(seconds), "-c:v", "libx264", "-g", "50",
                        "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-y", str(out)], check=True)
    return out


def keyframe_kb(path: Path) -> float:
    with av.open(str(path)) as c:
        sizes = [p.size for p in c.demux(c.streams.video[0]) if p.size and p.is_keyframe]
    return statistics.median(sizes) / 1000


def decode_rate(paths: list[Path], keyframes_only: bool) -> float:
    """Frames/s of a plain decode (Y plane touched as a view): the baseline."""
    n = 0
    t0 = time.perf_counter()
    for p in paths:
        with av.open(str(p)) as c:
            st = c.streams.video[0]
            if keyframes_only:
                st.codec_context.skip_frame = "NONKEY"
            for pkt in c.demux(st):
                if keyframes_only and pkt.size and not pkt.is_keyframe:
                    continue
                for f in st.codec_context.decode(pkt if pkt.size else None):
                    plane_view(f, 0)
                    n += 1
    return n / (time.perf_counter() - t0)


def analysis_rate(paths: list[Path], cfg: AnalysisConfig, count: str) -> float:
    """Keyframes/s (count='keyframes') or frames decoded/s (count='frames') through the sampler."""
    sampler = SegmentSampler(cfg)
    n = 0
    t0 = time.perf_counter()
    for i, p in enumerate(paths):
        rep = sampler.analyse(Work("32058501001320000001", str(p), 1.79e9 + 2 * i, 1.79e9 + 2 * i + 2))
        assert rep.error is None, rep.error
        n += rep.keyframes if count == "keyframes" else rep.frames
    return n / (time.perf_counter() - t0)


def paired(base: Callable[[], float], test: Callable[[], float], repeat: int) -> tuple[float, float, float]:
    """Median baseline rate, median test rate and median of per-round ratios.

    Runs alternate, so a load change on a shared machine hits both sides of a ratio alike.
    """
    b, t = [], []
    for _ in range(repeat):
        b.append(base())
        t.append(test())
    return statistics.median(b), statistics.median(t), statistics.median(x / y for x, y in zip(t, b, strict=True))


def us_per_call(fn: Callable[[], object], n: int = 300) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=12.0, help="length of each test clip")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    cv2.setNumThreads(1)

    print("== quality diagnosis, 1080p25 4 Mbps, GOP 2 s, every keyframe checked (one core)")
    main_params = ClipParams(
        width=1920, height=1080, fps=25, gop_s=2.0, bitrate_kbps=4000, bframes=2, duration_s=args.seconds
    )
    segs = segments(main_params) * 3
    cfg = AnalysisConfig()
    base, rate, ratio = paired(
        lambda: decode_rate(segs, keyframes_only=True), lambda: analysis_rate(segs, cfg, "keyframes"), args.repeat
    )
    kf_per_cam = 1 / main_params.gop_s
    print(f"baseline keyframe-only decode: {base:7.1f} keyframes/s = {base / kf_per_cam:6.1f} cameras/core")
    print(
        f"decode + all checks + coarse motion: {rate:7.1f} keyframes/s = {rate / kf_per_cam:6.1f} cameras/core "
        f"(ratio {ratio:.2f}; target >= 0.90)"
    )

    print(f"   (camsim street clip: keyframes of {keyframe_kb(segs[0]):.0f} KB, almost all of the 4 Mbps; "
          "the decode of such keyframes bounds cameras per core)")
    std = testsrc_segment(args.seconds)
    base2, rate2, ratio2 = paired(
        lambda: decode_rate([std] * 4, keyframes_only=True),
        lambda: analysis_rate([std] * 4, cfg, "keyframes"), args.repeat,
    )
    print(f"same on ffmpeg's testsrc2 at 1080p 4 Mbps GOP 2 s (keyframes of {keyframe_kb(std):.0f} KB): "
          f"baseline {base2 / kf_per_cam:6.1f}, with all checks {rate2 / kf_per_cam:6.1f} cameras/core "
          f"(ratio {ratio2:.2f})")

    print("== motion, 640x360 25 fps sub streams, 5 fps analysed, keyframes checked (one core)")
    sub = ClipParams(width=640, height=360, fps=25, gop_s=2.0, bitrate_kbps=1000, bframes=0, duration_s=args.seconds)
    subsegs = segments(sub) * 3
    base_full, m_rate, m_ratio = paired(
        lambda: decode_rate(subsegs, keyframes_only=False), lambda: analysis_rate(subsegs, cfg, "frames"), args.repeat
    )
    print(f"baseline full decode: {base_full:7.1f} frames/s = {base_full / sub.fps:6.1f} streams/core")
    print(
        f"decode + motion at {cfg.motion.fps:g} fps + checks: {m_rate:7.1f} frames/s = "
        f"{m_rate / sub.fps:6.1f} streams/core (ratio {m_ratio:.2f}; target >= 0.80)"
    )

    print("== µs per call (median of 300), on a decoded 640x360 keyframe and its 320x180 analysis picture")
    with av.open(str(subsegs[0])) as c:
        frame = next(c.decode(video=0))
    y = plane_view(frame, 0)
    for label, g in (("640x360", np.ascontiguousarray(y)), ("320x180", C.analysis_picture(y, 320))):
        means, stds = C.block_stats(g)
        prev = means + 1
        thumb = C.thumbnail(g)
        zeros = np.zeros(means.shape, np.bool_)
        calls: dict[str, Callable[[], object]] = {
            "analysis_picture (from 1080p)": lambda: C.analysis_picture(np.zeros((1080, 1920), np.uint8), 320),
            "block_stats (solid/black)": lambda g=g: C.block_stats(g),
            "luma_stats (too_dark)": lambda g=g: C.luma_stats(g),
            "clipped_share (too_bright)": lambda g=g: C.clipped_share(g, 230),
            "flat_dark_share (occlusion)": lambda m=means, s=stds, z=zeros: C.flat_dark_share(m, s, 3, 80, z),
            "blur_score": lambda g=g: C.blur_score(g),
            "color_cast (+chroma means)": lambda: C.color_cast(*_chroma(frame)),
            "noise_sigma (snow)": lambda g=g: C.noise_sigma(g),
            "stripe_amplitude": lambda g=g: C.stripe_amplitude(g),
            "frozen_diff": lambda m=means, p=prev: C.frozen_diff(m, p),
            "thumbnail+similarity (scene)": lambda g=g, t=thumb: C.similarity(C.thumbnail(g), t),
        }
        an = DeviceAnalyzer(AnalysisConfig())
        an.feed(Picture(0.0, g), 0.0)
        an.feed(Picture(2.0, g), 2.0)
        calls["all checks (DeviceAnalyzer.feed)"] = lambda g=g, an=an: an.feed(Picture(4.0, g), 4.0)
        det = MotionDetector(cfg.motion)
        calls["motion step"] = lambda g=g, det=det: det.step(g)
        print(f"-- {label}")
        for name, fn in calls.items():
            if label == "640x360" or not name.startswith("analysis_picture"):
                print(f"   {name:34s} {us_per_call(fn):8.1f} µs")

    print("== memory per analysed camera")
    cams = 500
    pics = [C.analysis_picture(y, 320) for _ in range(2)]
    tracemalloc.start()  # RSS would hide it: the heap freed by the decoding above is reused first
    sampler = SegmentSampler(cfg)
    for i in range(cams):
        an = sampler.analyser(f"3205850100132{i:07d}")
        for k, g in enumerate(pics * 10):  # 20 keyframes: past the first normal's median, into following
            an.feed(Picture(float(k), g.copy(), inter_bytes=5000.0), float(k))
            if an.motion is not None:
                an.motion.step(g)
    grown = tracemalloc.get_traced_memory()[0] / 1024
    tracemalloc.stop()
    print(
        f"{cams} cameras with state: {grown / 1024:.1f} MB allocated = {grown / cams:.0f} KB per camera "
        "(target < 1 MB); "
        "decoding is per segment, so decoder memory is per worker, not per camera"
    )


def _chroma(frame: av.VideoFrame) -> tuple[float, float]:
    from vms.analysis.sampler import chroma_means

    return chroma_means(frame)


if __name__ == "__main__":
    main()
