"""Signed requests: the body is compact JSON, bound by Content-Digest, signed as the host."""

from __future__ import annotations

import base64
import hashlib
import json

from nacl.signing import SigningKey
from offsite_host.api import Answer, prepare


def test_prepare_signs_the_post_as_the_host() -> None:
    key = SigningKey.generate()
    request = prepare("https://api.example.com/prod/", "/v1/sessions",
                      {"purpose": "backup", "host": "web-1"}, key, "web-1", 1_900_000_000,
                      "n0nce")
    assert request.url == "https://api.example.com/prod/v1/sessions"
    assert request.body == b'{"host":"web-1","purpose":"backup"}'
    digest = base64.b64encode(hashlib.sha256(request.body).digest()).decode()
    assert request.headers["Content-Digest"] == f"sha-256=:{digest}:"
    assert request.headers["Content-Type"] == "application/json"
    params = request.headers["Signature-Input"]
    assert 'keyid="web-1"' in params and "created=1900000000" in params
    assert 'nonce="n0nce"' in params and '"@path"' in params
    assert request.headers["Signature"].startswith("offsite=:")


def test_prepare_is_deterministic_for_pinned_time_and_nonce() -> None:
    key = SigningKey.generate()
    args = ("https://api.example.com", "/v1/reports", {"a": 1}, key, "web-1", 5, "n")
    assert prepare(*args) == prepare(*args)
    assert prepare(*args).headers != prepare(*args[:-1], "m").headers


def test_error_text_reads_the_servers_json_error() -> None:
    assert Answer(403, {}, json.dumps({"error": "revoked", "message": "gone"}).encode()
                  ).error_text() == "revoked: gone"
    assert Answer(400, {}, b'{"error": "bad"}').error_text() == "bad"
    assert Answer(502, {}, b"<html>").error_text() == "HTTP 502 without a JSON error"
    assert Answer(200, {"Retry-After": "3"}, b"").header("retry-after") == "3"


def test_a_get_is_signed_over_its_empty_body_and_verifies_on_the_server() -> None:
    from chalicelib.httpsig import SignedRequest, verify_request

    key = SigningKey.generate()
    request = prepare("https://api.example.com/prod", "/v1/hosts/web-1/snapshots", None, key,
                      "web-1", 1_900_000_000, "n0nce")
    assert request.method == "GET" and request.body == b""
    signed = SignedRequest("GET", "api.example.com", "/prod/v1/hosts/web-1/snapshots", "",
                           request.headers, b"")
    verified = verify_request(signed, now=1_900_000_000,
                              lookup=lambda keyid: bytes(key.verify_key))
    assert verified.keyid == "web-1"
