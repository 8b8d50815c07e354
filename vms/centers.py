"""The three-level center tree and which centers a device belongs to. Pure, no I/O.

A center covers the devices whose ID starts with its civil code (and, if it lists industries,
whose industry code is one of them). A device's *home* centers are the most specific centers
that cover it; it also counts in every ancestor of a home, so figures roll up the tree. A device
can have two homes (a town center and an education-bureau center, say): that is the "graded
management, linked operation" the customer asks for, and roll-ups count each device once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from vms.config import CenterConfig, Targets
from vms.errors import NotFound

LEVEL_NAMES = {1: "district", 2: "town", 3: "industry/unit"}


@dataclass(eq=False)
class Center:
    id: str
    name: str
    level: int
    civil_code: str
    industries: tuple[str, ...]
    targets: Targets
    gb_id: str | None
    parent: Center | None = None
    children: list[Center] = field(default_factory=list)

    def covers(self, device_id: str) -> bool:
        if not device_id.startswith(self.civil_code):
            return False
        return not self.industries or device_id[8:10] in self.industries

    def ancestors(self) -> Iterator[Center]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def path(self) -> list[str]:
        return [c.id for c in reversed([self, *self.ancestors()])]


class UnknownCenter(NotFound, KeyError):
    def __str__(self) -> str:
        return f"unknown center {self.args[0]!r}"


class CenterTree:
    def __init__(self, configs: list[CenterConfig]) -> None:
        self.roots: list[Center] = []
        self.by_id: dict[str, Center] = {}
        for cfg in configs:
            self.roots.append(self._build(cfg, None))

    def _build(self, cfg: CenterConfig, parent: Center | None) -> Center:
        node = Center(
            id=cfg.id,
            name=cfg.name,
            level=cfg.level,
            civil_code=cfg.civil_code,
            industries=tuple(cfg.industries),
            targets=cfg.targets,
            gb_id=cfg.gb_id,
            parent=parent,
        )
        self.by_id[node.id] = node
        node.children = [self._build(child, node) for child in cfg.children]
        return node

    def __iter__(self) -> Iterator[Center]:
        stack = list(reversed(self.roots))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def get(self, center_id: str) -> Center:
        try:
            return self.by_id[center_id]
        except KeyError:
            raise UnknownCenter(center_id) from None

    def homes(self, device_id: str, placed_in: str | None = None) -> list[Center]:
        """The most specific centers covering ``device_id``; an explicit placement wins."""
        if placed_in is not None:
            return [self.get(placed_in)]
        found: list[Center] = []
        stack = [r for r in self.roots if r.covers(device_id)]
        while stack:
            node = stack.pop()
            deeper = [c for c in node.children if c.covers(device_id)]
            if deeper:
                stack.extend(deeper)
            else:
                found.append(node)
        return found

    def memberships(self, device_id: str, placed_in: str | None = None) -> set[str]:
        """Every center whose figures include ``device_id``: its homes and their ancestors."""
        out: set[str] = set()
        for home in self.homes(device_id, placed_in):
            out.add(home.id)
            out.update(a.id for a in home.ancestors())
        return out
