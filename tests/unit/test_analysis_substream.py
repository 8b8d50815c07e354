"""vms/analysis/substream.py: which stream a camera is analysed from, and the motion its main segments get
from its sub stream; the sampler's analyser following the stream it is given."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.analysis.analyzer import Picture
from vms.analysis.config import AnalysisConfig, CameraAnalysis
from vms.analysis.sampler import SegmentSampler, Work
from vms.analysis.substream import NARROW_S, SubStreams, normal_key

DEV = "32058501001320000001"
T = 1_790_000_000.0


def test_a_sub_stream_is_live_until_it_has_been_silent_for_the_stale_time() -> None:
    subs: SubStreams[int] = SubStreams(stale_s=10.0)
    assert not subs.live(DEV, 100.0)
    subs.seen(DEV, 100.0, T + 100.0)
    assert subs.live(DEV, 105.0) and subs.live(DEV, 110.0)
    assert not subs.live(DEV, 110.5)  # silent too long: the main stream is analysed again
    subs.seen(DEV, 111.0, T + 111.0)
    assert subs.live(DEV, 111.0)


def test_main_segments_from_before_the_sub_streams_live_stretch_are_backlog() -> None:
    subs: SubStreams[int] = SubStreams(stale_s=10.0)
    assert not subs.before_live(DEV, T)  # no sub stream: nothing is backlog of it
    subs.seen(DEV, 100.0, T)
    subs.seen(DEV, 102.0, T + 2)  # the same stretch: where it began stays
    assert subs.before_live(DEV, T - 3600) and subs.before_live(DEV, T + 0.4)
    assert not subs.before_live(DEV, T + 2) and not subs.before_live(DEV, T + 60)
    subs.seen(DEV, 200.0, T + 100)  # silent for longer than the stale time: a new stretch begins
    assert subs.before_live(DEV, T + 60) and not subs.before_live(DEV, T + 102)


def test_backlog_work_is_judged_by_nothing_and_leaves_the_cameras_state_alone(tmp_path: Path) -> None:
    """``Work.backlog``: a motion ratio, no events, nothing raised, no normal, and the analyser of the
    live stream untouched (a black screen on old footage must not be raised)."""
    from bench.eval_quality import Case, encode, split

    encode(Case(1, "day", "black_screen"), tmp_path / "clip.ts")
    segs = [p for p, _, _ in split(tmp_path / "clip.ts", tmp_path)]
    sampler = SegmentSampler(AnalysisConfig())
    live = sampler.analyser(DEV, stream="sub")
    reps = [sampler.analyse(Work(DEV, str(p), T + 2 * k, T + 2 * k + 2, segment_id=k, backlog=True))
            for k, p in enumerate(segs[3:9])]
    assert all(r.backlog and r.error is None for r in reps), [r.error for r in reps]
    assert all(r.events == [] and r.raised == {} and r.normal == () for r in reps)
    assert sum(r.motion_ratio is not None for r in reps) >= 5, [r.motion_ratio for r in reps]
    assert sampler.devices[DEV] is live and live.prev == () and live.raised == {}
    # The same segments judged as live footage raise the black screen: the fixture is what it says.
    judged = [sampler.analyse(Work(DEV, str(p), T + 2 * k, T + 2 * k + 2)) for k, p in enumerate(segs[3:9])]
    assert any(e.check == "black_screen" and e.raised for r in judged for e in r.events)


def test_a_main_segment_waits_for_the_sub_segment_that_reaches_its_end_and_takes_the_peak() -> None:
    subs: SubStreams[int] = SubStreams(stale_s=10.0)
    subs.seen(DEV, 0.0, T + 0.0)
    assert subs.motion(DEV, T, T + 2, 0.1, 0.5) == []
    # Main segment 7 covers T..T+4: the sub segment of T+2..T+4 is not analysed yet.
    assert subs.wait_motion(DEV, 7, T, T + 4, 1.0) == []
    assert subs.motion(DEV, T + 2, T + 3.8, 0.3, 1.2) == [(7, 0.3)]  # within the slack of its end
    # A main segment whose sub segments were all analysed before it arrived settles at once.
    subs.motion(DEV, T + 3.8, T + 6, None, 1.5)  # a sub segment without a motion figure
    assert subs.wait_motion(DEV, 8, T + 4, T + 6, 2.0) == [(8, None)]


def test_main_segments_settle_with_what_is_known_when_the_sub_stream_stops() -> None:
    subs: SubStreams[int] = SubStreams(stale_s=10.0)
    subs.seen(DEV, 0.0, T + 0.0)
    subs.motion(DEV, T, T + 2, 0.2, 0.1)
    assert subs.wait_motion(DEV, 1, T, T + 4, 0.2) == []
    assert subs.expire(5.0) == []  # still live
    assert subs.expire(10.5) == [(DEV, 1, 0.2)]
    assert not subs.live(DEV, 10.5)
    assert subs.expire(11.0) == []  # forgotten


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0.5, 6), st.floats(0, 1) | st.none()), max_size=80))
def test_every_waiting_main_segment_settles_once_with_a_peak_of_its_covering_sub_segments(
    subs_in: list[tuple[float, float, float | None]],
) -> None:
    subs: SubStreams[int] = SubStreams(stale_s=10.0)
    subs.seen(DEV, 0.0, T + 0.0)
    settled: list[tuple[int, float | None]] = []
    for k in range(40):  # more than are kept waiting: the oldest settle early
        settled += subs.wait_motion(DEV, k, T + 4 * k, T + 4 * k + 4, 0.0)
    for start, length, ratio in subs_in:
        settled += subs.motion(DEV, T + start, T + start + length, ratio, 0.0)
    settled += [(k, r) for _, k, r in subs.expire(100.0)]
    assert sorted(k for k, _ in settled) == list(range(40))
    kept = subs_in[-64:]  # what the camera remembers
    for k, ratio in settled:
        if ratio is not None:
            assert any(r == ratio and T + s < T + 4 * k + 4 and T + s + n > T + 4 * k for s, n, r in kept)


def test_each_stream_keeps_its_own_normal() -> None:
    assert normal_key(DEV, "main") == DEV  # as before sub streams were analysed: kept normals stay valid
    assert normal_key(DEV, "sub") != DEV


def test_the_sampler_makes_a_new_analyser_when_the_stream_changes_and_keeps_what_is_raised() -> None:
    sampler = SegmentSampler(AnalysisConfig())
    main = sampler.analyser(DEV, (), (("noise", 15, 2.0),), "main")
    g = np.full((180, 320), 120, np.uint8)
    main.feed(Picture(0.0, g), 0.0)
    assert sampler.analyser(DEV, stream="main") is main
    sub = sampler.analyser(DEV, (("blur", 5.0),), (("noise", 15, 1.0),), "sub")
    assert sub is not main and sub.stream == "sub" and sub.prev == ()
    assert sub.raised == {"blur": 5.0} and sub.normal.get("noise", 1) == 1.0


def test_a_camera_can_be_kept_on_its_main_stream() -> None:
    cfg = AnalysisConfig(cameras={DEV: CameraAnalysis(sub_stream=False)})
    assert cfg.sub_stream and not cfg.for_device(DEV).sub_stream
    assert cfg.for_device("32058501001320000002").sub_stream


def test_a_sub_stream_too_narrow_sends_the_camera_back_to_its_main_stream_for_a_while() -> None:
    subs: SubStreams[int] = SubStreams(stale_s=10.0)
    subs.seen(DEV, 0.0, T + 0.0)
    assert subs.wait_motion(DEV, 3, T, T + 4, 0.5) == []
    assert subs.narrow(DEV, 1.0) == [(3, None)]  # the main segment waiting for its motion is let go
    subs.seen(DEV, 2.0, T + 2.0)
    assert subs.refused(DEV, 2.0) and not subs.live(DEV, 2.0)
    assert subs.expire(100.0) == [] and subs.refused(DEV, 100.0)  # remembered while refused
    assert not subs.refused(DEV, 1.0 + NARROW_S)  # then looked at again


def _clip(path: Path, w: int, h: int) -> None:
    """Two seconds of a moving gradient, a keyframe a second (MPEG-TS)."""
    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("libx264", rate=10)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": "ultrafast", "x264-params": "keyint=10:min-keyint=10:scenecut=0"}
        x = np.arange(w, dtype=np.uint8)
        for i in range(20):
            img = np.repeat(np.tile((x + 5 * i)[None, :], (h, 1))[:, :, None], 3, axis=2)
            fr = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            fr.pts = i
            out.mux(st.encode(fr))
        out.mux(st.encode(None))


def test_the_sampler_judges_nothing_from_a_sub_stream_narrower_than_the_analysis_picture(tmp_path: Path) -> None:
    narrow, wide = tmp_path / "narrow.ts", tmp_path / "wide.ts"
    _clip(narrow, 160, 90)
    _clip(wide, 320, 180)
    sampler = SegmentSampler(AnalysisConfig())
    main = sampler.analyser(DEV, stream="main")
    rep = sampler.analyse(Work(DEV, str(narrow), T, T + 2, stream="sub"))
    assert rep.narrow and rep.keyframes == 0 and rep.events == [] and rep.error is None
    assert sampler.devices[DEV] is main  # the camera's state (from its main stream) is left alone
    rep = sampler.analyse(Work(DEV, str(wide), T, T + 2, stream="sub"))
    assert not rep.narrow and rep.keyframes == 2 and rep.stream == "sub" and rep.end == T + 2
    assert sampler.devices[DEV].stream == "sub"
    rep = sampler.analyse(Work(DEV, str(narrow), T + 2, T + 4))  # a small main stream is analysed as it is
    assert not rep.narrow and rep.keyframes == 2
