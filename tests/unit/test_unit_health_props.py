"""vms/health.py, property by property: the timing rules of docs/architecture.md for any signal pattern.

Times are multiples of 1/4 s added to a large epoch, so every sum and comparison is exact in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.config import HealthConfig
from vms.health import INTACT, ONLINE, Health, IntervalLog, Transition, rates

T0 = 1_790_000_000.0
CAM = "32058501001320000001"
Q = 0.25  # time quantum
PROPS = settings(max_examples=150, deadline=None)


def q(n: int) -> float:
    return n * Q


configs = st.builds(
    HealthConfig,
    tick_s=st.sampled_from([0.5, 1.0, 2.0]),
    offline_after_s=st.integers(4, 40).map(q),  # 1-10 s
    recover_after_s=st.integers(0, 24).map(q),  # 0-6 s
    startup_grace_s=st.integers(0, 80).map(q),
)


@dataclass
class Tick:
    now: float
    online: bool | None  # None: no state yet
    last_seen: float  # newest signal time the hub has at this tick (-inf if none)
    transitions: list[Transition]


def drive(cfg: HealthConfig, arrivals: list[tuple[float, float]], until: float) -> tuple[Health, list[Tick]]:
    """One device added at the hub's start; ``arrivals`` are (seen_at, arrives_at), fed in arrival order
    before the tick at or after their arrival; ticks every ``tick_s`` from T0 + tick_s to ``until``."""
    h = Health(cfg, T0)
    i = h.add(CAM, T0)
    pending = sorted(arrivals, key=lambda a: a[1])
    ticks: list[Tick] = []
    k = 1
    last = -np.inf
    while T0 + k * cfg.tick_s <= until:
        now = T0 + k * cfg.tick_s
        while pending and pending[0][1] <= now:
            seen, at = pending.pop(0)
            h.observe_signal(i, seen, at)
            last = max(last, seen)
        tr = h.evaluate(now)
        state = None if not h.known[i] else bool(h.flags[i] & ONLINE)
        ticks.append(Tick(now, state, float(last), tr))
        k += 1
    return h, ticks


@st.composite
def bursts(draw: st.DrawFn) -> list[float]:
    """Signal times: bursts of regular packets separated by silences of any length."""
    t = T0 + q(draw(st.integers(1, 40)))
    out: list[float] = []
    for _ in range(draw(st.integers(1, 5))):
        step = q(draw(st.integers(1, 8)))  # 0.25-2 s between packets
        n = draw(st.integers(1, 40))
        out.extend(t + step * j for j in range(n))
        t = out[-1] + q(draw(st.integers(1, 100)))  # silence 0.25-25 s
    return out


def transitions(ticks: list[Tick]) -> list[tuple[float, Transition]]:
    return [(tk.now, t) for tk in ticks for t in tk.transitions]


@PROPS
@given(st.data())
def test_never_offline_while_the_gaps_stay_within_offline_after(data: st.DataObject) -> None:
    cfg = data.draw(configs)
    limit = int(cfg.offline_after_s / Q)
    start = T0 + q(data.draw(st.integers(1, 20)))
    gaps = data.draw(st.lists(st.integers(1, limit), min_size=1, max_size=120))
    signals = [start]
    for g in gaps:
        signals.append(signals[-1] + q(g))
    last = signals[-1]
    _, ticks = drive(cfg, [(s, s) for s in signals], until=last)
    states = [tk.online for tk in ticks if tk.online is not None]
    if last - start >= cfg.recover_after_s + cfg.tick_s:  # a tick saw recover_after_s of signal
        assert True in states
    if True in states:
        assert False not in states[states.index(True) :]


@PROPS
@given(st.data())
def test_always_offline_by_the_first_tick_past_offline_after(data: st.DataObject) -> None:
    cfg = data.draw(configs)
    signals = data.draw(bursts())
    last = signals[-1]
    _, ticks = drive(cfg, [(s, s) for s in signals], until=last + cfg.offline_after_s + 3 * cfg.tick_s)
    for tk in ticks:
        if tk.online:
            assert tk.now - tk.last_seen <= cfg.offline_after_s  # never online on stale signal
    before = [tk for tk in ticks if tk.now <= last + cfg.offline_after_s]
    after = [tk for tk in ticks if tk.now > last + cfg.offline_after_s]
    assert after and after[0].now <= last + cfg.offline_after_s + cfg.tick_s
    assert after[0].online is not True
    if before and before[-1].online:
        went_down = [(now, t) for now, t in transitions(ticks) if t.old is not None and t.old & ONLINE]
        now, t = went_down[-1]
        assert now == after[0].now and t.at == last  # dated at the last packet, not at the tick


@PROPS
@given(st.data())
def test_a_lost_heartbeat_never_marks_a_streaming_camera_offline(data: st.DataObject) -> None:
    """Heartbeats every heartbeat_interval_s carrying the age of the newest packet; never two lost in a row."""
    cfg = HealthConfig(tick_s=data.draw(st.sampled_from([0.5, 1.0])))
    hb = cfg.heartbeat_interval_s
    phase = q(data.draw(st.integers(1, 8)))
    n = data.draw(st.integers(10, 60))
    lost = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    lost = [x and not (k and lost[k - 1]) for k, x in enumerate(lost)]
    lost[0] = False
    ages = data.draw(st.lists(st.integers(0, 2).map(q), min_size=n, max_size=n))  # packets up to 0.5 s old
    arrivals = [(T0 + phase + hb * k - ages[k], T0 + phase + hb * k) for k in range(n) if not lost[k]]
    _, ticks = drive(cfg, arrivals, until=T0 + phase + hb * (n - 1))
    states = [tk.online for tk in ticks if tk.online is not None]
    assert True in states
    assert False not in states[states.index(True) :]


@PROPS
@given(st.data())
def test_recovery_takes_recover_after_of_steady_signal_and_no_longer(data: st.DataObject) -> None:
    cfg = data.draw(configs)
    signals = data.draw(bursts())
    _, ticks = drive(cfg, [(s, s) for s in signals], until=signals[-1] + cfg.offline_after_s + cfg.tick_s)
    runs: list[list[float]] = []  # packets split where the silence exceeds offline_after_s
    for s in signals:
        if runs and s - runs[-1][-1] <= cfg.offline_after_s:
            runs[-1].append(s)
        else:
            runs.append([s])
    run_start = {s: r[0] for r in runs for s in r}
    for now, t in transitions(ticks):
        if t.new is not None and t.new & ONLINE and (t.old is None or not t.old & ONLINE):
            tk = next(x for x in ticks if x.now == now)
            r0 = run_start[tk.last_seen]
            assert t.at == r0  # dated at the start of the steady signal
            assert now - r0 >= cfg.recover_after_s  # never early
    # never late: at every tick where the signal is fresh and has run for recover_after_s, it is online
    for tk in ticks:
        if tk.last_seen == -np.inf:
            continue
        fresh = tk.now - tk.last_seen <= cfg.offline_after_s
        steady = tk.now - run_start[tk.last_seen] >= cfg.recover_after_s
        if fresh and steady:
            assert tk.online is True


@PROPS
@given(st.data())
def test_transitions_chain_and_the_log_covers_known_time_exactly(data: st.DataObject) -> None:
    cfg = data.draw(configs)
    signals = data.draw(bursts())
    end = max(signals[-1] + cfg.offline_after_s, T0 + max(cfg.offline_after_s, cfg.startup_grace_s)) + 2 * cfg.tick_s
    h, ticks = drive(cfg, [(s, s) for s in signals], until=end)
    seen = transitions(ticks)
    assert seen, "every device gets a state once the grace is over"
    prev: int | None = None
    prev_at = -np.inf
    for now, t in seen:
        assert t.old == prev  # first None, then each old is the previous new
        assert t.new != t.old and t.new is not None
        assert bool(t.new & INTACT) == bool(t.new & ONLINE)  # no defects in play
        assert prev_at <= t.at <= now
        prev, prev_at = t.new, t.at
    onoff = [bool(t.new is not None and t.new & ONLINE) for _, t in seen]
    assert all(a != b for a, b in pairwise(onoff))  # online and offline alternate
    # the closed intervals plus the open one tile [first state, end) with no gap or overlap
    k = h.log.n
    starts, ends, flags = h.log.start[:k].tolist(), h.log.end[:k].tolist(), h.log.flags[:k].tolist()
    assert starts == [t.at for _, t in seen[:-1]] and ends == [t.at for _, t in seen[1:]]
    assert flags == [t.new for _, t in seen[:-1]]
    assert float(h.open_start[0]) == seen[-1][1].at
    a = h.availability(T0, end, now=end)
    assert a.known_s[0] == end - seen[0][1].at
    online = sum(e - s for s, e, f in zip(starts, ends, flags, strict=True) if f & ONLINE)
    last_new = seen[-1][1].new
    assert last_new is not None
    online += (end - seen[-1][1].at) if last_new & ONLINE else 0.0
    assert a.online_s[0] == online


@st.composite
def interval_tables(draw: st.DrawFn) -> tuple[Health, IntervalLog, float, float, float]:
    """Devices with non-overlapping intervals after their creation, some with an open one."""
    n = draw(st.integers(1, 6))
    h = Health(HealthConfig(), T0)
    log = IntervalLog(capacity=4)
    now = T0 + q(draw(st.integers(400, 800)))
    for d in range(n):
        created = T0 + q(draw(st.integers(0, 300)))
        i = h.add(f"32058501001320{d:06d}", created)
        cuts = sorted(set(draw(st.lists(st.integers(0, 500), max_size=12))))
        t = [created + q(c) for c in cuts if created + q(c) <= now]
        holes = draw(st.lists(st.booleans(), min_size=len(t), max_size=len(t)))  # hub down: no interval
        for a, b, hole in zip(t, t[1:], holes, strict=False):
            if not hole:
                log.append(i, a, b, draw(st.integers(0, 7)))
        still_open = draw(st.booleans())
        if t and still_open:
            h.restore_open(i, t[-1], draw(st.integers(0, 7)))
    start = T0 + q(draw(st.integers(0, 900)))
    end = start + q(draw(st.integers(0, 900)))
    return h, log, start, end, now


def clipped(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


@PROPS
@given(interval_tables())
def test_availability_seconds_are_ordered_and_add_up(table: tuple[Health, IntervalLog, float, float, float]) -> None:
    h, log, start, end, now = table
    a = h.availability(start, end, now, log)
    hi = min(end, now)
    assert a.end == hi
    for i in range(h.n):
        mon, known, on = float(a.monitored_s[i]), float(a.known_s[i]), float(a.online_s[i])
        assert mon == clipped(float(h.created_at[i]), hi, start, hi)
        assert 0.0 <= on <= known <= mon + 1e-6
        assert 0.0 <= a.upload_s[i] <= known + 1e-6 and 0.0 <= a.intact_s[i] <= known + 1e-6
        rows = [(float(log.start[k]), float(log.end[k]), int(log.flags[k])) for k in range(log.n) if log.dev[k] == i]
        if h.known[i]:
            rows.append((float(h.open_start[i]), hi, int(h.flags[i])))
        assert known == sum(clipped(s, e, start, hi) for s, e, _ in rows)
        assert on == sum(clipped(s, e, start, hi) for s, e, f in rows if f & ONLINE)
        r = rates(mon, known, on, float(a.upload_s[i]), float(a.intact_s[i]))
        assert r["unknown_s"] == round(max(0.0, mon - known), 3)
        for key in ("online_rate", "upload_rate", "intact_rate"):
            v = r[key]
            assert (v is None) == (mon <= 0) and (v is None or 0.0 <= v <= 1.0)
