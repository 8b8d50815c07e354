"""Clip downloads share one sending rate (``archive.clip_send_mbit_s``, issue 16 figure): on a real
event loop, pieces asked together go in turns and never faster than the rate."""

from __future__ import annotations

import asyncio
import itertools

from vms.archive.exports import SendPace

MB = 1_000_000


async def test_downloads_together_never_send_faster_than_the_rate_and_take_turns() -> None:
    pace = SendPace(80.0)  # 10 MB/s
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, float]] = []

    async def download(name: str) -> None:
        for _ in range(5):
            await pace.turn(MB)
            sent.append((name, loop.time()))

    t0 = loop.time()
    await asyncio.gather(download("a"), download("b"))
    # 10 pieces of 1 MB at 10 MB/s: the first goes at once, the last 0.9 s later.
    assert loop.time() - t0 >= 0.89
    # Turns alternate once both wait: neither download finishes far ahead of the other.
    order = "".join(n for n, _ in sent)
    assert "aaa" not in order and "bbb" not in order, order
    assert abs(max(t for n, t in sent if n == "a") - max(t for n, t in sent if n == "b")) < 0.25, sent
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(sent)]
    assert min(gaps) >= 0.09, gaps
    assert pace.waited_s >= 0.89  # the pieces waited at least as long as the rate stretched the sending


async def test_an_idle_pace_lets_the_next_piece_go_at_once_and_zero_means_no_limit() -> None:
    loop = asyncio.get_running_loop()
    pace = SendPace(80.0)
    await pace.turn(MB)
    await asyncio.sleep(0.15)  # longer than the piece's 0.1 s at this rate
    t = loop.time()
    await pace.turn(MB)
    assert loop.time() - t < 0.05
    free = SendPace(0.0)
    t = loop.time()
    for _ in range(100):
        await free.turn(100 * MB)
    assert loop.time() - t < 0.05 and free.waited_s == 0.0
