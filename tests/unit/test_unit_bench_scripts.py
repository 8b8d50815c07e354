"""The bench scripts still import: they are run by hand, so nothing else notices when a rename breaks one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).parents[2] / "bench").glob("*.py"))


@pytest.mark.parametrize("path", BENCH, ids=[p.stem for p in BENCH])
def test_bench_script_imports(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)  # module level only: main() is not run
    finally:
        del sys.modules[spec.name]
