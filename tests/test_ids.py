"""GB/T 28181 IDs: field-by-field validation, parsing, allocation, and the `vms id` commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import valid_ids
from vms.kernel import ids

VALID = "32058501001320000001"

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


@given(valid_ids())
def test_valid_ids_parse_and_fields_reassemble(device_id: str) -> None:
    p = ids.parse(device_id)
    assert p.province + p.city + p.district + p.grassroots + p.industry + p.type + p.network + p.serial == device_id
    assert p.civil_code == device_id[:8]
    assert json.dumps(p.describe(), ensure_ascii=False)


@given(valid_ids(), st.integers(0, 19), st.sampled_from(list("aZ -/")))
def test_any_non_digit_is_rejected_naming_its_field(device_id: str, pos: int, bad: str) -> None:
    broken = device_id[:pos] + bad + device_id[pos + 1 :]
    with pytest.raises(ids.InvalidDeviceId) as exc:
        ids.parse(broken)
    if bad == " " and pos in (0, 19):
        assert exc.value.field == "id"  # stripped, so the length is wrong
        return
    field = next(name for name, (a, b) in ids.FIELDS.items() if a <= pos < b)
    assert exc.value.field == field
    assert "digits" in exc.value.reason


@given(valid_ids(), st.integers(1, 30).filter(lambda n: n != 20))
def test_wrong_length_is_rejected(device_id: str, n: int) -> None:
    s = (device_id * 2)[:n]
    with pytest.raises(ids.InvalidDeviceId, match="must be 20 digits"):
        ids.parse(s)


@pytest.mark.parametrize(
    ("device_id", "field", "words"),
    [
        ("99058501001320000001", "province", "GB/T 2260"),
        ("32000101001320000001", "district", "city is 00"),
        ("32050001001320000001", "grassroots", "district is 00"),
        ("32058501000990000001", "type", "start at 111"),
        ("32058501001329000001", "network", "reserved"),
    ],
)
def test_semantic_errors_name_field_value_and_reason(device_id: str, field: str, words: str) -> None:
    with pytest.raises(ids.InvalidDeviceId) as exc:
        ids.parse(device_id)
    assert exc.value.field == field
    assert words in str(exc.value)


def test_describe_gives_names() -> None:
    d = ids.parse(VALID).describe()
    assert d["province_name"] == "江苏省"
    assert d["type_name"] == "IPC"
    assert d["industry"] == "00"
    assert d["network_name"] == "monitoring private network"
    assert d["is_device"] is True


@given(st.sets(st.integers(1, 300), max_size=50))
def test_allocate_returns_lowest_free_serial(used: set[int]) -> None:
    prefix = "32058501001320"
    taken = {f"{prefix}{n:06d}" for n in used}
    new = ids.allocate(prefix, taken)
    assert new not in taken and ids.is_valid(new)
    expected = min(set(range(1, 400)) - used)
    assert int(new[14:]) == expected


def test_allocate_rejects_short_prefix_and_full_space() -> None:
    with pytest.raises(ids.InvalidDeviceId, match="14 digits"):
        ids.allocate("32058501", [])
    prefix = "3205850100132000001"  # 19 digits: serials 1-9
    taken = [f"{prefix}{n}" for n in range(1, 10)]
    with pytest.raises(ids.InvalidDeviceId, match="no free serial"):
        ids.allocate(prefix, taken)


def test_check_prefix_validates_only_covered_fields() -> None:
    assert ids.check_prefix("32058501") == "32058501"
    assert ids.check_prefix("3") == "3"
    with pytest.raises(ids.InvalidDeviceId, match="province"):
        ids.check_prefix("99")
    with pytest.raises(ids.InvalidDeviceId, match="type"):
        ids.check_prefix("3205850100099")
    with pytest.raises(ids.InvalidDeviceId, match="digits"):
        ids.check_prefix("3205x")


def vms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vms.cli", *args], capture_output=True, text=True, timeout=60)


def test_cli_id_check_parse_new() -> None:
    ok = vms("id", "check", VALID)
    assert ok.returncode == 0
    bad = vms("id", "check", "32058501000990000001")
    assert bad.returncode == 1
    assert "type" in bad.stderr and "111" in bad.stderr
    parsed = json.loads(vms("id", "parse", VALID).stdout)
    for key in ("civil_code", "province", "city", "district", "grassroots", "industry", "type", "network", "serial"):
        assert key in parsed
    assert parsed["civil_code"] == "32058501" and parsed["serial"] == "000001"
    new = vms("id", "new", "--prefix", "32058501001320", "--count", "3")
    assert new.stdout.split() == ["32058501001320000001", "32058501001320000002", "32058501001320000003"]
    assert vms("id", "parse", "123").returncode == 1
