"""Issuing a host its short-lived SSH credential for the open window (`POST /v1/sessions`)
and telling it about the current window (`GET /v1/windows/current`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.accounts import AccountNameError, account_name
from chalicelib.adapters.metrics import Metrics
from chalicelib.adapters.store import WindowStore
from chalicelib.keys import CertificateAuthority
from chalicelib.payloads import InvalidPayloadError
from chalicelib.sshcert import (
    CertificateSpec,
    SshCertError,
    parse_ed25519_public_key,
    public_key_fingerprint,
    sign_user_certificate,
)
from chalicelib.window import Shard, State, Window

logger = Logger(service="offsite", child=True)
PURPOSES = ("backup", "restore")
REMOTE_PATH = "archive/"


class NoOpenWindowError(Exception):
    def __init__(self, next_window: datetime | None,
                 message: str = "no backup window is open") -> None:
        super().__init__(message)
        self.next_window = next_window


class WindowOpeningError(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the window is opening; retry in {retry_after} s")
        self.retry_after = retry_after


class NotExpectedError(Exception):
    pass


class WrongHostError(Exception):
    pass


@dataclass(frozen=True)
class SessionRequest:
    host: str
    ssh_public_key: str
    purpose: str


def parse_session_request(body: Mapping[str, Any]) -> SessionRequest:
    unknown = sorted(set(body) - {"host", "ssh_public_key", "purpose"})
    if unknown:
        raise InvalidPayloadError(f"unknown field(s): {', '.join(unknown)}")
    host, key, purpose = body.get("host"), body.get("ssh_public_key"), body.get("purpose")
    if not isinstance(host, str):
        raise InvalidPayloadError("host must be the host's name")
    if purpose not in PURPOSES:
        raise InvalidPayloadError(f"purpose must be one of {', '.join(PURPOSES)}")
    if not isinstance(key, str):
        raise InvalidPayloadError("ssh_public_key must be an 'ssh-ed25519 AAAA...' line")
    try:
        parse_ed25519_public_key(key)
    except SshCertError as exc:
        raise InvalidPayloadError(f"ssh_public_key: {exc}") from exc
    return SessionRequest(host, key, str(purpose))


@dataclass(frozen=True)
class CertificatePolicy:
    """What a certificate allows on the instance (chalicelib/instance/boot.sh makes the
    accounts and mounts these paths)."""

    rrsync: str = "/usr/bin/rrsync"
    mount_root: str = "/srv/offsite"
    restore_root: str = "/srv/offsite-restore"  # restore volumes, mounted read-only
    port: int = 22
    backdate: timedelta = timedelta(minutes=5)
    source_address: str | None = None
    retry_after: int = 30
    account_prefix: str = ""

    def account(self, host: str) -> str:
        """The host's Unix account on the instance: the certificate's one principal."""
        try:
            return account_name(self.account_prefix, host)
        except AccountNameError as exc:
            raise InvalidPayloadError(str(exc)) from exc

    def force_command(self, host: str, purpose: str) -> str:
        if purpose == "backup":
            return f"{self.rrsync} -wo {self.mount_root}/{host}"
        return f"{self.rrsync} -ro {self.restore_root}/{host}"


@dataclass
class SessionService:
    store: WindowStore
    ca: CertificateAuthority
    metrics: Metrics
    clock: Callable[[], datetime]
    next_window: Callable[[datetime], datetime | None]
    policy: CertificatePolicy = field(default_factory=CertificatePolicy)
    serial: Callable[[], int] = field(default=lambda: secrets.randbits(64))
    nonce: Callable[[], bytes] = field(default=lambda: secrets.token_bytes(32))

    def issue(self, signer: str, request: SessionRequest, request_id: str) -> dict[str, Any]:
        if request.host != signer:
            raise WrongHostError(f"{signer} may not ask for {request.host}'s session")
        (window, shard), now = self._open_shard(request), self.clock()
        # The host is here: it no longer counts as idle. Refused if its archive closed since
        # it was read (an idle close or the deadline): no certificate for a closing archive.
        if request.purpose == "backup" and not self.store.record_start(
                window.window_id, shard.shard_id, request.host, now):
            raise NoOpenWindowError(self.next_window(now))
        account = self.policy.account(request.host)
        spec = CertificateSpec(
            public_key_line=request.ssh_public_key, principal=account,
            key_id=f"host={request.host} window={window.window_id} archive={shard.shard_id} "
                   f"req={request_id}",
            serial=self.serial(), nonce=self.nonce(), valid_after=now - self.policy.backdate,
            valid_before=window.deadline,
            force_command=self.policy.force_command(request.host, request.purpose),
            source_address=self.policy.source_address)
        certificate = sign_user_certificate(spec, self.ca.signing_key())
        self._audit(request.host, spec, window)
        address = str(shard.address)
        return {
            "window_id": window.window_id, "address": address,
            "port": self.policy.port, "user": account, "certificate": certificate,
            "known_hosts": self._known_hosts(address), "remote_path": REMOTE_PATH,
            "not_after": window.deadline.isoformat(), "deadline": window.deadline.isoformat(),
        }

    def current(self, host: str) -> dict[str, Any]:
        """The backup window as this host sees it: the state is its own archive's."""
        window_id = self.store.active_window_id()
        window = self.store.get_window(window_id) if window_id else None
        if window is None:
            upcoming = self.next_window(self.clock())
            return {"state": "NONE", "next_window": upcoming.isoformat() if upcoming else None}
        shard = window.shard_of(host)
        return {"window_id": window.window_id,
                "state": (shard.state if shard else window.state).value,
                "window_state": window.state.value, "deadline": window.deadline.isoformat(),
                "expected": host in window.expected, "reported": window.reports.get(host),
                "purpose": window.purpose}

    def _open_shard(self, request: SessionRequest) -> tuple[Window, Shard]:
        """The host's archive in its open backup window, or in its own open restore."""
        now = self.clock()
        restore = request.purpose == "restore"
        window_id = self.store.active_window_id(f"RESTORE#{request.host}" if restore
                                                else "BACKUP")
        window = self.store.get_window(window_id) if window_id else None
        if window is None:
            if restore:
                raise NoOpenWindowError(None, f"no restore is open for {request.host}")
            raise NoOpenWindowError(self.next_window(now))
        shard = window.shard_of(request.host)
        if shard is None:
            raise NotExpectedError(f"{request.host} is not expected in {window.window_id}")
        if shard.state in (State.OPENING, State.BOOTING):  # not ready yet: come back soon
            raise WindowOpeningError(self.policy.retry_after)
        if shard.state is not State.OPEN or window.deadline <= now or not shard.address:
            raise NoOpenWindowError(None if restore else self.next_window(now))
        return window, shard

    def _known_hosts(self, address: str) -> str:
        if self.policy.port != 22:
            address = f"[{address}]:{self.policy.port}"
        return f"{address} {self.ca.host_public_line()}"
    def _audit(self, host: str, spec: CertificateSpec, window: Window) -> None:
        logger.info("certificate issued", extra={
            "host": host, "account": spec.principal, "window_id": window.window_id,
            "serial": spec.serial, "key_id": spec.key_id, "valid_after": _iso(spec.valid_after),
            "valid_before": _iso(spec.valid_before),
            "key_fingerprint": public_key_fingerprint(spec.public_key_line)})
        self.metrics.record("CertificatesIssued", "Count", 1)


def _iso(value: datetime | int) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)
