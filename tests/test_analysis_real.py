"""The quality checks on real footage and on a foreign camera's awkward stream: nothing to raise.

The real clip is made at test time from OpenCV's sample footage, fetched from the Debian package
``opencv-doc`` into the evaluation's cache (see ``bench/eval_real.py``), encoded like a camera and
run through :class:`SegmentSampler` and through a hub process, as the hub analyses uploads.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest

from bench.eval_quality import split
from bench.eval_real import SCENES, FootageUnavailable, RealCase, clip, footage, run_case
from tests.conftest import wait_until
from vms.analysis.analyzer import DeviceAnalyzer, Picture
from vms.analysis.config import AnalysisConfig
from vms.analysis.sampler import SegmentSampler, Work

DEV = "32058501001320000001"
PREFIX = "32058501"


@pytest.fixture(scope="module")
def real_footage() -> None:
    try:
        footage()
    except FootageUnavailable as exc:
        pytest.skip(f"real footage unavailable: {exc}")


@pytest.mark.parametrize("scene", ["street", "wall"])
def test_a_clean_real_clip_raises_nothing(real_footage: None, scene: str) -> None:
    """60 s of a real street and of a still indoor wall (flat areas, little motion): no check raised,
    not blur at the first keyframe, not frozen on the still scene."""
    r = run_case(RealCase(next(s for s in SCENES if s.name == scene)))
    assert r.keyframes >= 28
    assert r.raised == [], r.raised


def test_a_real_clip_raises_the_fault_it_shows(real_footage: None) -> None:
    """The same scene frozen from 20 s to 40 s: frozen is raised within two keyframes and clears."""
    r = run_case(RealCase(next(s for s in SCENES if s.name == "wall"), "frozen"))
    assert [c for c, _ in r.raised] == ["frozen"], r.raised
    assert 20 <= r.raised[0][1] <= 26
    assert [c for c, at in r.cleared if at >= 40] == ["frozen"]


def test_a_camera_turned_from_a_plain_wall_to_another_part_of_it_is_found(real_footage: None) -> None:
    """The still indoor wall, the camera turned to another part of it from 20 s to 40 s: the wall has
    hardly any layout, only the OSD clock's, and was missed until the light across it was compared."""
    r = run_case(RealCase(next(s for s in SCENES if s.name == "wall"), "scene_change"))
    assert r.raised == [("scene_change", r.raised[0][1])] and 20 <= r.raised[0][1] <= 24, r.raised
    assert [c for c, at in r.cleared if at >= 40] == ["scene_change"], r.cleared


@pytest.mark.parametrize("defect", ["occlusion", "blur"])
def test_a_cover_or_a_defocus_under_night_grain_is_found(real_footage: None, defect: str) -> None:
    """The tree at low light with a cover over the lens, or defocused, from 20 s to 40 s, the sensor's
    grain over it as a real camera shows it. The cover is as grainy as the view (it was taken for a
    turned camera) and the grain, sharp whatever the focus, outweighed the tree's smeared edges."""
    r = run_case(RealCase(next(s for s in SCENES if s.name == "tree-dim"), defect))
    assert r.raised == [(defect, r.raised[0][1])] and 20 <= r.raised[0][1] <= 24, r.raised
    assert [c for c, at in r.cleared if at >= 40] == [defect], r.cleared


def test_a_cover_over_most_of_a_night_view_stays_found_and_is_nothing_else(real_footage: None) -> None:
    """The night street's sub stream with a dark cover over 65 % of the lens from 20 s to 40 s. A third
    of the night view is dark and flat anyway, so the cover's share sat at the limit and went bad and
    good in turns (before: raised at 30 s, and the covered picture raised ``frozen`` at 24 s). Where the
    clip's encoding leaves the share just under the limit (FFmpeg's scaling and x264 differ by processor),
    the view's lost layout had it raised as a turned camera first; the cover check decides it now, found
    within 2 keyframes after the hysteresis (raised by 26 s), the delay the checks are held to."""
    r = run_case(RealCase(next(s for s in SCENES if s.name == "street-night"), "occlusion", "sub"))
    assert r.raised == [("occlusion", r.raised[0][1])] and 20 <= r.raised[0][1] <= 26, r.raised
    assert [c for c, at in r.cleared if at >= 40] == ["occlusion"], r.cleared


def test_a_real_clip_through_the_hub_raises_no_alert(real_footage: None, make_hub_process: Any,
                                                     tmp_path: Path) -> None:
    """A real street clip uploaded segment by segment to a hub process: analysed, nothing raised."""
    segs = split(clip(RealCase(next(s for s in SCENES if s.name == "street"))), tmp_path)[:12]
    hp = make_hub_process(analysis={"workers": 1})
    agent = {"Authorization": f"Bearer {hp.token('agent', PREFIX, name='agent-1')}"}
    duty = {"Authorization": f"Bearer {hp.token('duty')}"}
    hp.start()
    base = time.time() - 2 * len(segs)
    with httpx.Client(base_url=hp.url, timeout=10) as c:
        for k, (path, _, _) in enumerate(segs):
            data = path.read_bytes()
            r = c.put(f"/api/v1/agents/segments/{DEV}", params={"start": base + 2 * k, "duration": 2.0},
                      content=data, headers={**agent, "X-VMS-SHA256": hashlib.sha256(data).hexdigest()})
            assert r.status_code == 201, r.text

        def analysed() -> float:
            text = c.get("/metrics", headers=duty).text
            return next(float(line.split()[-1]) for line in text.splitlines()
                        if line.startswith("vms_analysis_segments_analysed_total"))

        wait_until(lambda: analysed() >= len(segs), 90, "every segment analysed")
        q = c.get(f"/api/v1/devices/{DEV}/quality", headers=duty).json()
        assert q["defects"] == [] and q["events"] == [], q
        alerts = c.get("/api/v1/alerts", params={"kind": "device_degraded"}, headers=duty).json()["alerts"]
        assert alerts == []


def _foreign_camera(path: Path, seconds: float = 30.0, fps: int = 25) -> None:
    """A foreign camera's stream: High profile with B-frames, a dark room (luma about 20-40 in limited
    range, darker in the corners and on the floor), a bright lamp moving across it, a burnt-in clock,
    little grain (the encoder flattens it)."""
    w, h = 640, 360
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    room = 26 - 16 * (((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2) * 2  # vignetted dark wall
    room[int(h * 0.7):] -= 6  # a darker floor
    rng = np.random.default_rng(3)
    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": "veryfast", "profile": "high",
                      "x264-params": f"keyint={2 * fps}:min-keyint={2 * fps}:scenecut=0:bframes=3:"
                                     "vbv-maxrate=1500:vbv-bufsize=3000:crf=23"}
        for i in range(int(seconds * fps)):
            t = i / fps
            img = room + rng.normal(0, 0.8, room.shape).astype(np.float32)
            cx = int(w * (0.5 + 0.4 * math.sin(t / 3)))
            cy = int(h * (0.5 + 0.2 * math.cos(t / 2)))
            g = np.clip(img, 0, 255).astype(np.uint8)
            cv2.circle(g, (cx, cy), 18, 250, -1)
            s = int(t)
            cv2.putText(g, f"2026-01-01 03:{s // 60:02d}:{s % 60:02d}", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                        235, 1)
            rgb = cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)
            fr = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            fr.pts = i
            out.mux(st.encode(fr))
        out.mux(st.encode(None))


def test_a_dark_foreign_camera_with_b_frames_raises_nothing(tmp_path: Path) -> None:
    """A dark scene with a moving bright object is content, not a black screen, from the first keyframe."""
    _foreign_camera(tmp_path / "cam.ts")
    segs = split(tmp_path / "cam.ts", tmp_path)
    sampler = SegmentSampler(AnalysisConfig())
    raised = []
    keyframes = 0
    for p, start, end in segs:
        rep = sampler.analyse(Work(DEV, str(p), start, end))
        assert rep.error is None, rep.error
        keyframes += rep.keyframes
        raised += [(e.check, round(e.at - start, 1)) for e in rep.events if e.raised]
    assert keyframes >= 14
    assert raised == []


def test_a_black_screen_with_an_osd_at_first_sight_is_black_and_blue_is_solid() -> None:
    """A camera black from the first keyframe (lens cap, dead sensor) is caught without a learned normal;
    a dark blue "no video" screen is a solid screen, not black."""
    black = np.full((180, 320), 16, np.uint8)
    cv2.putText(black, "2026-01-01 03:00:00", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 235, 1)
    an = DeviceAnalyzer(AnalysisConfig())
    v = an.verdicts(Picture(0.0, black))
    assert v["black_screen"].bad and not v["solid_screen"].bad
    blue = np.full((180, 320), 30, np.uint8)  # luma of (0, 0, 128) in limited range
    v = DeviceAnalyzer(AnalysisConfig()).verdicts(Picture(0.0, blue, u_mean=184.0, v_mean=116.0))
    assert v["solid_screen"].bad and not v["black_screen"].bad


def test_a_camera_installed_out_of_focus_is_caught_at_first_sight() -> None:
    """No normal yet: the absolute guard on the blur score catches a view no focused lens gives."""
    rng = np.random.default_rng(1)
    sharp = np.clip(cv2.resize(rng.integers(0, 255, (45, 80)).astype(np.uint8), (320, 180),
                               interpolation=cv2.INTER_NEAREST), 16, 235).astype(np.uint8)
    soft = np.asarray(cv2.GaussianBlur(sharp, (0, 0), 6), np.uint8)
    an = DeviceAnalyzer(AnalysisConfig())
    grain = [np.clip(soft + rng.normal(0, 1.0, soft.shape), 0, 255).astype(np.uint8) for _ in range(3)]
    changes = [c for i, g in enumerate(grain) for c in an.feed(Picture(2.0 * i, g), 2.0 * i)]
    assert [(c.check, c.raised) for c in changes] == [("blur", True)]
    assert changes[0].threshold == AnalysisConfig().thresholds.blur_min and changes[0].normal is None


def test_raised_checks_carry_the_normal_and_the_threshold() -> None:
    """Blur after a learned normal: the change says the metric, the camera's normal and the limit."""
    rng = np.random.default_rng(2)
    base = cv2.resize(rng.integers(40, 200, (90, 160)).astype(np.uint8), (320, 180), interpolation=cv2.INTER_LINEAR)
    an = DeviceAnalyzer(AnalysisConfig(checks=["blur"]))
    for i in range(5):
        noisy = np.clip(base + rng.normal(0, 1.5, base.shape), 0, 255).astype(np.uint8)
        assert an.feed(Picture(2.0 * i, noisy), 2.0 * i) == []
    soft = np.asarray(cv2.GaussianBlur(base, (0, 0), 2.5), np.uint8)
    changes = [c for i in range(5, 7) for c in an.feed(Picture(2.0 * i, soft), 2.0 * i)]
    assert [c.check for c in changes] == ["blur"]
    c = changes[0]
    assert c.normal is not None and c.threshold is not None and c.value is not None
    assert c.value >= c.threshold == pytest.approx(c.normal + AnalysisConfig().thresholds.blur_rise)


def test_the_normal_survives_a_restart() -> None:
    """An analyser made anew from the reported normal judges relative to it at once."""
    cfg = AnalysisConfig(checks=["snow_noise"])
    rng = np.random.default_rng(4)
    base = cv2.resize(rng.integers(40, 200, (90, 160)).astype(np.uint8), (320, 180), interpolation=cv2.INTER_LINEAR)
    an = DeviceAnalyzer(cfg)
    for i in range(5):
        an.feed(Picture(2.0 * i, np.clip(base + rng.normal(0, 1.0, base.shape), 0, 255).astype(np.uint8)), 2.0 * i)
    state = an.normal.state()
    assert state["noise"][0] == 5
    fresh = DeviceAnalyzer(cfg)
    fresh.resume({}, state)
    snow = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    v_fresh = fresh.verdicts(Picture(20.0, snow))["snow_noise"]
    assert v_fresh.bad and v_fresh.normal == pytest.approx(state["noise"][1])
    v_new = DeviceAnalyzer(cfg).verdicts(Picture(20.0, snow))["snow_noise"]
    assert not v_new.bad  # without its normal only the absolute guard applies, and moderate snow is below it
