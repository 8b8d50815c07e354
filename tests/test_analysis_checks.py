"""Quality checks and motion: every check on its injected defect and on clean footage.

The clips come from the evaluation set (bench/eval_quality.py): camera-like street scenes made
and H.264-encoded at test time, cut into segments and analysed as the hub does.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from bench.eval_quality import GOP_S, OFF, ON, Case, CaseResult, frames, run_case
from vms.analysis import checks as C
from vms.analysis.analyzer import DeviceAnalyzer, Picture, Verdict
from vms.analysis.config import CHECKS, AnalysisConfig, CheckName, Hysteresis, MotionConfig
from vms.analysis.motion import MotionDetector

DEFECT_CASES = [Case(1 + i % 3, ("day", "busy", "grainy")[i % 3], check) for i, check in enumerate(CHECKS)]
# The checks that read night and noise-free pictures differently, at night and on a still scene:
# a dark view is not a black screen, glare is over-exposure, blur under grain, a cast on a dim view,
# an OSD that matches in any direction.
DARK_CHECKS = ("black_screen", "too_dark", "too_bright", "occlusion", "blur", "color_cast", "scene_change")
DEFECT_CASES += [Case(4, "night", c) for c in DARK_CHECKS] + [Case(5, "still", c) for c in DARK_CHECKS]
CLEAN_CASES = [Case(2, "night"), Case(3, "lights"), Case(1, "dusk"), Case(5, "still")]


@pytest.fixture(scope="module")
def results() -> dict[str, CaseResult]:
    """All clips of this module (about a minute), two processes at a time."""
    todo = DEFECT_CASES + CLEAN_CASES
    with ProcessPoolExecutor(2) as ex:
        return {r.case.name: r for r in ex.map(run_case, todo)}


@pytest.mark.parametrize("case", DEFECT_CASES, ids=lambda c: c.name)
def test_each_check_raises_on_its_defect_only_and_clears(case: Case, results: dict[str, CaseResult]) -> None:
    r = results[case.name]
    assert [c for c, _ in r.raised] == [case.defect], r.raised
    raised_at = r.raised[0][1]
    n = AnalysisConfig().hysteresis_for(case.defect).raise_after  # type: ignore[arg-type]
    assert ON <= raised_at <= ON + (n - 1 + 2) * GOP_S  # within two keyframes after the hysteresis
    assert [c for c, at in r.cleared if at >= OFF] == [case.defect]


@pytest.mark.parametrize("case", CLEAN_CASES, ids=lambda c: c.name)
def test_clean_footage_raises_nothing(case: Case, results: dict[str, CaseResult]) -> None:
    r = results[case.name]
    assert r.keyframes >= 12
    assert r.raised == [] and r.cleared == []


def _gray(case: Case, t_want: float) -> npt.NDArray[np.uint8]:
    for t, rgb in frames(case):
        if t >= t_want:
            g = np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), np.uint8)
            return C.analysis_picture(g, 320)
    raise AssertionError("clip too short")


def test_hysteresis_needs_n_bad_and_m_good_samples() -> None:
    cfg = AnalysisConfig(checks=["black_screen"], hysteresis=Hysteresis(raise_after=3, clear_after=2))
    an = DeviceAnalyzer(cfg)
    black = np.full((180, 320), 16, np.uint8)
    scene = _gray(Case(1, "day"), 0.0)
    seq = [black, black, scene, black, black, black, scene, black, scene, scene]
    changes = [(i, c.raised) for i, g in enumerate(seq) for c in an.feed(Picture(float(i), g), float(i))]
    # one good sample in between restarts the count; one bad sample between good ones holds it
    assert changes == [(5, True), (9, False)]


def test_black_picture_masks_the_checks_it_would_fool() -> None:
    an = DeviceAnalyzer(AnalysisConfig())
    black = np.full((180, 320), 16, np.uint8)
    cv2.putText(black, "2025-01-01 20:00:00", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 235, 1)  # OSD stays
    v = an.verdicts(Picture(0.0, black))
    assert v["black_screen"][0] is True
    assert set(v) == {"signal_loss", "black_screen", "solid_screen"}  # no "blur", "frozen", "too_dark"


def test_a_raised_whole_picture_defect_masks_the_checks_of_what_it_shows_until_it_clears() -> None:
    """A camera found too dark and then a little brighter (just over the limit, still raised) is not
    also judged for a cover, blur or a turn: its dark picture would fool them. Once it clears, they are."""
    an = DeviceAnalyzer(AnalysisConfig())
    day = [_gray(Case(1, "day"), t) for t in (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)]
    for i, g in enumerate(day[:4]):
        assert [c for c, v in an.verdicts(Picture(2.0 * i, g)).items() if v.bad] == []
    dark = np.asarray(cv2.convertScaleAbs(day[4], alpha=0.12, beta=0), np.uint8)
    changes = [c for t in (8.0, 10.0) for c in an.feed(Picture(t, dark), t)]
    assert [(c.check, c.raised) for c in changes] == [("too_dark", True)]
    covered = day[5].copy()
    covered[:, : int(covered.shape[1] * 0.65)] = 38  # dark and flat over most of the picture
    v = an.verdicts(Picture(12.0, covered))
    assert not v["too_dark"].bad  # this sample alone is bright enough: it counts toward clearing
    assert "occlusion" not in v and "blur" not in v and "scene_change" not in v
    cleared = [c for t in (12.0, 14.0) for c in an.feed(Picture(t, day[5]), t)]
    assert [(c.check, c.raised) for c in cleared] == [("too_dark", False)]
    assert an.verdicts(Picture(16.0, covered))["occlusion"].bad


def test_metrics_move_the_right_way() -> None:
    g = _gray(Case(1, "day"), 0.0)
    blurred = np.asarray(cv2.GaussianBlur(g, (0, 0), 3), np.uint8)
    assert C.blur_score(blurred) > C.blur_score(g) + 0.15
    noisy = np.clip(g + np.random.default_rng(1).normal(0, 25, g.shape), 0, 255).astype(np.uint8)
    assert C.noise_sigma(noisy) > 3 * C.noise_sigma(g)
    bars = np.clip(g + 20 * np.sin(np.arange(180) / 2.0)[:, None], 0, 255).astype(np.uint8)
    assert C.stripe_amplitude(bars) > 2 * C.stripe_amplitude(g)
    assert C.frozen_diff(g, g) == 0.0 and C.frozen_diff(g, noisy) > 5
    assert C.similarity(C.thumbnail(g), C.thumbnail(g)) == pytest.approx(1.0)
    assert C.color_cast(128, 128) == 0.0 and C.color_cast(100, 150) > 30


def _night_views(defect: str) -> tuple[list[npt.NDArray[np.uint8]], npt.NDArray[np.uint8]]:
    """Four normal night pictures (2 s apart) and one with ``defect``, before encoding, in limited range."""
    case = Case(4, "night", defect)

    def limited(t: float) -> npt.NDArray[np.uint8]:
        return np.asarray(cv2.convertScaleAbs(_gray(case, t), alpha=219 / 255, beta=16), np.uint8)

    return [limited(t) for t in (0.0, 2.0, 4.0, 6.0)], limited(10.0)


def _verdicts_after(normal: list[npt.NDArray[np.uint8]], pic: Picture) -> dict[CheckName, Verdict]:
    an = DeviceAnalyzer(AnalysisConfig())
    for i, g in enumerate(normal):
        assert [c for c, v in an.verdicts(Picture(2.0 * i, g)).items() if v.bad] == []
    return an.verdicts(pic)


def test_a_night_view_far_too_dark_is_not_a_black_screen() -> None:
    normal, dark = _night_views("too_dark")
    black = np.full_like(dark, 16)
    cv2.putText(black, "2025-01-01 20:00:10  CAM-01", (5, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.3, 235, 1)  # OSD stays
    v = _verdicts_after(normal, Picture(10.0, dark))
    assert v["too_dark"][0] and not v["black_screen"][0]
    v = _verdicts_after(normal, Picture(10.0, black))
    assert v["black_screen"][0] and "too_dark" not in v  # the OSD matches the learned view; the median ignores it


def test_blur_under_night_grain_is_blur_not_a_cover() -> None:
    normal, blurred = _night_views("blur")
    th = AnalysisConfig().thresholds
    assert max(C.blur_score(g) for g in normal) + th.blur_rise <= C.blur_score(blurred)  # above its normal
    v = _verdicts_after(normal, Picture(10.0, blurred))
    assert v["blur"][0] and not v["occlusion"][0]


@pytest.mark.parametrize("condition", ["day", "night"])
def test_a_defocus_under_grain_is_read_past_the_sharp_osd(condition: str) -> None:
    """A dim view with grain, defocused, and the camera's OSD laid on it after the lens, sharp whatever
    the focus. The OSD's white text is the strongest gradient of the view: when the score was a share
    of the summed gradient it took a third of the defocus's rise away (0.09 of 0.26 left)."""
    rng = np.random.default_rng(3)
    dim = _gray(Case(4 if condition == "night" else 1, condition), 0.0).astype(np.float32) * 0.35 + 10

    def shot(view: npt.NDArray[np.float32], osd: bool) -> npt.NDArray[np.uint8]:
        g = np.clip(view + rng.normal(0, 4, view.shape), 0, 255).astype(np.uint8)
        if osd:
            for colour, thickness in ((0, 3), (235, 1)):  # white text on a black border
                cv2.putText(g, "2026-09-21 14:13:38  CAM-01", (6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour,
                            thickness)
        return g

    soft = cv2.GaussianBlur(dim, (0, 0), 2.5)
    rise = {osd: C.blur_score(shot(soft, osd)) - C.blur_score(shot(dim, osd)) for osd in (False, True)}
    assert rise[False] > 2 * AnalysisConfig().thresholds.blur_rise
    assert rise[True] >= 0.7 * rise[False], rise


def test_a_cover_just_under_its_limit_is_not_a_turned_camera() -> None:
    """A night view whose lower half is a flat dark lawn, then a dark cover over 65 % of the lens: the
    cover on the lawn cannot be told, so it makes 0.33 of the view, under the 0.35 limit (the night
    street's sub stream sat there), and the view's layout is gone as after a turn. It was raised as a
    turned camera; it is left to the cover check, which finds it once the cover reaches the limit."""
    rng = np.random.default_rng(5)
    layout = cv2.resize(rng.uniform(20, 75, (18, 32)).astype(np.float32), (320, 180), interpolation=cv2.INTER_CUBIC)
    layout[90:] = 30.0  # the lawn

    def shot(view: npt.NDArray[np.float32], cover: float = 0.0) -> npt.NDArray[np.uint8]:
        view = view.copy()
        view[:, : int(320 * cover)] = 38.0
        return np.clip(view + rng.normal(0, 1.0, view.shape), 0, 255).astype(np.uint8)

    th = AnalysisConfig().thresholds
    normal = [shot(layout) for _ in range(4)]
    v = _verdicts_after(normal, Picture(8.0, shot(layout, 0.65)))
    assert th.occlusion_keep_share <= v["occlusion"].value < th.occlusion_min_share, v["occlusion"]
    assert "scene_change" not in v and not any(x.bad for x in v.values()), v
    assert _verdicts_after(normal, Picture(8.0, shot(layout, 0.8)))["occlusion"].bad
    # A turn shows another view, not a flat one: still a turn.
    other = cv2.resize(rng.uniform(20, 75, (18, 32)).astype(np.float32), (320, 180), interpolation=cv2.INTER_CUBIC)
    v = _verdicts_after(normal, Picture(8.0, shot(other)))
    assert v["scene_change"].bad and not v["occlusion"].bad, v


def test_a_keyframe_the_encoder_starved_does_not_say_the_snow_is_gone() -> None:
    """A sub stream at its bit-rate cap under snow: every other keyframe is starved (a third of the
    camera's normal size) and its grain quantised away. Those said "no snow" and broke the run of bad
    samples, so the snow was found 7 keyframes late on the night street. They hold the counters now, for
    at most ``clear_after`` in a row: a camera whose keyframes stay small after the snow still clears."""
    rng = np.random.default_rng(7)
    an = DeviceAnalyzer(AnalysisConfig())

    def shot(t: float, sigma: float) -> npt.NDArray[np.uint8]:
        return np.clip(_gray(Case(1, "day"), t) + rng.normal(0, sigma, (180, 320)), 0, 255).astype(np.uint8)

    changes = [c for k in range(5) for c in an.feed(Picture(2.0 * k, shot(2.0 * k, 1.0), key_bytes=20000), 2.0 * k)]
    assert changes == []
    raised = [c for k, (sigma, size) in enumerate([(12.0, 20000), (1.0, 7000), (12.0, 20000)], start=5)
              for c in an.feed(Picture(2.0 * k, shot(2.0 * k, sigma), key_bytes=size), 2.0 * k)]
    assert [(c.check, c.raised, c.at) for c in raised] == [("snow_noise", True, 14.0)]
    # The snow ends but the keyframes stay small: two are held, then they count and clear it.
    cleared = [(c.check, c.at) for k in range(8, 12)
               for c in an.feed(Picture(2.0 * k, shot(2.0 * k, 1.0), key_bytes=7000), 2.0 * k) if not c.raised]
    assert cleared == [("snow_noise", 22.0)]


def test_snow_quantised_under_its_limit_is_not_learned_as_the_view() -> None:
    """A dim view, mostly a flat wall, then snow. At a sub stream's bit-rate cap the encoder smooths the
    snow: its grain reads under the limit while the blocks keep most of its texture, and a starved keyframe
    holds the counters. Those samples were learned as the normal view, which then took the wall for
    textured: once the snow went, the wall read as a cover (the held-out dim wall's sub stream), and a
    cover kept the view from being learned again, so it never cleared."""
    rng = np.random.default_rng(11)
    view = np.full((180, 320), 50.0, np.float32)
    view[:, :112] = cv2.resize(rng.uniform(30, 110, (9, 12)).astype(np.float32), (112, 180),
                               interpolation=cv2.INTER_NEAREST)  # a third of the view has a sharp layout

    def shot(grain: float, smooth: float = 0.0) -> npt.NDArray[np.uint8]:
        noise = rng.normal(0, grain, view.shape).astype(np.float32)
        if smooth:  # snow the encoder smoothed: large in the blocks' std, small in the noise estimate
            noise += cv2.GaussianBlur(rng.normal(0, smooth, view.shape).astype(np.float32), (0, 0), 1.2)
        return np.clip(view + noise, 0, 255).astype(np.uint8)

    an = DeviceAnalyzer(AnalysisConfig())
    steps = [(shot(1.2), 20000) for _ in range(6)] + [(shot(12.0), 20000) for _ in range(2)]  # healthy, snow
    steps += [(shot(2.0, 30.0), size) for size in (14000, 14000, 7000)]  # quantised; the last one starved
    steps += [(shot(1.2), 20000) for _ in range(8)]  # the snow is gone
    changes = [(c.check, c.raised) for k, (g, size) in enumerate(steps)
               for c in an.feed(Picture(2.0 * k, g, key_bytes=size), 2.0 * k)]
    assert changes == [("snow_noise", True), ("snow_noise", False)], changes
    assert an.values["occlusion"] < AnalysisConfig().thresholds.occlusion_keep_share


def test_cast_ratio_reads_the_same_cast_alike_by_day_and_night() -> None:
    def yuv_means(gain: float) -> tuple[float, float, float]:
        """Mean Y, Cb, Cr in limited range, as the encoder gives them, of a green-cast street view."""
        rgb = next(f for t, f in frames(Case(1, "day")) if t >= 0)
        cast = np.clip(rgb.astype(np.float32) * gain * np.array([0.55, 1.0, 0.55], np.float32), 0, 255)
        y, cr, cb = cv2.split(cv2.cvtColor(cast.astype(np.uint8), cv2.COLOR_RGB2YCrCb).astype(np.float32))
        return (
            16 + 219 / 255 * float(y.mean()),
            128 + 224 / 255 * (float(cb.mean()) - 128),
            128 + 224 / 255 * (float(cr.mean()) - 128),
        )

    (y1, u1, v1), (y2, u2, v2) = yuv_means(1.0), yuv_means(0.42)
    assert C.color_cast(u2, v2) < 0.5 * C.color_cast(u1, v1)  # in chroma levels the night cast looks weak
    r1, r2 = C.cast_ratio(u1, v1, y1), C.cast_ratio(u2, v2, y2)
    assert min(r1, r2) >= AnalysisConfig().thresholds.cast_shift and abs(r1 - r2) < 0.1 * r1


def test_block_similarity_ignores_the_osd_of_a_turned_night_camera() -> None:
    case = Case(4, "night", "scene_change")
    here, turned = _gray(case, 6.0), _gray(case, 10.0)
    assert C.similarity(C.thumbnail(here), C.thumbnail(_gray(case, 4.0))) > 0.8
    assert C.similarity(C.thumbnail(turned), C.thumbnail(here)) < AnalysisConfig().thresholds.scene_min_similarity
    assert C.block_similarity(C.thumbnail(here), C.thumbnail(here)).shape == (C.GRID[1], C.GRID[0])


GRAIN = 3.0


def _lit_wall(lamp_x: float, t: float, gain: float = 1.0) -> npt.NDArray[np.uint8]:
    """A plain wall lit by a lamp at ``lamp_x`` (share of the width), sensor grain, an OSD clock."""
    h, w = 180, 320
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 60 + 140 * np.exp(-(((xx - lamp_x * w) / (0.6 * w)) ** 2 + ((yy - 0.3 * h) / h) ** 2))
    rng = np.random.default_rng(int(t))
    g = np.clip(16 + gain * light + rng.normal(0, GRAIN, light.shape), 0, 255).astype(np.uint8)
    cv2.putText(g, f"2026-01-01 08:00:{int(t):02d}  CAM-01", (5, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 235, 1)
    return g


def test_a_turned_camera_facing_a_plain_wall_is_found_by_the_light_across_it() -> None:
    """A plain wall has no layout but the OSD clock's, which matches wherever the camera points; the
    part of the wall it turned to is lit otherwise. The light's shift decides, and a darker iris on the
    same view (a gain) does not move it."""
    an = DeviceAnalyzer(AnalysisConfig())
    for i in range(8):
        v = an.verdicts(Picture(2.0 * i, _lit_wall(0.2, 2.0 * i)))
        assert [c for c, x in v.items() if x.bad] == [], v
    th = AnalysisConfig().thresholds
    assert an.ref.layout_share() < th.scene_broad_layout
    assert not an.verdicts(Picture(16.0, _lit_wall(0.2, 16.0, gain=0.7)))["scene_change"].bad
    turned = an.verdicts(Picture(18.0, _lit_wall(0.9, 18.0)))["scene_change"]
    assert turned.bad and turned.threshold == th.scene_light_shift and turned.value >= th.scene_light_shift


def test_the_light_does_not_turn_a_camera_whose_view_has_a_layout() -> None:
    """A lamp switched on beside a street view moves the light across it as much as a turn of a plain
    wall would; the view still shows its layout, so it has not moved."""
    an = DeviceAnalyzer(AnalysisConfig())
    day = [_gray(Case(1, "day"), t) for t in (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0)]
    for i, g in enumerate(day[:8]):
        assert [c for c, x in an.verdicts(Picture(2.0 * i, g)).items() if x.bad] == []
    assert an.ref.layout_share() >= AnalysisConfig().thresholds.scene_broad_layout
    h, w = day[8].shape
    lamp = 90 * np.exp(-(((np.arange(w)[None, :] - 0.85 * w) / (0.25 * w)) ** 2)) * np.ones((h, 1))
    lit = np.clip(day[8] + lamp, 0, 255).astype(np.uint8)
    assert an.ref.light_shift(C.block_stats(lit)[0]) >= AnalysisConfig().thresholds.scene_light_shift
    assert not an.verdicts(Picture(16.0, lit))["scene_change"].bad


def test_motion_boxes_and_recalibration_after_light_change() -> None:
    det = MotionDetector(MotionConfig())
    base = _gray(Case(1, "day"), 0.0)
    assert det.step(base).recalibrated  # first frame: background learned
    for _ in range(3):
        assert det.step(base).ratio == 0.0
    moved = base.copy()
    cv2.rectangle(moved, (100, 100), (140, 130), 250, -1)
    res = det.step(moved)
    assert 0.01 < res.ratio < 0.1
    x, y, w, h = max(res.boxes, key=lambda b: b[2] * b[3])
    assert x <= 100 and y <= 100 and x + w >= 140 and y + h >= 130
    lights_on = np.asarray(cv2.convertScaleAbs(base, alpha=1.6, beta=30), np.uint8)
    res = det.step(lights_on)
    assert res.recalibrated and res.ratio == 0.0  # light, not motion
    assert det.step(lights_on).ratio == 0.0


def test_per_camera_exceptions_reach_that_cameras_analysis(
    tmp_path: Path, black_segments: list[bytes]
) -> None:
    """The same black segments: the default camera raises black_screen, one whose checks leave it
    out raises nothing, one with a lower black threshold sees a solid dark screen instead."""
    from vms.analysis.sampler import SegmentSampler, Work

    plain, no_black, strict = "32058501001320000001", "32058501001320000002", "32058501001320000003"
    cfg = AnalysisConfig.model_validate({"workers": 1, "cameras": {
        no_black: {"checks": ["signal_loss", "stripes"]},
        strict: {"thresholds": {"black_max_luma": 0}},
    }})
    sampler = SegmentSampler(cfg)
    raised: dict[str, set[str]] = {plain: set(), no_black: set(), strict: set()}
    for k, data in enumerate(black_segments):
        path = tmp_path / f"{k}.ts"
        path.write_bytes(data)
        for dev, seen in raised.items():
            rep = sampler.analyse(Work(dev, str(path), 2.0 * k, 2.0 * (k + 1)))
            seen.update(e.check for e in rep.events if e.raised)
    assert "black_screen" in raised[plain]
    assert raised[no_black] == set()
    assert "black_screen" not in raised[strict] and raised[strict] & {"solid_screen", "too_dark"}
