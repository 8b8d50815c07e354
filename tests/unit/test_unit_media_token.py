"""Media tokens: signed, short-lived, for one device and its named streams; anything else refused."""

from __future__ import annotations

import pytest

from vms.auth import USE_MEDIA_TOKEN, MediaTokenInvalid, MediaTokens, MediaTokenScope, Principal, Role

CAM = "32058501001320000001"
OTHER = "32058501001320000002"
WHO = Principal("abcd1234abcd1234", "wang", Role.duty, ())
T0 = 1_790_000_000.0


def signer(key: bytes = b"k" * 32, ttl_s: float = 300.0) -> MediaTokens:
    return MediaTokens(ttl_s, key=key, clock=lambda: T0)


def test_a_token_verifies_for_its_device_and_streams_until_it_expires() -> None:
    s = signer()
    token = s.encode(s.issue(WHO, CAM, ("main", "sub")))
    assert token.startswith("vmm.") and WHO.token_id in s.verify(token, CAM, "sub").token_id
    g = s.verify(token, CAM, "main", now=T0 + 299.9)
    assert (g.device_id, g.streams, g.name, g.expires_at) == (CAM, ("main", "sub"), "wang", T0 + 300)
    with pytest.raises(MediaTokenInvalid, match=r"^media token expired at .*: fetch a new one$"):
        s.verify(token, CAM, "main", now=T0 + 300)


def test_another_device_or_stream_is_out_of_scope() -> None:
    s = signer()
    token = s.encode(s.issue(WHO, CAM, ("main",)))
    with pytest.raises(MediaTokenScope, match=f"^this media token is for device {CAM}, not {OTHER}$"):
        s.verify(token, OTHER, "main")
    with pytest.raises(MediaTokenScope, match=r"allows the main stream of \d+, not the sub stream$"):
        s.verify(token, CAM, "sub")


def test_forged_altered_and_foreign_tokens_are_refused() -> None:
    s = signer()
    token = s.encode(s.issue(WHO, CAM, ("main",)))
    prefix, payload, sig = token.split(".")
    # A payload for another device with the old signature, or one from a hub with another key.
    other = signer().encode(signer().issue(WHO, OTHER, ("main",))).split(".")[1]
    foreign = signer(key=b"x" * 32).encode(signer(key=b"x" * 32).issue(WHO, CAM, ("main",)))
    for bad in (f"{prefix}.{other}.{sig}", foreign, f"{prefix}.{payload}.{'B' if sig[0] == 'A' else 'A'}{sig[1:]}"):
        with pytest.raises(MediaTokenInvalid, match=r"^media token not signed by this hub"):
            s.verify(bad, CAM, "main")
    for bad in ("", "vmm", "vmm..", "abc.def.ghi", f"{token}.x"):
        with pytest.raises(MediaTokenInvalid, match=r"^malformed media token"):
            s.verify(bad, CAM, "main")


def test_a_persons_token_is_told_to_use_a_media_token() -> None:
    with pytest.raises(MediaTokenInvalid) as exc:
        signer().verify("vms_abcd1234abcd1234_secret", CAM, "main")
    assert str(exc.value) == USE_MEDIA_TOKEN


def test_keys_are_random_per_signer_and_ttl_and_streams_are_checked() -> None:
    a, b = MediaTokens(60.0), MediaTokens(60.0)
    token = a.encode(a.issue(WHO, CAM, ("main",)))
    assert a.verify(token, CAM, "main").device_id == CAM
    with pytest.raises(MediaTokenInvalid, match="not signed by this hub"):
        b.verify(token, CAM, "main")
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        MediaTokens(0)
    with pytest.raises(ValueError, match="at least one stream"):
        a.issue(WHO, CAM, ())
