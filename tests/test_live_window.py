"""The live window's HLS numbering: sequence, discontinuities, target duration, backlog."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vms.live.window import Format, LiveWindow, SegmentRef, render_playlist

T0 = 1_790_000_000.0
H264 = Format("h264", 640, 360, 0)


def seg(i: int, start: float, dur: float = 4.0) -> SegmentRef:
    return SegmentRef(i, start, start + dur, Path(f"/x/{i}.ts"), start + dur + 0.2)


def fmt(pts_s: float, codec: str = "h264", w: int = 640) -> Format:
    return Format(codec, w, 360, round(pts_s * 90_000))


def tags(text: str, name: str) -> list[str]:
    return re.findall(rf"^#{name}:?(.*)$", text, re.M)


def test_contiguous_segments_number_consecutively_without_discontinuity() -> None:
    w = LiveWindow(3)
    for i in range(5):
        assert w.append(seg(i + 1, T0 + 4 * i), fmt(10 + 4 * i)) is not None
    entries = w.playlist_entries()
    assert [e.seg.id for e in entries] == [3, 4, 5]
    assert [e.seq for e in entries] == [entries[0].seq + k for k in range(3)]
    assert not any(e.discontinuity for e in entries)
    text = render_playlist(entries, w.target, token="vms_a_b/c")
    assert tags(text, "EXT-X-TARGETDURATION") == ["4"]
    assert tags(text, "EXT-X-MEDIA-SEQUENCE") == [str(entries[0].seq)]
    assert "segments/3.ts?token=vms_a_b%2Fc" in text.splitlines()
    assert "#EXT-X-DISCONTINUITY\n" not in text
    assert tags(text, "EXTINF") == ["4.000,"] * 3


@pytest.mark.parametrize(
    ("second", "why"),
    [
        ((seg(2, T0 + 10.0), fmt(14)), "time gap (camera away for 6 s)"),
        ((seg(2, T0 + 4.0), fmt(0.0)), "timestamps restarted (camera reconnected)"),
        ((seg(2, T0 + 4.0), fmt(4.0, w=1280)), "resolution changed"),
        ((seg(2, T0 + 4.0), fmt(4.0, codec="hevc")), "codec changed"),
    ],
)
def test_discontinuities(second: tuple[SegmentRef, Format], why: str) -> None:
    w = LiveWindow(4)
    w.append(seg(1, T0), fmt(0.0))
    e = w.append(*second)
    assert e is not None and e.discontinuity, why
    w.append(seg(3, second[0].end), Format(second[1].codec, second[1].width, 360, (second[1].first_pts or 0) + 360_000))
    text = render_playlist(w.playlist_entries(), w.target)
    lines = text.splitlines()
    assert lines.count("#EXT-X-DISCONTINUITY") == 1
    assert lines.index("#EXT-X-DISCONTINUITY") < lines.index("segments/2.ts") and lines.index(
        "#EXT-X-DISCONTINUITY"
    ) > lines.index("segments/1.ts")


def test_discontinuity_sequence_follows_the_sliding_window() -> None:
    w = LiveWindow(2)
    w.append(seg(1, T0), fmt(0))
    w.append(seg(2, T0 + 100), fmt(100))  # gap: discontinuity
    first = render_playlist(w.playlist_entries(), w.target)
    w.append(seg(3, T0 + 104), fmt(104))
    second = render_playlist(w.playlist_entries(), w.target)
    # Segment 2 is the second discontinuity domain in both playlists.
    ds1 = int(tags(first, "EXT-X-DISCONTINUITY-SEQUENCE")[0])
    ds2 = int(tags(second, "EXT-X-DISCONTINUITY-SEQUENCE")[0])
    assert ds2 == ds1 + 1 and "#EXT-X-DISCONTINUITY\n" not in second  # now first in window: counted, no tag
    ms1 = int(tags(first, "EXT-X-MEDIA-SEQUENCE")[0])
    ms2 = int(tags(second, "EXT-X-MEDIA-SEQUENCE")[0])
    assert ms2 == ms1 + 1


def test_backlog_segments_do_not_enter_the_live_window() -> None:
    w = LiveWindow(3)
    w.append(seg(10, T0 + 600), fmt(600))
    assert w.append(seg(11, T0), fmt(0)) is None  # delivered late from the agent's spool
    assert w.append(seg(12, T0 + 600), fmt(600)) is None  # same start again
    assert [e.seg.id for e in w.entries] == [10]


def test_target_duration_covers_every_segment_and_never_shrinks() -> None:
    w = LiveWindow(2)
    w.append(seg(1, T0, 4.0), None)
    w.append(seg(2, T0 + 4, 6.6), None)  # a long GOP: 7 s
    w.append(seg(3, T0 + 10.6, 4.0), None)
    w.append(seg(4, T0 + 14.6, 4.0), None)
    assert w.target == 7  # segment 2 slid out, the target stays
    assert max(e.seg.duration for e in w.playlist_entries()) <= w.target


def test_sequence_numbers_move_forward_across_a_restart() -> None:
    before = LiveWindow(3)
    for i in range(500):  # a long run of 1 s segments
        before.append(seg(i + 1, T0 + i, 1.0), None)
    after = LiveWindow(3)  # the hub restarted 5 s later
    e = after.append(seg(9999, T0 + 505, 1.0), None)
    newest = before.newest
    assert e is not None and newest is not None and e.seq > newest.seq


def test_empty_playlist_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one segment"):
        render_playlist([], 4)
