"""vms/alerts.py: AlertBook.plan on a real Health table, built as vms/hub.py builds it, on a hand-moved clock."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms import health as health_module
from vms.alerts import AddMembers, AlertBook, Op, Open, Resolve
from vms.config import AlertsConfig, HealthConfig
from vms.health import ONLINE, Health

T0 = 1_790_000_000.0
HOLD = 5.0


@pytest.fixture(autouse=True)
def private_defects(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(health_module, "DEFECTS", dict(health_module.DEFECTS))
    yield


class Site:
    """Devices, their agents and home centers, ticked like Hub.tick: evaluate, then plan."""

    def __init__(
        self,
        homes: list[str | None],
        agents: list[int],
        group_min_devices: int = 5,
        names: dict[int, str] | None = None,
    ) -> None:
        self.hcfg = HealthConfig(startup_grace_s=0)
        self.health = Health(self.hcfg, T0)
        self.homes = homes
        self.names = names or {}
        self.agent_names = [f"agent-{a}" for a in range(max(agents, default=-1) + 1)]
        self.agent_last = [T0 for _ in self.agent_names]
        for k, a in enumerate(agents):
            i = self.health.add(f"32058501001320{k:06d}", T0)
            self.health.agent[i] = a
        self.book = AlertBook(
            AlertsConfig(resolve_hold_s=HOLD, group_min_devices=group_min_devices),
            self.health,
            lambda i: self.homes[i],
            lambda a: self.agent_names[a],
            self.label,
        )
        self.now = T0

    def label(self, idx: int) -> str:
        did = self.health.ids[idx]
        name = self.names.get(idx)
        return f"{name} ({did})" if name else did

    def agent_dark(self, a: int) -> bool:
        return self.now - self.agent_last[a] > self.hcfg.offline_after_s

    def tick(self, up: Iterable[int], agents: Iterable[int] = ()) -> list[Op]:
        """One second: agents in ``agents`` report, devices in ``up`` have fresh packets; then the tick."""
        self.now += 1.0
        for a in agents:
            self.agent_last[a] = self.now
        for i in up:
            self.health.observe_signal(i, self.now, self.now)
        transitions = self.health.evaluate(self.now)
        return self.book.plan(transitions, self.now, self.agent_dark)

    def run(self, seconds: int, up: Iterable[int], agents: Iterable[int] = ()) -> list[tuple[float, Op]]:
        up, agents = list(up), list(agents)
        return [(self.now, op) for _ in range(seconds) for op in self.tick(up, agents)]


def kinds(ops: list[tuple[float, Op]]) -> list[tuple[float, str, str]]:
    return [(now - T0, type(op).__name__, op.alert.fingerprint) for now, op in ops]


def test_a_device_that_goes_dark_opens_one_alert_that_resolves_after_the_hold() -> None:
    s = Site(homes=["chengxiang"], agents=[-1], names={0: "gate"})
    assert s.run(10, up=[0]) == []
    ops = s.run(20, up=[])
    assert kinds(ops) == [(16.0, "Open", "device_offline:32058501001320000000")]  # 6 s after its last packet
    alert = ops[0][1].alert
    assert (alert.kind, alert.severity, alert.since, alert.members) == ("device_offline", "critical", T0 + 10, [0])
    assert (alert.device_id, alert.center_id, alert.title) == (
        "32058501001320000000",
        "chengxiang",
        "gate (32058501001320000000) offline",
    )
    back = s.run(20, up=[0])
    # online 3 s after its signal returned (T0+31 -> tick 34), resolved 5 s of being online later
    assert kinds(back) == [(39.0, "Resolve", "device_offline:32058501001320000000")]
    res = back[0][1]
    assert isinstance(res, Resolve) and res.by == "system" and res.alert is alert
    assert s.book.open == {} and s.book.outage_of == {}


def test_a_flapping_device_keeps_its_one_alert_until_it_is_steady() -> None:
    s = Site(homes=[None], agents=[-1])
    s.run(10, up=[0])
    opened = s.run(10, up=[])
    assert [type(op) for _, op in opened] == [Open]
    flaps: list[tuple[float, Op]] = []
    for _ in range(5):  # 3 s of signal: online 4 s (less than the hold), then dark again, five times
        flaps += s.run(3, up=[0])
        flaps += s.run(7, up=[])
    assert flaps == []
    assert [type(op) for _, op in s.run(15, up=[0])] == [Resolve]


def test_online_for_longer_than_the_hold_between_outages_resolves_and_reopens() -> None:
    """The converse of the test above: the hold is what keeps a flapping device to one alert."""
    s = Site(homes=[None], agents=[-1])
    s.run(10, up=[0])
    ops = s.run(10, up=[])
    for _ in range(3):
        ops += s.run(5, up=[0])  # online from its 3rd second until 5 s after the last packet: 7 s
        ops += s.run(7, up=[])
    assert [type(op).__name__ for _, op in ops] == ["Open"] + ["Resolve", "Open"] * 3


def test_an_agent_gone_silent_groups_its_devices_in_one_alert() -> None:
    s = Site(homes=["a", "a", "b", "b"], agents=[0, 0, 0, 1])
    s.run(10, up=[0, 1, 2, 3], agents=[0, 1])
    ops = s.run(10, up=[3], agents=[1])  # agent 0 and its cameras gone
    assert kinds(ops) == [(16.0, "Open", "agent_offline:agent-0")]
    alert = ops[0][1].alert
    assert (alert.kind, alert.agent_id, alert.since) == ("agent_offline", "agent-0", T0 + 10)
    assert sorted(alert.members) == [0, 1, 2]
    assert "agent-0" in alert.title
    assert {i: a.fingerprint for i, a in s.book.outage_of.items()} == dict.fromkeys([0, 1, 2], "agent_offline:agent-0")
    # The agent is back but camera 2 is still dark: once the cause has been gone long enough for the
    # others to be seen, the group resolves and camera 2 keeps an alert of its own, since the outage began.
    ops = s.run(20, up=[0, 1, 3], agents=[0, 1])
    assert [(type(op).__name__, op.alert.fingerprint) for _, op in ops] == [
        ("Resolve", "agent_offline:agent-0"),
        ("Open", "device_offline:32058501001320000002"),
    ]
    assert ops[0][0] == T0 + 21 + s.hcfg.offline_after_s + s.hcfg.recover_after_s  # cause cleared at T0+21
    single = ops[1][1].alert
    assert single.since == T0 + 10 and single.members == [2] and single.center_id == "b"
    assert s.book.outage_of[2] is single


def test_an_agent_back_with_all_its_cameras_resolves_after_the_hold_without_singles() -> None:
    s = Site(homes=["a", "a"], agents=[0, 0])
    s.run(10, up=[0, 1], agents=[0])
    s.run(10, up=[])
    ops = s.run(20, up=[0, 1], agents=[0])
    assert [(type(op).__name__, op.alert.fingerprint) for _, op in ops] == [("Resolve", "agent_offline:agent-0")]


def test_many_dark_devices_of_one_center_in_one_tick_make_one_site_alert() -> None:
    s = Site(homes=["a", "a", "a", "b", "b", "a"], agents=[0] * 6, group_min_devices=3)
    everyone = range(6)
    s.run(10, up=everyone, agents=[0])
    ops = s.run(10, up=[3, 4, 5], agents=[0])  # the agent still reports: a power cut at site a, not the agent
    assert kinds(ops) == [(16.0, "Open", "site_offline:a")]
    site = ops[0][1].alert
    assert sorted(site.members) == [0, 1, 2] and site.center_id == "a" and site.agent_id is None
    # another camera of center a goes dark later: it joins the open site alert
    ops = s.run(10, up=[3, 4], agents=[0])
    assert len(ops) == 1 and isinstance(ops[0][1], AddMembers) and ops[0][1].added == [5]
    assert ops[0][1].alert is site and sorted(site.members) == [0, 1, 2, 5]
    # two cameras of center b going dark are fewer than three: one alert each
    ops = s.run(10, up=[], agents=[0])
    assert sorted(op.alert.fingerprint for _, op in ops) == [
        "device_offline:32058501001320000003",
        "device_offline:32058501001320000004",
    ]


def test_devices_without_a_home_center_are_never_grouped_by_site() -> None:
    s = Site(homes=[None] * 4, agents=[0] * 4, group_min_devices=2)
    s.run(10, up=range(4), agents=[0])
    ops = s.run(10, up=[], agents=[0])
    assert sorted(op.alert.kind for _, op in ops) == ["device_offline"] * 4


def test_a_site_alert_whose_site_is_mostly_back_hands_its_last_dark_member_a_single() -> None:
    s = Site(homes=["a"] * 4, agents=[0] * 4, group_min_devices=3)
    s.run(10, up=range(4), agents=[0])
    s.run(10, up=[], agents=[0])
    ops = s.run(20, up=[0, 1, 2], agents=[0])
    assert [(type(op).__name__, op.alert.fingerprint) for _, op in ops] == [
        ("Resolve", "site_offline:a"),
        ("Open", "device_offline:32058501001320000003"),
    ]


def test_a_defect_on_an_online_device_opens_device_degraded_until_cleared_for_the_hold() -> None:
    s = Site(homes=["a"], agents=[-1])
    s.run(10, up=[0])
    bit = health_module.defect_bit("unit_blur")
    s.health.set_defect(0, bit, True)
    ops = s.tick([0])
    assert kinds([(s.now, op) for op in ops]) == [(11.0, "Open", "device_degraded:32058501001320000000")]
    alert = ops[0].alert
    assert alert.severity == "warning" and alert.title.endswith("degraded: unit_blur")
    assert s.run(10, up=[0]) == []  # still raised: nothing new
    s.health.set_defect(0, bit, False)
    ops2 = s.run(10, up=[0])
    assert kinds(ops2) == [(27.0, "Resolve", "device_degraded:32058501001320000000")]  # ok since T0+22, +5 s


def test_resolved_by_hand_stays_quiet_until_the_device_recovers() -> None:
    s = Site(homes=["a"], agents=[-1])
    s.run(10, up=[0])
    (_, op), = s.run(10, up=[])
    fp = op.alert.fingerprint
    assert s.book.resolve_by_hand("nope") is None
    assert s.book.resolve_by_hand(fp) is op.alert
    assert s.book.open == {} and s.book.silenced == {0}
    assert s.run(30, up=[]) == []  # still dark: no new alert
    s.run(5, up=[0])  # back (silence lifted), shorter than the hold
    ops = s.run(10, up=[])
    assert [(type(o).__name__, o.alert.fingerprint) for _, o in ops] == [("Open", fp)]


def test_an_alert_adopted_from_the_store_is_neither_opened_again_nor_lost() -> None:
    before = Site(homes=["a"], agents=[-1])  # the hub before its restart opened it ...
    before.run(10, up=[0])
    ((_, op),) = before.run(10, up=[])
    stored = replace(op.alert, db_id=42, members=[0], ok_since={})
    s = Site(homes=["a"], agents=[-1])  # ... and the new one reads it from the store
    s.book.adopt(stored)
    assert s.run(20, up=[]) == []  # dark since before the restart: its first state is offline, no second alert
    ops = s.run(20, up=[0])
    assert [(type(op).__name__, op.alert.db_id) for _, op in ops] == [("Resolve", 42)]


def test_a_retired_device_has_its_alert_resolved_and_raises_no_new_one() -> None:
    s = Site(homes=["a"], agents=[-1])
    s.run(10, up=[0])
    assert len(s.run(10, up=[])) == 1
    t = s.health.retire(0, s.now)
    assert t is not None
    ops = s.book.plan([t], s.now, s.agent_dark)
    ops += [op for _, op in s.run(10, up=[])]
    assert [type(op) for op in ops] == [Resolve]
    assert s.run(30, up=[]) == []


# -- properties -------------------------------------------------------------------------------
N = 8
AGENTS = [0, 0, 0, 0, 1, 1, 1, -1]
HOMES: list[str | None] = ["a", "a", "b", "b", "b", "b", None, None]

phases = st.lists(
    st.tuples(
        st.integers(1, 15),  # seconds
        st.lists(st.booleans(), min_size=2, max_size=2),  # agents reporting
        st.lists(st.booleans(), min_size=N, max_size=N),  # devices with signal (if their agent reports)
        st.sets(st.integers(0, N - 1), max_size=2),  # devices whose quality defect flips
        st.booleans(),  # a person resolves the oldest open outage alert by hand
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=150, deadline=None)
@given(phases)
def test_every_dark_device_is_covered_once_and_nothing_opens_twice_or_resolves_early(
    script: list[tuple[int, list[bool], list[bool], set[int], bool]],
) -> None:
    s = Site(HOMES, AGENTS, group_min_devices=2)
    bit = health_module.defect_bit("unit_freeze")
    h, book = s.health, s.book
    ok_since: dict[tuple[str, int], float] = {}  # (alert family, device) -> since when it is fine
    for seconds, agents_up, signal, flips, by_hand in script:
        for i in flips:
            h.set_defect(i, bit, not h.defects[i])
        if by_hand:
            outages = [a for a in book.open.values() if a.kind != "device_degraded"]
            if outages:
                book.resolve_by_hand(outages[0].fingerprint)
        up = [i for i in range(N) if signal[i] and (AGENTS[i] < 0 or agents_up[AGENTS[i]])]
        for _ in range(seconds):
            open_before = set(book.open)
            ops = s.tick(up, [a for a in (0, 1) if agents_up[a]])
            for i in range(N):
                fine = {"outage": bool(h.known[i] and h.flags[i] & ONLINE), "defect": not h.defects[i]}
                for family, is_ok in fine.items():
                    if is_ok:
                        ok_since.setdefault((family, i), s.now)
                    else:
                        ok_since.pop((family, i), None)
            opened: set[str] = set()
            for op in ops:
                fp = op.alert.fingerprint
                if isinstance(op, Open):
                    assert fp not in opened and (fp not in open_before or fp in resolved_now(ops)), fp
                    opened.add(fp)
                if isinstance(op, Resolve) and op.alert.kind in ("device_offline", "device_degraded"):
                    family = "defect" if op.alert.kind == "device_degraded" else "outage"
                    (m,) = op.alert.members
                    assert s.now - ok_since[(family, m)] >= HOLD, "resolved before the hold"
            # every dark device (not silenced by a person) is in exactly one open outage alert
            for i in range(N):
                holders = [a for a in book.open.values() if a.kind != "device_degraded" and i in a.members]
                assert len(holders) <= 1
                dark = bool(h.known[i]) and not h.flags[i] & ONLINE
                if dark and i not in book.silenced:
                    assert holders and book.outage_of[i] is holders[0], (i, s.now - T0)
                degraded = bool(h.known[i]) and bool(h.flags[i] & ONLINE) and bool(h.defects[i])
                if degraded:
                    assert i in book.defect_of and book.defect_of[i].fingerprint in book.open
            assert all(a.fingerprint in book.open for a in book.outage_of.values())
            assert all(a.fingerprint in book.open for a in book.defect_of.values())


def resolved_now(ops: list[Op]) -> set[str]:
    return {op.alert.fingerprint for op in ops if isinstance(op, Resolve)}
