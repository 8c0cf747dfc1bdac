"""The archive instance's word that its boot is done: ready, or failed and why.

How the instance proves who it is. It holds no AWS credential but its instance role, and the
one secret it is given is the stage's SSH host key (from SSM, readable by the instance role
only: policies/instance-role.json), whose public half the control plane keeps. So boot.sh
signs a small message with that key, `ssh-keygen -Y sign -n offsite-boot-signal` (an SSHSIG:
OpenSSH 8.1 or later, which Amazon Linux 2023's is), and posts it with curl to
`POST /v1/archives/{instance_id}/ready` or `/failed`; the control plane checks it here with
pynacl (chalicelib/sshsig.py). Why not the instance role (events:PutEvents, say): it would
give every archive instance a write to the account's event bus or to the table, and the
handler would still have to trust whatever the instance wrote; a signature by the very key
sshd serves is also the proof that the host key arrived. The message binds the instance id,
the outcome, a time and a nonce:

    offsite-boot-signal 1
    instance <instance id>
    status ready|failed
    time <unix seconds>
    nonce <32 to 64 hex digits>
    reason <one line of printable ASCII>

A message more than SKEW_SECONDS from the control plane's clock is refused, and its nonce is
kept (by conditional put, with a TTL past that skew) so the same message cannot be played
twice. The host key is the stage's, shared by its archives: a signal names its instance, and
only an instance holding the key (or the control plane) can sign one.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from chalicelib.adapters.store import NonceStore
from chalicelib.host_auth import NotAuthenticatedError
from chalicelib.payloads import InvalidPayloadError
from chalicelib.sshcert import SshCertError, parse_ed25519_public_key
from chalicelib.sshsig import SshSigError, verify
from chalicelib.window import Decision

logger = Logger(service="offsite", child=True)

NAMESPACE = "offsite-boot-signal"
HEADER = "offsite-boot-signal 1"
SKEW_SECONDS = 300
NONCE_TTL_SECONDS = 2 * SKEW_SECONDS + 60
STATUSES = ("ready", "failed")
INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")
NONCE = re.compile(r"[0-9a-f]{32,64}")
REASON = re.compile(r"[ -~]{0,1000}")
MAX_MESSAGE = 2048


class SignalError(Exception):
    """Why a signal was refused (logged; the answer says no more than 401)."""


@dataclass(frozen=True)
class BootSignal:
    instance_id: str
    status: str  # ready | failed
    time: int
    nonce: str
    reason: str

    @property
    def ready(self) -> bool:
        return self.status == "ready"


def signal_message(signal: BootSignal) -> bytes:
    """The bytes boot.sh signs (the tests and the local stack make theirs with it)."""
    return "".join([f"{HEADER}\n", f"instance {signal.instance_id}\n",
                    f"status {signal.status}\n", f"time {signal.time}\n",
                    f"nonce {signal.nonce}\n", f"reason {signal.reason}\n"]).encode()


def parse_signal(message: bytes) -> BootSignal:
    """The signal `message` says; raises SignalError when it is not one signal_message makes."""
    try:
        text = message.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SignalError("message is not ASCII") from exc
    lines = text.split("\n")
    keys = ("instance", "status", "time", "nonce", "reason")
    if len(lines) != len(keys) + 2 or lines[0] != HEADER or lines[-1] != "":
        raise SignalError("not an offsite-boot-signal 1 message")
    values = {}
    for key, line in zip(keys, lines[1:-1], strict=True):
        name, _, value = line.partition(" ")
        if name != key:
            raise SignalError(f"expected {key}, got {name[:20]!r}")
        values[key] = value
    if not INSTANCE_ID.fullmatch(values["instance"]) or values["status"] not in STATUSES \
            or not values["time"].isdigit() or not NONCE.fullmatch(values["nonce"]) \
            or not REASON.fullmatch(values["reason"]):
        raise SignalError("a field of the message is malformed")
    return BootSignal(values["instance"], values["status"], int(values["time"]),
                      values["nonce"], values["reason"])


def check_signal(message: bytes, signature: str, host_public_line: str, instance_id: str,
                 status: str, now: int) -> BootSignal:
    """The signal, if `signature` is the host key's SSHSIG of `message` in NAMESPACE, the
    message names `instance_id` and `status` (the route's), and its time is within
    SKEW_SECONDS of `now`. Raises SignalError. The nonce is the caller's to remember."""
    try:
        public_key = parse_ed25519_public_key(host_public_line)
    except SshCertError as exc:
        raise SignalError(f"the stage's host public key does not parse: {exc}") from exc
    try:
        verify(signature, message, NAMESPACE, public_key)
    except SshSigError as exc:
        raise SignalError(f"signature refused: {exc}") from exc
    signal = parse_signal(message)
    if (signal.instance_id, signal.status) != (instance_id, status):
        raise SignalError(f"the message says {signal.instance_id} {signal.status}, the path "
                          f"{instance_id} {status}")
    if abs(signal.time - now) > SKEW_SECONDS:
        raise SignalError(f"signed at {signal.time}, {signal.time - now:+d} s from now")
    return signal


def signal_body(message: bytes, armored_signature: str) -> dict[str, str]:
    """The JSON body boot.sh posts (parse_signal_body reads it)."""
    return {"message": base64.b64encode(message).decode(),
            "signature": base64.b64encode(armored_signature.encode()).decode()}


def parse_signal_body(body: Mapping[str, Any]) -> tuple[bytes, str]:
    """(message, armored signature) from {"message": base64, "signature": base64 of the
    armored SSHSIG}: base64 both ways, so that curl posts them without JSON escaping."""
    try:
        message = base64.b64decode(str(body["message"]), validate=True)
        signature = base64.b64decode(str(body["signature"]), validate=True).decode("ascii")
    except (KeyError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidPayloadError("expected {\"message\": base64, \"signature\": base64}") \
            from exc
    if len(message) > MAX_MESSAGE:
        raise InvalidPayloadError("message too long")
    return message, signature


class Windows(Protocol):
    def on_boot_signal(self, instance_id: str, ready: bool, cause: str) -> Decision: ...


class BootSignalService:
    def __init__(self, windows: Windows, host_public_line: Callable[[], str],
                 nonces: NonceStore, clock: Callable[[], int]) -> None:
        self._windows = windows
        self._host_public_line = host_public_line
        self._nonces = nonces
        self._clock = clock

    def receive(self, instance_id: str, status: str, body: Mapping[str, Any]) -> Decision:
        """Checks the signal, remembers its nonce, and hands it to the window's machine."""
        message, signature = parse_signal_body(body)
        now = self._clock()
        try:
            signal = check_signal(message, signature, self._host_public_line(), instance_id,
                                  status, now)
        except SignalError as exc:
            logger.warning("boot signal refused", extra={"instance_id": instance_id[:40],
                                                         "reason": str(exc)})
            raise NotAuthenticatedError("boot signal not accepted") from exc
        if not self._nonces.remember_nonce(f"archive:{instance_id}", signal.nonce, now,
                                           now + NONCE_TTL_SECONDS):
            logger.warning("boot signal replayed", extra={"instance_id": instance_id})
            raise NotAuthenticatedError("boot signal not accepted")
        logger.info("boot signal", extra={"instance_id": instance_id, "status": status,
                                          "reason": signal.reason})
        return self._windows.on_boot_signal(instance_id, signal.ready, signal.reason)
