"""Signed requests to the Offsite API (stdlib `urllib`; the signature is `httpsig`'s).

`prepare` is pure: the time and the nonce come in, so a test can pin the exact request. The
`ApiClient` is the thin shell that draws them and sends. Nothing here logs a header: the
signature stays out of every message.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nacl.signing import SigningKey

from offsite_host.exitcodes import ServerError
from offsite_host.httpsig import sign_request

MAX_ANSWER_BYTES = 1024 * 1024
USER_AGENT = "offsite-host/0.1"


@dataclass(frozen=True)
class Prepared:
    url: str
    body: bytes
    headers: dict[str, str]
    method: str = "POST"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)

    def json(self) -> Any:
        """The decoded JSON body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    def error_text(self) -> str:
        """The server's `{"error", "message"}` as one line, for the operator."""
        data = self.json()
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, str):
            message = data.get("message")
            return error + (f": {message}" if isinstance(message, str) else "")
        return f"HTTP {self.status} without a JSON error"


class UnreachableError(ServerError):
    """No HTTP answer at all: DNS, connection, TLS or timeout."""


Transport = Callable[[Prepared, float], Answer]


def prepare(api_url: str, path: str, payload: Mapping[str, Any] | None, key: SigningKey,
            host: str, created: int, nonce: str) -> Prepared:
    """The signed POST of `payload` (compact JSON) to `api_url` + `path`, or, when `payload` is
    None, the signed GET (its empty body bound by the digest all the same); `keyid` is the
    host."""
    url = api_url.rstrip("/") + path
    method = "GET" if payload is None else "POST"
    body = b"" if payload is None else json.dumps(payload, separators=(",", ":"),
                                                   sort_keys=True).encode("utf-8")
    headers = sign_request(method, url, body, key, host, created, nonce)
    headers["Accept"] = "application/json"
    headers["User-Agent"] = USER_AGENT
    return Prepared(url, body, headers, method)


def urllib_transport(request: Prepared, timeout: float) -> Answer:
    """Sends one request. Any HTTP status is an `Answer`; only a failure to get one raises."""
    data = request.body if request.method == "POST" else None
    req = urllib.request.Request(request.url, data=data,  # noqa: S310 (http/https only)
                                 headers=request.headers, method=request.method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:  # noqa: S310
            return Answer(response.status, dict(response.headers.items()),
                          response.read(MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, dict(exc.headers.items()), exc.read(MAX_ANSWER_BYTES))
    except OSError as exc:  # URLError, timeouts, resets, TLS failures
        reason = getattr(exc, "reason", exc)
        raise UnreachableError(f"cannot reach the Offsite API at {request.url}: {reason}") from None


class ApiClient:
    def __init__(self, api_url: str, host: str, key: SigningKey,
                 transport: Transport = urllib_transport, timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.api_url, self.host, self._key = api_url, host, key
        self._transport, self._timeout, self._clock = transport, timeout, clock

    def post(self, path: str, payload: Mapping[str, Any]) -> Answer:
        return self._send(path, payload)

    def get(self, path: str) -> Answer:
        return self._send(path, None)

    def _send(self, path: str, payload: Mapping[str, Any] | None) -> Answer:
        request = prepare(self.api_url, path, payload, self._key, self.host,
                          int(self._clock()), secrets.token_urlsafe(16))
        return self._transport(request, self._timeout)
