"""The host's request signer against the control plane's verifier (RFC 9421, `ed25519`), and the
verifier against RFC 9421's own Ed25519 example (appendix B.2.6)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from offsite_host import httpsig as host

from chalicelib import httpsig as server
from chalicelib.httpsig import Policy, SignatureError, SignedRequest, VerifiedSignature

NOW = 1_767_000_000
URL = "https://api.example.com/api/v1/sessions"  # the default endpoint, stage "api"
BODY = b'{"host": "h1", "ssh_public_key": "ssh-ed25519 AAAA", "purpose": "backup"}'
KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
KEYS = {"h1": bytes(KEY.verify_key)}
COVERED = host.COVERED_COMPONENTS
STANDARD_PARAMS = f';created={NOW};nonce="n-1";keyid="h1";alg="ed25519"'


def _signed(key: SigningKey = KEY, keyid: str = "h1") -> dict[str, str]:
    return host.sign_request("POST", URL, BODY, key, keyid, NOW, "n-1")


def _request(headers: dict[str, str], /, **overrides: Any) -> SignedRequest:
    request = SignedRequest(method="POST", authority="api.example.com", path="/api/v1/sessions",
                            query="", headers=headers, body=BODY)
    return replace(request, **overrides)


def _verify(request: SignedRequest, now: int = NOW, **kwargs: Any) -> VerifiedSignature:
    return server.verify_request(request, now=now, lookup=KEYS.get, **kwargs)


def _refusal(request: SignedRequest, now: int = NOW, **kwargs: Any) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        _verify(request, now, **kwargs)
    signature = request.headers.get("Signature", "").partition("=")[2].strip(":")
    if len(signature) > 8:
        assert signature not in str(caught.value)
    return caught.value


def _hand_signed(covered: tuple[str, ...] = COVERED, params: str = STANDARD_PARAMS,
                 digest: str | None = None, key: SigningKey = KEY) -> dict[str, str]:
    """A signature our signer would not make, built from the signer's own pieces."""
    fields = {"content-type": "application/json",
              "content-digest": digest or host.content_digest(BODY)}
    known = {"@method": "POST", "@authority": "api.example.com", "@path": "/api/v1/sessions",
             "@query": "?", **fields}
    inner = "(" + " ".join(f'"{name}"' for name in covered) + ")" + params
    base = host.signature_base({name: known.get(name, "") for name in covered}, inner)
    signature = base64.b64encode(key.sign(base).signature).decode()
    return {"Content-Type": fields["content-type"], "Content-Digest": fields["content-digest"],
            "Signature-Input": f"offsite={inner}", "Signature": f"offsite=:{signature}:"}


def test_round_trip() -> None:
    assert _verify(_request(_signed())) == VerifiedSignature(
        keyid="h1", nonce="n-1", created=NOW, label="offsite")


def test_header_names_are_case_insensitive() -> None:
    headers = {name.lower(): value for name, value in _signed().items()}
    assert _verify(_request(headers)).keyid == "h1"


def test_signer_output_is_pinned() -> None:
    headers = host.sign_request("post", "https://API.Example.com:443/api/v1/sessions?b=1", BODY,
                                KEY, "h1", NOW, "n-1", label="offsite")
    assert headers["Signature-Input"] == (
        'offsite=("@method" "@authority" "@path" "@query" "content-type" "content-digest")'
        f';created={NOW};nonce="n-1";keyid="h1";alg="ed25519"')
    request = _request(headers, authority="api.example.com", query="b=1")
    assert _verify(request).nonce == "n-1"


def test_content_digest_is_the_rfc_9530_example_on_both_sides() -> None:
    expected = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    assert host.content_digest(b'{"hello": "world"}') == expected
    assert server.content_digest(b'{"hello": "world"}') == expected


@pytest.mark.parametrize(("url", "path"), [
    ("https://abc123.execute-api.eu-west-1.amazonaws.com/api/v1/sessions", "/api/v1/sessions"),
    ("https://backup.example.com/offsite/v1/sessions", "/offsite/v1/sessions"),
    ("https://backup.example.com/v1/sessions?x=1", "/v1/sessions"),
    ("https://backup.example.com", "/"),
], ids=["stage", "base-path", "root-mapping", "no-path"])
def test_the_signed_path_is_the_path_requested(url: str, path: str) -> None:
    """RFC 9421 section 2.2.6: `@path` is the target URI's path, whatever API Gateway puts
    before the routes; the server checks it against requestContext.path (host_auth)."""
    headers = host.sign_request("POST", url, BODY, KEY, "h1", NOW, "n-1")
    parts = urlsplit(url)
    request = _request(headers, path=path, authority=parts.netloc, query=parts.query)
    assert _verify(request).keyid == "h1"
    with pytest.raises(SignatureError):
        _verify(replace(request, path="/v1/sessions" if path != "/v1/sessions" else "/x"))


@pytest.mark.parametrize(("headers", "overrides", "now", "code"), [
    (_signed(), {"body": BODY + b" "}, NOW, "digest_mismatch"),
    (_signed(), {"path": "/v1/reports"}, NOW, "bad_signature"),
    (_signed(), {"method": "PUT"}, NOW, "bad_signature"),
    (_signed(), {"authority": "evil.example"}, NOW, "bad_signature"),
    (_signed(), {"query": "purpose=restore"}, NOW, "bad_signature"),
    (_signed(), {"headers": {**_signed(), "Content-Type": "text/plain"}}, NOW, "bad_signature"),
    (_signed(), {}, NOW + 301, "stale_request"),
    (_signed(), {}, NOW - 301, "stale_request"),
    (_signed(keyid="h2"), {}, NOW, "unknown_key"),
    (_signed(OTHER_KEY), {}, NOW, "bad_signature"),
    (_hand_signed(params=f';created={NOW};keyid="h1";alg="ed25519"'), {}, NOW,
     "malformed_signature"),
    (_hand_signed(params=f';created={NOW};nonce="";keyid="h1"'), {}, NOW, "malformed_signature"),
    (_hand_signed(params=';nonce="n";keyid="h1"'), {}, NOW, "malformed_signature"),
    (_hand_signed(params=f';created={NOW};nonce="n"'), {}, NOW, "malformed_signature"),
    (_hand_signed(params=f';created={NOW};nonce="n";keyid="h1";alg="rsa-pss-sha512"'), {}, NOW,
     "malformed_signature"),
    (_hand_signed(params=f';created={NOW};nonce="n";keyid="h1";alg=ed25519'), {}, NOW,
     "malformed_signature"),
    (_hand_signed(params=f';created="{NOW}";nonce="n";keyid="h1"'), {}, NOW,
     "malformed_signature"),
    (_hand_signed(params=f';created={NOW};nonce="n";keyid="h1";foo="bar"'), {}, NOW,
     "malformed_signature"),
    (_hand_signed(params=f';created={NOW};expires={NOW - 301};nonce="n";keyid="h1"'), {}, NOW,
     "stale_request"),
    (_hand_signed(("@method", "@path", "content-type")), {}, NOW, "malformed_signature"),
    (_hand_signed(("@method", "@authority", "content-digest")), {}, NOW, "malformed_signature"),
    (_hand_signed((*COVERED, "date")), {}, NOW, "malformed_signature"),
    (_hand_signed((*COVERED, "@method")), {}, NOW, "malformed_signature"),
    (_hand_signed((*COVERED, "@target-uri")), {}, NOW, "malformed_signature"),
    (_hand_signed((*COVERED, "Content-Type")), {}, NOW, "malformed_signature"),
    (_hand_signed(digest="md5=:HUXZLQLMuI/KZ5KDcJPcOA==:"), {}, NOW, "digest_mismatch"),
    (_hand_signed(digest='sha-256="X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="'), {}, NOW,
     "digest_mismatch"),
    (_hand_signed(digest="sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"), {}, NOW,
     "digest_mismatch"),
])
def test_refusals_carry_their_code(headers: dict[str, str], overrides: dict[str, Any],
                                   now: int, code: str) -> None:
    assert _refusal(_request(headers, **overrides), now).code == code


@pytest.mark.parametrize("left_out", COVERED)
def test_every_component_the_client_signs_is_required(left_out: str) -> None:
    covered = tuple(name for name in COVERED if name != left_out)
    refusal = _refusal(_request(_hand_signed(covered)))
    assert refusal.code == "malformed_signature" and left_out in refusal.reason


def test_the_server_requires_what_the_client_signs() -> None:
    assert frozenset(host.COVERED_COMPONENTS) == server.REQUIRED_COMPONENTS


def test_the_skew_window_is_inclusive() -> None:
    assert _verify(_request(_signed()), NOW + 300).created == NOW
    assert _verify(_request(_signed()), NOW - 300).created == NOW


def test_the_hand_signer_agrees_with_the_signer() -> None:
    assert _verify(_request(_hand_signed())).nonce == "n-1"


def test_a_body_with_sha_256_and_sha_512_digests_is_accepted() -> None:
    sha512 = base64.b64encode(hashlib.sha512(BODY).digest()).decode()
    digest = f"{host.content_digest(BODY)}, sha-512=:{sha512}:"
    assert _verify(_request(_hand_signed(digest=digest))).keyid == "h1"


def test_a_corrupt_enrolled_key_is_an_unknown_key() -> None:
    request = _request(_signed())
    with pytest.raises(SignatureError) as caught:
        server.verify_request(request, now=NOW, lookup=lambda _: b"short")
    assert caught.value.code == "unknown_key"


def test_a_label_selects_among_several_signatures() -> None:
    headers = _signed()
    extra = {"Signature-Input": headers["Signature-Input"] + ', proxy=("@method");created=1',
             "Signature": headers["Signature"] + ", proxy=:" + "A" * 86 + "==:"}
    request = _request({**headers, **extra})
    assert _refusal(request).code == "malformed_signature"
    assert _verify(request, label="offsite").label == "offsite"


def _with(**fields: str) -> dict[str, str]:
    return {**_signed(), **fields}


@pytest.mark.parametrize("headers", [
    {"Content-Type": "application/json", "Content-Digest": host.content_digest(BODY)},
    _with(**{"Signature-Input": ""}),
    _with(**{"Signature-Input": "offsite"}),
    _with(**{"Signature-Input": 'offsite=("@method" "@path"'}),
    _with(**{"Signature-Input": 'offsite=("@method""@path");created=1'}),
    _with(**{"Signature-Input": 'offsite=("@method" @path);created=1'}),
    _with(**{"Signature-Input": 'offsite=(@method);created=1'}),
    _with(**{"Signature-Input": 'Offsite=("@method");created=1'}),
    _with(**{"Signature-Input": 'offsite="@method";created=1'}),
    _with(**{"Signature-Input": _signed()["Signature-Input"] + ","}),
    _with(**{"Signature-Input": ", ".join([_signed()["Signature-Input"]] * 2)}),
    _with(**{"Signature-Input": 'offsite=("@method");created=1.5'}),
    _with(**{"Signature-Input": 'offsite=("@method");created=1234567890123456'}),
    _with(**{"Signature-Input": 'offsite=("@méthod");created=1'}),
    _with(**{"Signature-Input": 'offsite=("@method";sf);created=1'}),
    _with(**{"Signature-Input": 'offsite=("@method" "@path" ("x"));created=1'}),
    _with(Signature="offsite=:not base64!:"),
    _with(Signature="offsite=:YWJjZA=:"),
    _with(Signature="offsite=:YWJj"),
    _with(Signature="offsite=abc"),
    _with(Signature="offsite=:YWJj:"),
    _with(Signature="other=" + _signed()["Signature"].partition("=")[2]),
    _with(Signature=""),
])
def test_malformed_signature_headers_are_refused(headers: dict[str, str]) -> None:
    assert _refusal(_request(headers)).code in ("malformed_signature", "bad_signature")


_SF_TEXT = st.text(st.sampled_from('offsite=();:,"@ \t?01-9azAZ*./+=\\'), max_size=80)


@settings(max_examples=300, deadline=None)
@given(signature_input=_SF_TEXT | st.text(max_size=80), signature=_SF_TEXT)
def test_any_other_header_text_is_refused_with_a_signature_error(signature_input: str,
                                                                  signature: str) -> None:
    _refusal(_request(_with(**{"Signature-Input": signature_input, "Signature": signature})))


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(["Signature-Input", "Signature"]), data=st.data())
def test_an_edited_header_fails_only_with_a_signature_error(field: str,
                                                            data: st.DataObject) -> None:
    value = _signed()[field]
    start = data.draw(st.integers(0, len(value)))
    end = data.draw(st.integers(start, min(len(value), start + 3)))
    edited = value[:start] + data.draw(_SF_TEXT.filter(lambda s: len(s) < 4)) + value[end:]
    try:
        verified = _verify(_request(_with(**{field: edited})))
    except SignatureError:
        return
    assert (verified.keyid, verified.nonce, verified.created) == ("h1", "n-1", NOW)


# RFC 9421 appendix B.1.4: the public half of "test-key-ed25519" (the private half stays out).
RFC_PUBLIC_KEY_SPKI = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs="
# RFC 9421 appendix B.2: the test-request, whose content is `{"hello": "world"}`.
RFC_REQUEST = SignedRequest(
    method="POST", authority="example.com", path="/foo", query="param=Value&Pet=dog",
    headers={
        "Host": "example.com",
        "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "Content-Type": "application/json",
        "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+"
                          "AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        "Content-Length": "18",
        # Appendix B.2.6, "Signing a Request Using ed25519".
        "Signature-Input": 'sig-b26=("date" "@method" "@path" "@authority" "content-type" '
                           '"content-length");created=1618884473;keyid="test-key-ed25519"',
        "Signature": "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4"
                     "A0w6vuQv5lIp5WPpBKRCw==:",
    },
    body=b'{"hello": "world"}',
)
RFC_POLICY = Policy(components=frozenset({"@method", "@path"}), require_nonce=False)


def _rfc_lookup(keyid: str) -> bytes | None:
    spki = base64.b64decode(RFC_PUBLIC_KEY_SPKI)
    assert spki[:12] == bytes.fromhex("302a300506032b6570032100")  # Ed25519 SPKI, RFC 8410
    return spki[12:] if keyid == "test-key-ed25519" else None


def test_the_rfc_9421_ed25519_example_verifies() -> None:
    verified = server.verify_request(RFC_REQUEST, now=1618884473 + 30, lookup=_rfc_lookup,
                                     policy=RFC_POLICY)
    assert verified == VerifiedSignature(keyid="test-key-ed25519", nonce=None,
                                         created=1618884473, label="sig-b26")


@pytest.mark.parametrize(("overrides", "policy", "code"), [
    ({"path": "/bar"}, RFC_POLICY, "bad_signature"),
    ({"headers": {**RFC_REQUEST.headers, "Content-Length": "19"}}, RFC_POLICY, "bad_signature"),
    ({"body": b'{"hello": "World"}'}, RFC_POLICY, "digest_mismatch"),
    ({}, Policy(components=RFC_POLICY.components), "malformed_signature"),
    ({}, Policy(require_nonce=False), "malformed_signature"),
])
def test_the_rfc_example_is_refused_when_altered_or_under_the_host_policy(
        overrides: dict[str, Any], policy: Policy, code: str) -> None:
    request = replace(RFC_REQUEST, **overrides)
    with pytest.raises(SignatureError) as caught:
        server.verify_request(request, now=1618884473, lookup=_rfc_lookup, policy=policy)
    assert caught.value.code == code
