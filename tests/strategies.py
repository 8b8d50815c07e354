"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

from hypothesis import strategies as st

from vms.kernel import ids


@st.composite
def valid_ids(draw: st.DrawFn) -> str:
    """Any GB/T 28181 device ID the module accepts: a known province, nested codes, a device type."""
    province = draw(st.sampled_from(sorted(ids.PROVINCES)))
    city = draw(st.integers(0, 99))
    district = 0 if city == 0 else draw(st.integers(0, 99))
    grassroots = 0 if district == 0 else draw(st.integers(0, 99))
    industry = draw(st.integers(0, 99))
    typ = draw(st.integers(111, 999))
    network = draw(st.integers(0, 8))
    serial = draw(st.integers(0, 999_999))
    return f"{province}{city:02d}{district:02d}{grassroots:02d}{industry:02d}{typ:03d}{network}{serial:06d}"
