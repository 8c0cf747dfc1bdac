"""Signed requests to the Offsite API (stdlib `urllib`; the signature is `httpsig`'s).

`prepare` is pure: the time and the nonce come in, so a test can pin the exact request. The
`ApiClient` is the thin shell that draws them and sends. Nothing here logs a header: the
signature stays out of every message.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
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
    url: str = ""  # where it came from, for the operator

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
    """No HTTP answer, for a reason that may pass: a timeout, a reset connection. Retried."""


class WrongApiError(ServerError):
    """`api_url` cannot be Offsite's: its name does not resolve, nothing listens there, its TLS
    certificate is not for it, or what answers is not the Offsite API. Never retried: cron
    would only mail the same failure every 15 s until max_wait_s."""


# A gateway in front of the API answers these by itself (API Gateway: throttling, a Lambda
# error or timeout) in its own `{"message": ...}` body; they pass, so they are retried.
GATEWAY_TRANSIENT = (429, 502, 503, 504)


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
                          response.read(MAX_ANSWER_BYTES), request.url)
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, dict(exc.headers.items()), exc.read(MAX_ANSWER_BYTES),
                          request.url)
    except OSError as exc:  # URLError, timeouts, resets, TLS failures
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, (socket.gaierror, ConnectionRefusedError,
                               ssl.SSLCertVerificationError)):
            raise WrongApiError(f"cannot reach the Offsite API at {request.url}: "
                                f"{_unreachable(reason)}; check api_url in host.toml") from None
        raise UnreachableError(f"cannot reach the Offsite API at {request.url}: {reason}") from None


def _unreachable(reason: OSError) -> str:
    if isinstance(reason, socket.gaierror):
        return f"its name does not resolve ({reason.strerror})"
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused (nothing listens there)"
    return f"its TLS certificate does not verify ({reason})"


def check_offsite(answer: Answer) -> Answer:
    """The answer itself, when the Offsite API gave it: a JSON object, and for an error its
    `{"error": code}`; a gateway's transient error passes too. Anything else (a web server's
    page, API Gateway's "Missing Authentication Token" for a path it has no route for) means
    `api_url` points elsewhere: WrongApiError."""
    data = answer.json()
    if 200 <= answer.status < 300 and isinstance(data, dict):
        return answer
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return answer
    if answer.status in GATEWAY_TRANSIENT:
        return answer
    where = answer.url or "api_url"
    if isinstance(data, dict) and data.get("message") == "Missing Authentication Token":
        raise WrongApiError(f"the URL is wrong: {where} has no such path (API Gateway answered "
                            f"HTTP {answer.status}, \"Missing Authentication Token\"); check "
                            "api_url in host.toml: it ends with the stage, e.g. /api")
    seen = answer.body[:80].decode("utf-8", "replace").strip() or "an empty body"
    raise WrongApiError(f"{where} is not the Offsite API: it answered HTTP {answer.status} with "
                        f"{seen!r}; check api_url in host.toml")


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
        return check_offsite(self._transport(request, self._timeout))
