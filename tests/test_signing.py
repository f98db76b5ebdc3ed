"""HMAC-SHA256 request signing: known answers, round trips, tampering, and HTTP dates."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from worker.acs.signing import SIGNED_HEADERS, content_hash, http_date, parse_http_date, sign, verify

ACCESS_KEY = "pBHgx8ySIH/ATqG7FLzhxOvQU8M3W6G2jvYiQx1pIGE0t8HF3zX/ZzvzNxvEUIzX0w+BPCV8jmS8RkEWDo6yew=="
KEY = base64.b64decode(ACCESS_KEY)
HOST = "contoso.communication.azure.com"
PATH = "/calling/callConnections/18dea47f-b081-4107-9a5c-4300819d2c6c:transferToParticipant?api-version=2024-09-15"
BODY = b'{"targetParticipant":{"kind":"phoneNumber","rawId":"4:+14255550123","phoneNumber":{"value":"+14255550123"}}}'
NOW = 784111777  # the RFC 7231 example moment
DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} GMT"
)

# Text without lone surrogates (a str that could not be sent anyway).
_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=80)
_paths = st.builds(lambda p: "/" + p, _text)
_hosts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
_keys = st.binary(min_size=1, max_size=64)
_moments = st.integers(min_value=0, max_value=253402300799)  # through 9999-12-31T23:59:59Z


def independent_authorization(key: bytes, path: str, host: str, body: bytes, date: str) -> tuple[str, str]:
    """The README's formula, written out with nothing from worker.acs.signing."""
    body_hash = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    to_sign = "POST\n" + path + "\n" + date + ";" + host + ";" + body_hash
    mac = base64.b64encode(hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).digest()).decode("ascii")
    return body_hash, "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=" + mac


# --- known answers ------------------------------------------------------------------------------------------


def test_known_answer_matches_the_readme_formula() -> None:
    headers = sign(KEY, "POST", PATH, HOST, BODY, NOW)
    body_hash, authorization = independent_authorization(KEY, PATH, HOST, BODY, DATE)
    assert headers == {"x-ms-date": DATE, "x-ms-content-sha256": body_hash, "Authorization": authorization}
    assert SIGNED_HEADERS == "x-ms-date;host;x-ms-content-sha256"
    # Pinned, so a change to both the code and the helper above cannot pass unnoticed.
    assert body_hash == "YhfdKYSyLnLxXEBl5+htBZCYAghpbEhNTV2JokEokxs="
    assert authorization.endswith("&Signature=UrkmoUuJVWYLzVZSnq23W/XJq9hKDiOiMbfD/mHH+IQ=")
    assert content_hash(b"") == "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="


def test_method_is_upper_cased_and_signed() -> None:
    assert sign(KEY, "post", PATH, HOST, BODY, NOW) == sign(KEY, "POST", PATH, HOST, BODY, NOW)
    assert (
        sign(KEY, "PUT", PATH, HOST, BODY, NOW)["Authorization"]
        != sign(KEY, "POST", PATH, HOST, BODY, NOW)["Authorization"]
    )


@pytest.mark.parametrize(
    ("host", "path"),
    [
        (HOST, PATH),
        ("127.0.0.1:8443", "/calling/callConnections/a%2Fb%20c:transferToParticipant?api-version=2024-09-15"),
        ("[::1]:9000", "/calling/callConnections/%C3%A9:transferToParticipant?api-version=2024-09-15"),
    ],
)
def test_same_authorization_as_the_official_sdk(monkeypatch: pytest.MonkeyPatch, host: str, path: str) -> None:
    """The azure-communication SDK's own HMAC policy, fed the same request and clock, signs identically."""
    policy_module = pytest.importorskip("azure.communication.callautomation._shared.policy")
    from azure.core.pipeline import PipelineContext, PipelineRequest  # noqa: PLC0415
    from azure.core.pipeline.transport import HttpRequest  # noqa: PLC0415

    monkeypatch.setattr(policy_module, "get_current_utc_time", lambda: DATE)
    request = HttpRequest("POST", f"https://{host}{path}")
    request.set_text_body(BODY.decode())
    policy_module.HMACCredentialsPolicy(f"https://{host}", ACCESS_KEY).on_request(
        PipelineRequest(request, PipelineContext(None))
    )
    ours = sign(KEY, "POST", path, host, BODY, NOW)
    assert request.headers["x-ms-date"] == ours["x-ms-date"]
    assert request.headers["x-ms-content-sha256"] == ours["x-ms-content-sha256"]
    assert request.headers["Authorization"] == ours["Authorization"]


# --- round trips and tampering -----------------------------------------------------------------------------


def test_verify_accepts_sign_output_as_is_and_lower_cased() -> None:
    headers = sign(KEY, "POST", PATH, HOST, BODY, NOW)
    assert verify(KEY, "POST", PATH, HOST, BODY, headers) is None
    assert verify(KEY, "POST", PATH, HOST, BODY, {k.lower(): v for k, v in headers.items()}) is None
    assert verify(KEY, "POST", PATH, HOST, BODY, {k.upper(): v for k, v in headers.items()}) is None


def test_verify_accepts_a_case_insensitive_multidict() -> None:
    multidict = pytest.importorskip("multidict")
    headers = multidict.CIMultiDictProxy(multidict.CIMultiDict(sign(KEY, "POST", PATH, HOST, BODY, NOW)))
    assert verify(KEY, "POST", PATH, HOST, BODY, headers) is None  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(key=_keys, path=_paths, host=_hosts, body=st.binary(max_size=512), now=_moments)
def test_sign_then_verify_round_trips(key: bytes, path: str, host: str, body: bytes, now: int) -> None:
    headers = sign(key, "POST", path, host, body, now)
    assert verify(key, "POST", path, host, body, headers) is None
    assert headers["x-ms-content-sha256"] == independent_authorization(key, path, host, body, headers["x-ms-date"])[0]
    assert headers["Authorization"] == independent_authorization(key, path, host, body, headers["x-ms-date"])[1]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=1, max_size=256), data=st.data())
def test_any_single_byte_change_to_the_body_is_caught(body: bytes, data: st.DataObject) -> None:
    headers = sign(KEY, "POST", PATH, HOST, body, NOW)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    assert verify(KEY, "POST", PATH, HOST, tampered, headers) is not None
    # Also when the attacker recomputes the content hash to match the new body.
    forged = {**headers, "x-ms-content-sha256": content_hash(tampered)}
    assert verify(KEY, "POST", PATH, HOST, tampered, forged) == "signature does not match"


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=64))
def test_added_or_removed_bytes_are_caught(body: bytes) -> None:
    headers = sign(KEY, "POST", PATH, HOST, body, NOW)
    assert verify(KEY, "POST", PATH, HOST, body + b" ", headers) is not None
    if body:
        assert verify(KEY, "POST", PATH, HOST, body[:-1], headers) is not None


@settings(max_examples=300, deadline=None)
@given(path=_paths, other_path=_paths, host=_hosts, other_host=_hosts)
def test_a_different_path_or_host_is_caught(path: str, other_path: str, host: str, other_host: str) -> None:
    headers = sign(KEY, "POST", path, host, BODY, NOW)
    if other_path != path:
        assert verify(KEY, "POST", other_path, host, BODY, headers) == "signature does not match"
    if other_host != host:
        assert verify(KEY, "POST", path, other_host, BODY, headers) == "signature does not match"


@pytest.mark.parametrize(
    ("signed_path", "path", "host"),
    [
        (PATH, PATH.replace("2024-09-15", "2024-09-16"), HOST),
        (PATH, PATH.replace("?api-version=2024-09-15", ""), HOST),
        (PATH, PATH.replace("18dea47f", "18DEA47F"), HOST),
        (PATH, PATH, HOST + ":443"),
        (PATH, PATH, HOST.upper()),
        (PATH, PATH, "other.communication.azure.com"),
        # Signing the decoded path while a re-encoded one goes on the wire (the yarl pitfall).
        (
            "/calling/callConnections/a/b:transferToParticipant",
            "/calling/callConnections/a%2Fb:transferToParticipant",
            HOST,
        ),
        ("/calling/callConnections/%C3%A9:x", "/calling/callConnections/%c3%a9:x", HOST),
    ],
)
def test_examples_of_different_path_or_host(signed_path: str, path: str, host: str) -> None:
    headers = sign(KEY, "POST", signed_path, HOST, BODY, NOW)
    assert verify(KEY, "POST", signed_path, HOST, BODY, headers) is None
    assert verify(KEY, "POST", path, host, BODY, headers) == "signature does not match"


@settings(max_examples=200, deadline=None)
@given(now=_moments, later=st.integers(1, 10**6))
def test_a_different_date_is_caught(now: int, later: int) -> None:
    assume(now + later <= 253402300799)
    headers = sign(KEY, "POST", PATH, HOST, BODY, now)
    replayed = {**headers, "x-ms-date": http_date(now + later)}
    assert verify(KEY, "POST", PATH, HOST, BODY, replayed) == "signature does not match"


@settings(max_examples=200, deadline=None)
@given(key=_keys, other=_keys)
def test_a_different_key_is_caught(key: bytes, other: bytes) -> None:
    assume(key != other)
    headers = sign(key, "POST", PATH, HOST, BODY, NOW)
    assert verify(other, "POST", PATH, HOST, BODY, headers) == "signature does not match"


def test_a_different_method_is_caught() -> None:
    headers = sign(KEY, "POST", PATH, HOST, BODY, NOW)
    assert verify(KEY, "PUT", PATH, HOST, BODY, headers) == "signature does not match"


def _signed() -> dict[str, str]:
    return sign(KEY, "POST", PATH, HOST, BODY, NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "Authorization"),
        ({k: v for k, v in _signed().items() if k != "Authorization"}, "Authorization"),
        ({**_signed(), "Authorization": "Bearer eyJ0eXAiOiJKV1QifQ"}, "Authorization"),
        (
            {**_signed(), "Authorization": _signed()["Authorization"].replace("HMAC-SHA256", "HMAC-SHA1")},
            "Authorization",
        ),
        (
            {**_signed(), "Authorization": _signed()["Authorization"].replace("x-ms-date;host;", "host;x-ms-date;")},
            "Authorization",
        ),
        ({k: v for k, v in _signed().items() if k != "x-ms-content-sha256"}, "x-ms-content-sha256"),
        ({**_signed(), "x-ms-content-sha256": content_hash(b"other")}, "x-ms-content-sha256"),
        ({k: v for k, v in _signed().items() if k != "x-ms-date"}, "signature"),
        ({**_signed(), "Authorization": _signed()["Authorization"][:-4] + "AAA="}, "signature"),
        ({**_signed(), "Authorization": _signed()["Authorization"] + "x"}, "signature"),
    ],
)
def test_missing_or_malformed_headers(headers: dict[str, str], reason: str) -> None:
    result = verify(KEY, "POST", PATH, HOST, BODY, headers)
    assert result is not None
    assert reason in result


@settings(max_examples=200, deadline=None)
@given(
    key=st.binary(min_size=16, max_size=64),
    other=st.binary(min_size=16, max_size=64),
    body=st.binary(max_size=64),
    tamper=st.sampled_from(["key", "body", "path", "host", "date", "garbage"]),
)
def test_reasons_never_reveal_the_key_or_a_signature(key: bytes, other: bytes, body: bytes, tamper: str) -> None:
    assume(key != other)
    headers = sign(key, "POST", PATH, HOST, body, NOW)
    verify_key, verify_body, path, host = key, body, PATH, HOST
    if tamper == "key":
        verify_key = other
    elif tamper == "body":
        verify_body = body + b"!"
    elif tamper == "path":
        path = PATH + "&x=1"
    elif tamper == "host":
        host = "evil.example"
    elif tamper == "date":
        headers = {**headers, "x-ms-date": http_date(NOW + 1)}
    else:
        headers = {**headers, "Authorization": "HMAC-SHA256 " + base64.b64encode(key).decode()}
    reason = verify(verify_key, "POST", path, host, verify_body, headers)
    assert reason is not None
    sent_signature = headers["Authorization"].partition("Signature=")[2]
    _, expected = independent_authorization(verify_key, path, host, verify_body, headers["x-ms-date"])
    for secret in (key, verify_key):
        assert base64.b64encode(secret).decode() not in reason
        assert secret.hex() not in reason
        assert secret.decode("latin-1") not in reason
    assert headers["Authorization"] not in reason
    assert expected not in reason
    assert expected.rpartition("Signature=")[2] not in reason
    if len(sent_signature) > 8:
        assert sent_signature not in reason


# --- HTTP dates ---------------------------------------------------------------------------------------------


def test_http_date_known_answer() -> None:
    assert http_date(NOW) == DATE
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(NOW + 0.999) == DATE  # sub-second part dropped, not rounded up
    assert parse_http_date(DATE) == NOW


@settings(max_examples=300, deadline=None)
@given(now=_moments)
def test_http_date_round_trip(now: int) -> None:
    text = http_date(now)
    assert IMF_FIXDATE.fullmatch(text), text
    assert parse_http_date(text) == now
    assert http_date(parse_http_date(text)) == text  # type: ignore[arg-type]
    assert time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)) == text


@pytest.mark.parametrize(
    "text",
    [
        "Sun, 06 Nov 1994 08:49:37 +0000",
        "Sun, 06 Nov 1994 08:49:37 -0000",
        "Sun, 06 Nov 1994 08:49:37 +0100",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37 UT",
        "Sun, 06 Nov 1994 08:49:37 EST",
        "Sun, 06 Nov 1994 08:49:37 EST GMT",  # ends with GMT but parses as EST
        "Sun, 06 Nov 1994 08:49:37 +0100 GMT",
        "Sun, 06 Nov 1994 08:49:37 -0800 GMT",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun Nov  6 08:49:37 1994",  # asctime carries no zone
        "1994-11-06T08:49:37Z",
        "784111777",
        "",
        "GMT",
        "garbage GMT",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Sun, 06 Nov 1994 08:60:37 GMT",
        "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "\x00",
    ],
)
def test_parse_http_date_rejects_non_gmt_and_malformed(text: str) -> None:
    assert parse_http_date(text) is None


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_parse_http_date_never_raises(text: str) -> None:
    result = parse_http_date(text)
    assert result is None or isinstance(result, float)


@settings(max_examples=200, deadline=None)
@given(now=_moments, hours=st.integers(-12, 14).filter(lambda h: h != 0))
def test_parse_http_date_rejects_any_offset(now: int, hours: int) -> None:
    sign_char = "+" if hours > 0 else "-"
    text = http_date(now)[: -len("GMT")] + f"{sign_char}{abs(hours):02d}00"
    assert parse_http_date(text) is None
    assert parse_http_date(text + " GMT") is None
