"""`POST /v1/sessions` (DESIGN, "Host-facing API"). Parsing an answer is pure and strict: a
field outside the contract is the server's fault (exit 9), never something handed on to ssh or
rsync.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from offsite_host.api import GATEWAY_TRANSIENT, Answer, ApiClient, UnreachableError
from offsite_host.exitcodes import ConfigError, NoWindowError, ServerError

DEFAULT_RETRY_S = 15.0
MAX_RETRY_S = 300.0
_ADDRESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_WINDOW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_B64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_CERT_TYPE = "ssh-ed25519-cert-v01@openssh.com"


@dataclass(frozen=True)
class Session:
    window_id: str
    address: str
    port: int
    user: str
    certificate: str
    known_hosts: str
    remote_path: str
    not_after: float
    deadline: float

    @property
    def stop_at(self) -> float:
        """When the work must be over: the certificate's end or the window's, the earlier."""
        return min(self.not_after, self.deadline)


@dataclass(frozen=True)
class Retry:
    after_s: float
    reason: str


def parse_session_answer(answer: Answer, now: float) -> Session | Retry:
    """201 -> the session; 503 (and a gateway's 429/502/504) -> wait and retry; the rest
    raises."""
    if answer.status == 201:
        return parse_session(answer.json())
    if answer.status in GATEWAY_TRANSIENT:
        return Retry(retry_after(answer.header("Retry-After"), now),
                     f"HTTP {answer.status} ({answer.error_text()})")
    if answer.status == 409:
        data = answer.json()
        if isinstance(data, dict) and data.get("error") == "no_open_window":
            nxt = data.get("next_window")
            hint = f"; next window {nxt}" if isinstance(nxt, str) and nxt else ""
            raise NoWindowError(f"no backup window is open{hint}")
    if answer.status in (400, 401, 403):
        raise ConfigError(f"the Offsite API refused this host (HTTP {answer.status}, "
                          f"{answer.error_text()}): {_REFUSAL_HINTS[answer.status]}")
    raise ServerError(f"unexpected answer from the Offsite API: HTTP {answer.status} "
                      f"({answer.error_text()})")


_REFUSAL_HINTS = {
    400: "the request was malformed; check `host` in host.toml",
    401: "bad signature or replay; check the host key is the enrolled one and the clock is right",
    403: "this host is unknown or revoked; enrol the key printed by `offsite-host keygen`",
}


def parse_session(data: object) -> Session:
    if not isinstance(data, dict):
        raise ServerError("malformed session answer: the body is not a JSON object")
    return Session(
        window_id=_match(data, "window_id", _WINDOW_ID),
        address=_match(data, "address", _ADDRESS),
        port=_port(data.get("port")),
        user=_match(data, "user", _USER),
        certificate=_certificate(data.get("certificate")),
        known_hosts=_known_hosts(data.get("known_hosts")),
        remote_path=_remote_path(data.get("remote_path")),
        not_after=parse_time(data.get("not_after"), "not_after"),
        deadline=parse_time(data.get("deadline"), "deadline"),
    )


def retry_after(value: str | None, now: float) -> float:
    """`Retry-After` (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date; bounded."""
    delay = DEFAULT_RETRY_S
    if value and value.strip().isdigit():
        delay = float(value.strip())
    elif value:
        try:
            delay = parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            delay = DEFAULT_RETRY_S
    return min(max(delay, 1.0), MAX_RETRY_S)


def parse_time(value: object, name: str) -> float:
    """Seconds since the epoch, from a number or an ISO 8601 time with its offset."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            return moment.timestamp()
    raise ServerError(f"malformed session answer: {name} is not a time with a timezone")


def _match(data: Mapping[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ServerError(f"malformed session answer: {name} is missing or invalid")
    return value


def _port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ServerError("malformed session answer: port is not a TCP port number")
    return value


def _certificate(value: object) -> str:
    fields = value.strip().split() if isinstance(value, str) else []
    if len(fields) < 2 or fields[0] != _CERT_TYPE or not _B64.fullmatch(fields[1]):
        raise ServerError(f"malformed session answer: certificate is not an {_CERT_TYPE} line")
    return " ".join(fields[:2])


def _known_hosts(value: object) -> str:
    """One `known_hosts` line: `[@cert-authority] hosts keytype base64-key [comment]`."""
    if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
        raise ServerError("malformed session answer: known_hosts is not one line")
    fields = value.split()
    if fields and fields[0] in ("@cert-authority", "@revoked"):
        fields = fields[1:]
    if len(fields) < 3 or not _B64.fullmatch(fields[2]) or fields[0].startswith("-"):
        raise ServerError("malformed session answer: known_hosts is not a known_hosts line")
    return value.strip()


def _remote_path(value: object) -> str:
    """Relative to the host's volume (rrsync confines it there anyway): no `..`, no option."""
    if (not isinstance(value, str) or not value or value.startswith(("/", "-", "~"))
            or ".." in value.split("/") or any(ord(c) < 32 for c in value)
            or len(value) > 255):
        raise ServerError("malformed session answer: remote_path is not a relative path")
    return value


def ask_session(client: ApiClient, ssh_public_key: str, clock: Callable[[], float] = time.time,
                purpose: str = "backup") -> Session | Retry:
    """One request: the session, or when to ask again; no window open raises NoWindowError."""
    payload = {"host": client.host, "ssh_public_key": ssh_public_key, "purpose": purpose}
    try:
        return parse_session_answer(client.post("/v1/sessions", payload), clock())
    except UnreachableError as exc:
        return Retry(DEFAULT_RETRY_S, str(exc))


def open_session(client: ApiClient, ssh_public_key: str, max_wait_s: float,
                 log: Callable[[str], None], clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, purpose: str = "backup") -> Session:
    """Asks for a session, honouring `Retry-After` while the window opens, for at most
    `max_wait_s` in total; unreachable-API errors are retried within the same budget."""
    give_up_at = clock() + max_wait_s
    while True:
        outcome = ask_session(client, ssh_public_key, clock, purpose)
        if isinstance(outcome, Session):
            return outcome
        wait = min(outcome.after_s, give_up_at - clock())
        if wait <= 0:
            raise ServerError(f"no session after waiting {max_wait_s:.0f} s (max_wait_s): "
                              f"{outcome.reason}")
        log(f"window not ready ({outcome.reason}); retrying in {wait:.0f} s")
        sleep(wait)
