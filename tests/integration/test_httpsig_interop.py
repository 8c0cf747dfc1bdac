"""Our signer and verifier against an independent RFC 9421 implementation, both ways: the
`http-message-signatures` package (test-only), on `requests.PreparedRequest` objects."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from urllib.parse import urlsplit

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver
from http_message_signatures.algorithms import ED25519
from nacl.signing import SigningKey
from offsite_host.httpsig import COVERED_COMPONENTS, authority, sign_request

from chalicelib.httpsig import SignatureError, SignedRequest, verify_request

BODY = b'{"host": "h1", "window_id": "w-1", "status": "succeeded", "bytes_sent": 42}'
CASES = [
    ("POST", "https://api.example.com/v1/reports", BODY),
    ("GET", "https://API.example.com:443/v1/windows/current?host=h1&x=a%20b", b""),
    ("POST", "http://127.0.0.1:8000/v1/sessions", BODY),
]


def _their_verifier(key: SigningKey) -> HTTPMessageVerifier:
    public = Ed25519PublicKey.from_public_bytes(bytes(key.verify_key))
    resolver = MappingKeyResolver(public_keys={"h1": public}, private_keys={})
    return HTTPMessageVerifier(signature_algorithm=ED25519, key_resolver=resolver)


def _prepared(
    method: str, url: str, body: bytes, headers: dict[str, str]
) -> requests.PreparedRequest:
    return requests.Request(method, url, data=body, headers=headers).prepare()


def _as_the_app_sees_it(prepared: requests.PreparedRequest) -> SignedRequest:
    parts = urlsplit(str(prepared.url))
    body = prepared.body if isinstance(prepared.body, bytes) else b""
    headers = {name: str(value) for name, value in prepared.headers.items()}
    # The Host header urllib3 sends: lowercase, the port only when it is not the default.
    return SignedRequest(method=str(prepared.method), authority=authority(parts), path=parts.path,
                         query=parts.query, headers=headers, body=body)


@pytest.mark.parametrize(("method", "url", "body"), CASES)
def test_their_verifier_accepts_our_signature(method: str, url: str, body: bytes) -> None:
    key = SigningKey.generate()
    # Their verifier reads the clock (5 s tolerance), so this signature is made now.
    headers = sign_request(method, url, body, key, "h1", int(time.time()), "our-nonce")
    prepared = _prepared(method, url, body, headers)
    [result] = _their_verifier(key).verify(
        prepared, body=body, require_components=COVERED_COMPONENTS)
    assert result.label == "offsite"
    assert result.parameters["keyid"] == "h1" and result.parameters["alg"] == "ed25519"
    assert result.nonce == "our-nonce" and result.body == body


def test_their_verifier_sees_the_stage_or_base_path_we_sign() -> None:
    """The path signed is the path requested, stage (or a custom domain's base path)
    included: another implementation reading the request off the wire agrees."""
    key = SigningKey.generate()
    for url in ("https://abc.execute-api.eu-west-1.amazonaws.com/api/v1/sessions",
                "https://backup.example.com/offsite/v1/sessions"):
        headers = sign_request("POST", url, BODY, key, "h1", int(time.time()), "n")
        assert _their_verifier(key).verify(_prepared("POST", url, BODY, headers),
                                           body=BODY)[0].nonce == "n"


def test_their_verifier_refuses_our_signature_over_another_body() -> None:
    key = SigningKey.generate()
    headers = sign_request("POST", CASES[0][1], BODY, key, "h1", int(time.time()), "n")
    prepared = _prepared("POST", CASES[0][1], BODY + b" ", headers)
    with pytest.raises(Exception, match="Content-Digest"):
        _their_verifier(key).verify(prepared, body=BODY + b" ")


def _their_signature(method: str, url: str, body: bytes, created: int) -> tuple[
        requests.PreparedRequest, bytes]:
    private = Ed25519PrivateKey.generate()
    resolver = MappingKeyResolver(public_keys={}, private_keys={"h1": private})
    signer = HTTPMessageSigner(signature_algorithm=ED25519, key_resolver=resolver)
    prepared = _prepared(method, url, body, {"Content-Type": "application/json"})
    signer.sign(prepared, key_id="h1", created=datetime.fromtimestamp(created, tz=timezone.utc),
                nonce="their-nonce", label="offsite", covered_component_ids=COVERED_COMPONENTS,
                body=body)
    return prepared, private.public_key().public_bytes_raw()


@pytest.mark.parametrize(("method", "url", "body"), CASES)
def test_our_verifier_accepts_their_signature(method: str, url: str, body: bytes) -> None:
    created = 1_767_000_000
    prepared, public = _their_signature(method, url, body, created)
    request = _as_the_app_sees_it(prepared)
    verified = verify_request(request, now=created + 10, lookup={"h1": public}.get)
    assert (verified.keyid, verified.nonce, verified.created) == ("h1", "their-nonce", created)


def test_our_verifier_refuses_their_signature_over_another_body() -> None:
    prepared, public = _their_signature("POST", CASES[0][1], BODY, 1_767_000_000)
    prepared.body = BODY.replace(b"42", b"43")
    with pytest.raises(SignatureError) as caught:
        verify_request(_as_the_app_sees_it(prepared), now=1_767_000_000, lookup={"h1": public}.get)
    assert caught.value.code == "digest_mismatch"
