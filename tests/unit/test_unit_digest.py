"""vms/gb28181/digest.py against the RFCs' worked examples, a GB/T 28181 REGISTER, and replay rules."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms.gb28181 import digest
from vms.gb28181.digest import Challenge, DigestError, Nonces

PROPS = settings(max_examples=150, deadline=None)
KEY = b"k" * 32

# RFC 2617 section 3.5, verbatim (line breaks as in the RFC).
RFC2617_AUTHORIZATION = """Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41\""""

# RFC 7616 section 3.9.1: the same request answered with SHA-256 and with MD5.
RFC7616 = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "uri": "/dir/index.html",
    "qop": "auth",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
}
RFC7616_SHA256 = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
RFC7616_MD5 = "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc2617_example() -> None:
    auth = digest.parse_authorization(RFC2617_AUTHORIZATION)
    assert auth["username"] == "Mufasa" and auth["qop"] == "auth" and auth["nc"] == "00000001"
    assert auth["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    assert digest.verify(auth, "GET", "Circle Of Life")
    assert not digest.verify(auth, "GET", "Circle of Life")
    assert not digest.verify(auth, "POST", "Circle Of Life")
    assert not digest.verify({**auth, "nc": "00000002"}, "GET", "Circle Of Life")


def test_rfc2617_example_from_our_client() -> None:
    ch = Challenge(
        "testrealm@host.com", "dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"
    )
    value = digest.client_authorization(ch, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", "0a4f113b", 1)
    assert 'response="6629fae49393a05397450978507c4ef1"' in value
    assert digest.parse_authorization(value) == {
        **digest.parse_authorization(RFC2617_AUTHORIZATION),
        "algorithm": "MD5",
    }


@pytest.mark.parametrize(("algorithm", "response"), [("SHA-256", RFC7616_SHA256), ("MD5", RFC7616_MD5)])
def test_rfc7616_example(algorithm: str, response: str) -> None:
    auth = {**RFC7616, "algorithm": algorithm, "response": response}
    assert digest.verify(auth, "GET", "Circle of Life")
    assert digest.verify({**auth, "response": response.upper()}, "GET", "Circle of Life")
    assert not digest.verify(auth, "GET", "Circle Of Life")
    ch = Challenge(RFC7616["realm"], RFC7616["nonce"], algorithm, opaque=RFC7616["opaque"])
    mine = digest.client_authorization(ch, "GET", "/dir/index.html", "Mufasa", "Circle of Life", RFC7616["cnonce"], 1)
    assert digest.parse_authorization(mine)["response"] == response


def test_gb28181_register_without_qop() -> None:
    """Many cameras answer an MD5 challenge without qop (RFC 2069 style), as WVP logs show."""
    nonces = Nonces(KEY)
    nonce = nonces.issue(1000.0)
    ch = Challenge("3402000000", nonce, qop=None)
    assert "qop" not in ch.header()
    value = digest.client_authorization(
        ch, "REGISTER", "sip:34020000002000000001@3402000000", "34020000001320000001", "12345678", "unused", 1
    )
    assert "cnonce" not in value and "nc=" not in value
    auth = digest.parse_authorization(value)
    assert digest.verify(auth, "REGISTER", "12345678")
    assert not digest.verify(auth, "REGISTER", "123456789")
    assert nonces.check(auth["nonce"], auth.get("nc"), 1001.0) == "ok"
    assert nonces.check(auth["nonce"], auth.get("nc"), 1002.0) == "replay"


def test_hikvision_style_header_parses() -> None:
    value = (
        'Digest username="34020000001320000001",realm="3402000000",nonce="abc",'
        'uri="sip:34020000002000000001@3402000000",response="0123456789abcdef0123456789abcdef",algorithm=MD5'
    )
    auth = digest.parse_authorization(value)
    assert auth["uri"] == "sip:34020000002000000001@3402000000" and auth["algorithm"] == "MD5"


def test_challenge_header() -> None:
    assert Challenge("3402000000", "n1").header() == 'Digest realm="3402000000", nonce="n1", algorithm=MD5, qop="auth"'
    stale = Challenge('a"b', "n2", "SHA-256", stale=True).header()
    assert stale == 'Digest realm="a\\"b", nonce="n2", algorithm=SHA-256, qop="auth", stale=true'
    assert digest.parse_challenge(stale) == Challenge('a"b', "n2", "SHA-256", stale=True)
    offered = digest.parse_challenge('Digest realm="r", nonce="n", qop="auth,auth-int", opaque="o"')
    assert offered == Challenge("r", "n", "MD5", qop="auth", opaque="o")
    with pytest.raises(DigestError, match="no qop=auth"):
        digest.parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    with pytest.raises(DigestError, match="realm or nonce"):
        digest.parse_challenge('Digest realm="r"')


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("", "not a Digest"),
        ('Basic dXNlcjpwYXNz"', "not a Digest"),
        ("Digest", "without parameters"),
        ('Digest username="open', "malformed parameter"),
        ('Digest username="a" realm="b"', "malformed parameter"),
        ('Digest username="a", username="b"', "given twice"),
        ('Digest username="a",', "trailing comma"),
        ('Digest username="a", realm="r", nonce="n", uri="u"', "lacks response"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth', "lacks nc or cnonce"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth, nc=1, cnonce="c"', "8 hex"),
        ("Digest " + "x" * 500, "malformed"),
    ],
)
def test_parse_authorization_refuses(value: str, match: str) -> None:
    with pytest.raises(DigestError, match=match) as info:
        digest.parse_authorization(value)
    assert len(str(info.value)) < 150  # quotes at most 80 characters of the input


@pytest.mark.parametrize(
    "change",
    [
        {"algorithm": "MD5-sess"},
        {"algorithm": "SHA-512-256"},
        {"qop": "auth-int"},
        {"userhash": "true"},
    ],
)
def test_verify_refuses_what_it_does_not_support(change: dict[str, str]) -> None:
    auth = {**digest.parse_authorization(RFC2617_AUTHORIZATION), **change}
    assert not digest.verify(auth, "GET", "Circle Of Life")
    bare = dict(auth)
    del bare["response"]
    assert not digest.verify(bare, "GET", "Circle Of Life")


def test_client_refuses_unknown_algorithm() -> None:
    with pytest.raises(DigestError, match="unsupported"):
        digest.client_authorization(Challenge("r", "n", "SHA-512"), "REGISTER", "sip:x", "u", "p", "c", 1)


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)


@PROPS
@given(_TEXT, _TEXT, _TEXT, st.sampled_from(["MD5", "SHA-256"]), st.integers(1, 2**32 - 1), st.booleans())
def test_client_and_server_agree(user: str, password: str, realm: str, algorithm: str, nc: int, qop: bool) -> None:
    ch = Challenge(realm, Nonces(KEY).issue(0.0), algorithm, qop="auth" if qop else None)
    value = digest.client_authorization(
        ch, "REGISTER", "sip:34020000002000000001@3402000000", user, password, "c0ffee", nc
    )
    auth = digest.parse_authorization(value)
    assert (auth["username"], auth["realm"]) == (user, realm)
    assert digest.verify(auth, "REGISTER", password)
    assert not digest.verify(auth, "REGISTER", password + "x")
    assert not digest.verify(auth, "MESSAGE", password)


@PROPS
@given(st.text(max_size=200))
def test_parse_authorization_raises_only_digest_error(value: str) -> None:
    with contextlib.suppress(DigestError):
        digest.parse_authorization(value)


# --- Nonces -------------------------------------------------------------------------------


def test_nonce_lifecycle() -> None:
    n = Nonces(KEY, ttl_s=300)
    nonce = n.issue(1000.0)
    assert n.check(nonce, "00000001", 1000.5) == "ok"
    assert n.check(nonce, "00000002", 1001.0) == "ok"
    assert n.check(nonce, "00000002", 1001.0) == "replay"
    assert n.check(nonce, "00000001", 1001.0) == "replay"
    assert n.check(nonce, None, 1001.0) == "replay"
    assert n.check(nonce, "0000000A", 1002.0) == "ok"
    assert n.check(nonce, "00000003", 1301.0) == "stale"


def test_nonce_without_qop_is_good_once() -> None:
    n = Nonces(KEY)
    nonce = n.issue(0.0)
    assert n.check(nonce, None, 1.0) == "ok"
    assert n.check(nonce, None, 1.0) == "replay"
    assert n.check(nonce, "ffffffff", 1.0) == "replay"


@pytest.mark.parametrize("nc", ["00000000", "1", "zzzzzzzz", "000000001"])
def test_bad_nonce_counts(nc: str) -> None:
    n = Nonces(KEY)
    assert n.check(n.issue(0.0), nc, 0.0) == "invalid"


def test_forged_and_foreign_nonces_are_invalid() -> None:
    n = Nonces(KEY)
    nonce = n.issue(50.0)
    flipped = nonce[:5] + ("A" if nonce[5] != "A" else "B") + nonce[6:]
    for bad in (
        flipped,
        nonce[:-4],
        "",
        "not base64 !!",
        "é",
        Nonces(b"x" * 32).issue(50.0),
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
    ):
        assert n.check(bad, "00000001", 50.0) == "invalid", bad
    assert n.check(n.issue(100.0), "00000001", 50.0) == "invalid"  # issued in the future of this clock
    assert n.check(nonce, "00000001", 50.0) == "ok"  # the forgeries left no trace


def test_eviction_never_lets_a_replay_in() -> None:
    n = Nonces(KEY, max_tracked=2)
    a, b, c = n.issue(1.0), n.issue(2.0), n.issue(3.0)
    late = n.issue(0.5)  # issued before a, not yet used
    assert [n.check(x, "00000001", 10.0) for x in (a, b, c)] == ["ok", "ok", "ok"]  # a is evicted
    assert n.check(a, "00000001", 10.0) == "stale"  # not "ok": the replay is caught, the client re-challenged
    assert n.check(late, "00000001", 10.0) == "stale"
    assert n.check(c, "00000002", 10.0) == "ok"
    assert n.check(n.issue(10.0), "00000001", 10.0) == "ok"


def test_nonce_constructor_checks() -> None:
    with pytest.raises(ValueError):
        Nonces(b"short")
    with pytest.raises(ValueError):
        Nonces(KEY, max_tracked=0)


@PROPS
@given(
    st.integers(1, 4),
    st.lists(st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(1, 6)), st.floats(0, 400)), max_size=40),
)
def test_no_nonce_count_is_accepted_twice(max_tracked: int, uses: list[tuple[int, int | None, float]]) -> None:
    n = Nonces(KEY, ttl_s=300, max_tracked=max_tracked)
    issued = [n.issue(float(i)) for i in range(6)]
    accepted: dict[int, list[int | None]] = {}
    for i, nc, dt in uses:
        verdict = n.check(issued[i], None if nc is None else f"{nc:08x}", 6.0 + dt)
        if verdict == "ok":
            prior = accepted.setdefault(i, [])
            assert None not in prior  # a nonce used without qop is spent
            assert (nc is None and not prior) or (nc is not None and all(p is not None and p < nc for p in prior))
            prior.append(nc)
        elif dt + 6.0 - i <= 300 and verdict != "stale":
            assert verdict == "replay"
