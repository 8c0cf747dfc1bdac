from __future__ import annotations

from typing import Any

import pytest

from chalicelib.payloads import (
    MAX_JSON_DEPTH,
    InvalidPayloadError,
    json_depth,
    parse_json_object,
    parse_open_request,
    parse_report,
)

REPORT = {"host": "c", "window_id": "w-1", "status": "succeeded", "bytes_sent": 10,
          "files": 2, "duration_s": 1.5, "detail": ""}


def test_open_request() -> None:
    parsed = parse_open_request({"duration_hours": 1, "hosts": ["c", "h", "c"]})
    assert parsed.duration_hours == 1.0 and parsed.hosts == {"c", "h"}
    assert parse_open_request({}).hosts is None


@pytest.mark.parametrize("body", [
    {"duration_hours": 0}, {"duration_hours": -1}, {"duration_hours": 25},
    {"duration_hours": "2"}, {"duration_hours": True}, {"duration_hours": float("nan")},
    {"hosts": []}, {"hosts": "c"}, {"hosts": ["C"]}, {"hosts": ["../etc"]}, {"hosts": [1]},
    {"extra": 1},
])
def test_bad_open_requests(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayloadError):
        parse_open_request(body)


def test_report() -> None:
    assert parse_report(REPORT).bytes_sent == 10


@pytest.mark.parametrize("change", [
    {"status": "ok"}, {"bytes_sent": -1}, {"bytes_sent": "1"}, {"files": 1.5},
    {"duration_s": "fast"}, {"host": "a" * 33}, {"window_id": 5}, {"detail": 3}, {"x": 1},
])
def test_bad_reports(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayloadError):
        parse_report({**REPORT, **change})


@pytest.mark.parametrize("raw", [b"{", b"[]", b'"x"', b"\xff\xfe", b"{}" + b" " * 70000])
def test_bad_bodies(raw: bytes) -> None:
    with pytest.raises(InvalidPayloadError):
        parse_json_object(raw)


def test_empty_body_is_an_empty_object() -> None:
    assert parse_json_object(b"") == {} and parse_json_object(None) == {}


@pytest.mark.parametrize(("value", "depth"), [
    (1, 0), ({}, 1), ([], 1), ({"a": [1, {"b": []}]}, 4), ([[[]], []], 3)])
def test_json_depth(value: object, depth: int) -> None:
    assert json_depth(value) == depth


def test_nesting_is_refused_past_the_limit_only() -> None:
    def nested(levels: int) -> bytes:
        return b'{"a": ' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"

    assert json_depth(parse_json_object(nested(MAX_JSON_DEPTH))) == MAX_JSON_DEPTH
    for levels in (MAX_JSON_DEPTH + 1, 900, 20_000):
        with pytest.raises(InvalidPayloadError, match="nests deeper"):
            parse_json_object(nested(levels))
