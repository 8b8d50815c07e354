"""vms/centers.py: homes and memberships from IDs and explicit placement, on trees built in code."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.centers import LEVEL_NAMES, CenterTree, UnknownCenter
from vms.config import CenterConfig

SERIAL = "1320000001"  # type 132 (IPC), network 0, serial 000001


def center(
    cid: str, level: int, civil: str, *children: CenterConfig, industries: list[str] | None = None
) -> CenterConfig:
    return CenterConfig.model_validate(
        {"id": cid, "name": cid.upper(), "level": level, "civil_code": civil,
         "industries": industries or [], "children": list(children)}
    )


@pytest.fixture
def tree() -> CenterTree:
    return CenterTree(
        [
            center(
                "taicang", 1, "320585",
                center("chengxiang", 2, "32058501", center("cx-school", 3, "32058501", industries=["11"])),
                center("shaxi", 2, "32058502"),
                center("education", 3, "320585", industries=["11"]),
                center("traffic", 3, "320585", industries=["04", "05"]),
            ),
            center("kunshan", 1, "320583"),
        ]
    )


def homes(tree: CenterTree, device_id: str, placed_in: str | None = None) -> set[str]:
    return {c.id for c in tree.homes(device_id, placed_in)}


def test_a_device_lives_in_the_most_specific_centers_that_cover_it(tree: CenterTree) -> None:
    assert homes(tree, "3205850100" + SERIAL) == {"chengxiang"}
    assert homes(tree, "3205850111" + SERIAL) == {"cx-school", "education"}  # a school in a town: two homes
    assert tree.memberships("3205850111" + SERIAL) == {"cx-school", "chengxiang", "education", "taicang"}
    assert homes(tree, "3205850205" + SERIAL) == {"shaxi", "traffic"}
    assert homes(tree, "3205850300" + SERIAL) == {"taicang"}  # a town without a center of its own
    assert homes(tree, "3205830000" + SERIAL) == {"kunshan"}
    assert tree.homes("1100000000" + SERIAL) == [] and tree.memberships("1100000000" + SERIAL) == set()


def test_explicit_placement_wins_over_the_id_and_rolls_up(tree: CenterTree) -> None:
    device = "3205850111" + SERIAL
    assert homes(tree, device, "kunshan") == {"kunshan"}
    assert tree.memberships(device, "cx-school") == {"cx-school", "chengxiang", "taicang"}
    assert tree.memberships("1100000000" + SERIAL, "shaxi") == {"shaxi", "taicang"}  # even one the tree does not cover


def test_an_unknown_center_is_an_error_naming_it(tree: CenterTree) -> None:
    for call in (
        lambda: tree.get("nowhere"),
        lambda: tree.homes("3205850100" + SERIAL, "nowhere"),
        lambda: tree.memberships("3205850100" + SERIAL, "nowhere"),
    ):
        with pytest.raises(UnknownCenter) as exc:
            call()
        assert isinstance(exc.value, KeyError)
        assert str(exc.value) == "unknown center 'nowhere'"


def test_tree_order_paths_and_levels(tree: CenterTree) -> None:
    assert [c.id for c in tree] == ["taicang", "chengxiang", "cx-school", "shaxi", "education", "traffic", "kunshan"]
    assert tree.get("cx-school").path() == ["taicang", "chengxiang", "cx-school"]
    assert [a.id for a in tree.get("cx-school").ancestors()] == ["chengxiang", "taicang"]
    assert tree.get("kunshan").parent is None and tree.get("kunshan").path() == ["kunshan"]
    assert {LEVEL_NAMES[c.level] for c in tree} == {"district", "town", "industry/unit"}
    assert tree.get("traffic").industries == ("04", "05")


def test_an_empty_tree_homes_nothing() -> None:
    t = CenterTree([])
    assert list(t) == [] and t.homes("3205850100" + SERIAL) == []
    with pytest.raises(UnknownCenter):
        t.homes("3205850100" + SERIAL, "taicang")


# -- property: homes and memberships against the tree as configured --------------------------
CODES = ["01", "02"]
INDUSTRIES = ["00", "04", "11"]


@st.composite
def forests(draw: st.DrawFn) -> list[CenterConfig]:
    counter = iter(range(1000))

    def node(level: int, civil: str) -> CenterConfig:
        cid = f"c{next(counter)}"
        industries = sorted(draw(st.sets(st.sampled_from(INDUSTRIES), max_size=2))) if level == 3 else []
        children: list[CenterConfig] = []
        if level < 3:
            for _ in range(draw(st.integers(0, 3))):
                child_level = draw(st.integers(level + 1, 3))
                code = civil + draw(st.sampled_from(CODES)) if len(civil) < 8 and draw(st.booleans()) else civil
                children.append(node(child_level, code))
        return center(cid, level, civil, *children, industries=industries)

    return [node(1, "3205" + code) for code in draw(st.lists(st.sampled_from(["85", "83"]), min_size=1, max_size=2))]


devices = st.builds(
    lambda city, town, unit, industry: f"3205{city}{town}{unit}{industry}{SERIAL}",
    st.sampled_from(["85", "83"]),
    st.sampled_from(["01", "02", "03"]),
    st.sampled_from(["01", "02"]),
    st.sampled_from(INDUSTRIES),
)


def _covers(c: CenterConfig, device_id: str) -> bool:
    return device_id.startswith(c.civil_code) and (not c.industries or device_id[8:10] in c.industries)


def covered_paths(configs: list[CenterConfig], device_id: str) -> Iterator[tuple[CenterConfig, list[str]]]:
    """Centers reached by walking down from the roots through centers that cover the device, with the
    ids of their ancestors, read straight off the configuration."""

    stack: list[tuple[CenterConfig, list[str]]] = [(c, []) for c in configs if _covers(c, device_id)]
    while stack:
        c, above = stack.pop()
        yield c, above
        stack.extend((k, [*above, c.id]) for k in c.children if _covers(k, device_id))


@settings(max_examples=150, deadline=None)
@given(forests(), devices)
def test_homes_are_the_deepest_covering_centers_and_memberships_roll_up(
    configs: list[CenterConfig], device_id: str
) -> None:
    tree = CenterTree(configs)
    reached = list(covered_paths(configs, device_id))
    expected_homes = {c.id for c, _ in reached if not any(_covers(k, device_id) for k in c.children)}
    found = tree.homes(device_id)
    assert len(found) == len({c.id for c in found})  # no center twice
    assert {c.id for c in found} == expected_homes
    assert tree.memberships(device_id) == {c.id for c, _ in reached}
    for c in found:
        assert c.covers(device_id)
        assert c.path()[:-1] == next(above for r, above in reached if r.id == c.id)
    for cid in [c.id for c in tree][:3]:  # placed by hand: that center and its ancestors, whatever the ID
        assert tree.memberships(device_id, cid) == set(tree.get(cid).path())
