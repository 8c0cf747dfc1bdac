"""chalicelib/boot_signal.py: the instance's signed ready/failed message, and the service that
remembers its nonce and hands it to the window's machine."""

from __future__ import annotations

import base64
import secrets

import pytest
from nacl.signing import SigningKey

from chalicelib.adapters.store import InMemoryNonceStore
from chalicelib.boot_signal import (
    NAMESPACE,
    SKEW_SECONDS,
    BootSignal,
    BootSignalService,
    SignalError,
    check_signal,
    parse_signal,
    signal_body,
    signal_message,
)
from chalicelib.host_auth import NotAuthenticatedError
from chalicelib.payloads import InvalidPayloadError
from chalicelib.sshcert import ca_public_key_line
from chalicelib.sshsig import sign
from chalicelib.window import Decision

NOW = 1_796_000_000
INSTANCE = "i-0123456789abcdef0"


def message(status: str = "ready", at: int = NOW, instance: str = INSTANCE,
            reason: str = "3 volume(s) mounted") -> bytes:
    return signal_message(BootSignal(instance, status, at, secrets.token_hex(16), reason))


def test_the_message_round_trips_and_nothing_else_parses() -> None:
    text = message("failed", reason="c: /dev/sdf is not attached")
    parsed = parse_signal(text)
    assert (parsed.instance_id, parsed.status, parsed.time, parsed.ready) == (
        INSTANCE, "failed", NOW, False)
    assert parsed.reason == "c: /dev/sdf is not attached"
    for bad in (text.replace(b"status failed", b"status open"),
                text.replace(b"instance i-", b"instance x-"),
                text + b"extra line\n", text.replace(b"reason c", b"reason \x1b"),
                text.replace(b"offsite-boot-signal 1", b"offsite-boot-signal 2"),
                text.replace(f"time {NOW}".encode(), b"time soon")):
        with pytest.raises(SignalError):
            parse_signal(bad)


def test_a_signal_is_accepted_only_by_the_host_key_for_its_path_and_in_time() -> None:
    key = SigningKey.generate()
    line = ca_public_key_line(key, "offsite-host")
    text = message()
    armored = sign(key, text, NAMESPACE)
    assert check_signal(text, armored, line, INSTANCE, "ready", NOW).ready
    assert check_signal(text, armored, line, INSTANCE, "ready", NOW + SKEW_SECONDS).ready
    with pytest.raises(SignalError, match="from now"):
        check_signal(text, armored, line, INSTANCE, "ready", NOW + SKEW_SECONDS + 1)
    with pytest.raises(SignalError, match="the path"):  # signed ready, posted as failed
        check_signal(text, armored, line, INSTANCE, "failed", NOW)
    with pytest.raises(SignalError, match="the path"):  # another instance's signal
        check_signal(text, armored, line, "i-0fedcba9876543210", "ready", NOW)
    with pytest.raises(SignalError, match="signature refused"):  # not the host key
        check_signal(text, sign(SigningKey.generate(), text, NAMESPACE), line, INSTANCE,
                     "ready", NOW)
    with pytest.raises(SignalError, match="signature refused"):  # another namespace
        check_signal(text, sign(key, text, "file"), line, INSTANCE, "ready", NOW)


class Windows:
    def __init__(self) -> None:
        self.signals: list[tuple[str, bool, str]] = []

    def on_boot_signal(self, instance_id: str, ready: bool, cause: str) -> Decision:
        self.signals.append((instance_id, ready, cause))
        return Decision(None, "noted")


def test_the_service_hands_on_a_good_signal_once_and_refuses_a_replay() -> None:
    key, windows = SigningKey.generate(), Windows()
    service = BootSignalService(windows, lambda: ca_public_key_line(key), InMemoryNonceStore(),
                                lambda: NOW)
    text = message("failed", reason="sshd answers with another host key")
    body = signal_body(text, sign(key, text, NAMESPACE))
    service.receive(INSTANCE, "failed", body)
    assert windows.signals == [(INSTANCE, False, "sshd answers with another host key")]
    with pytest.raises(NotAuthenticatedError):
        service.receive(INSTANCE, "failed", body)  # the same message again
    with pytest.raises(NotAuthenticatedError):
        service.receive(INSTANCE, "ready", body)
    assert len(windows.signals) == 1
    with pytest.raises(InvalidPayloadError):
        service.receive(INSTANCE, "ready", {"message": "%%%", "signature": ""})
    with pytest.raises(InvalidPayloadError):
        service.receive(INSTANCE, "ready", {"message": base64.b64encode(text).decode()})
