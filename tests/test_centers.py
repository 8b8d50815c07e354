"""The three-level tree: placement by ID, two homes, explicit placement, roll-up."""

from __future__ import annotations

import pytest

from tests.conftest import CENTERS
from vms.centers import CenterTree, UnknownCenter
from vms.config import HubConfig


@pytest.fixture
def tree() -> CenterTree:
    return CenterTree(HubConfig.model_validate({"centers": CENTERS}).centers)


def test_town_camera_belongs_to_town_and_district(tree: CenterTree) -> None:
    assert [c.id for c in tree.homes("32058501001320000001")] == ["chengxiang"]
    assert tree.memberships("32058501001320000001") == {"chengxiang", "taicang"}


def test_school_camera_in_a_town_has_two_homes(tree: CenterTree) -> None:
    homes = {c.id for c in tree.homes("32058502111320000001")}
    assert homes == {"shaxi", "education"}
    assert tree.memberships("32058502111320000001") == {"shaxi", "education", "taicang"}


def test_district_level_camera_and_outsider(tree: CenterTree) -> None:
    assert [c.id for c in tree.homes("32058500001320000001")] == ["taicang"]
    assert tree.homes("11000000001320000001") == []


def test_explicit_placement_wins(tree: CenterTree) -> None:
    assert tree.memberships("32058501001320000001", "shaxi") == {"shaxi", "taicang"}
    with pytest.raises(UnknownCenter):
        tree.homes("32058501001320000001", "nowhere")


def test_paths_and_levels(tree: CenterTree) -> None:
    assert tree.get("education").path() == ["taicang", "education"]
    assert [c.id for c in tree] == ["taicang", "chengxiang", "shaxi", "education"]
