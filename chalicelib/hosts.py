"""Enrolling, revoking and listing hosts (the admin's use cases)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.accounts import AccountNameError, account_name
from chalicelib.adapters.compute import (
    TAG_COMPLETE,
    TAG_HOST,
    TAG_REPORTED,
    TAG_WINDOW,
    Compute,
    VolumeNotFoundError,
)
from chalicelib.adapters.store import HostStore
from chalicelib.names import (
    InvalidHostNameError,
    InvalidVolumeIdError,
    check_host_name,
    check_volume_id,
)
from chalicelib.payloads import InvalidPayloadError
from chalicelib.records import Host
from chalicelib.sshcert import SshCertError, parse_ed25519_public_key, public_key_fingerprint

logger = Logger(service="offsite", child=True)


class UnknownHostNameError(LookupError):
    pass


# A host's own start grace: at most a day (a window lasts 3.6 h by default).
MAX_START_GRACE_MINUTES = 1440


@dataclass(frozen=True)
class Enrolment:
    name: str
    public_key: str
    volume_id: str | None
    size_gib: int
    start_grace_minutes: int | None = None  # None: the stage's START_GRACE_MINUTES


def parse_enrolment(name: str, body: Mapping[str, Any]) -> Enrolment:
    unknown = sorted(set(body) - {"public_key", "volume_id", "size_gib", "start_grace_minutes"})
    if unknown:
        raise InvalidPayloadError(f"unknown field(s): {', '.join(unknown)}")
    try:
        name = check_host_name(name)
        key = body.get("public_key")
        if not isinstance(key, str):
            raise InvalidPayloadError("public_key must be an 'ssh-ed25519 AAAA...' line")
        parse_ed25519_public_key(key)
        volume_id = body.get("volume_id")
        if volume_id is not None:
            volume_id = check_volume_id(volume_id)  # boot.sh's own rule: it would refuse it
    except (InvalidHostNameError, InvalidVolumeIdError, SshCertError) as exc:
        raise InvalidPayloadError(str(exc)) from exc
    size = body.get("size_gib", 20)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 16384:
        raise InvalidPayloadError("size_gib must be an integer from 1 to 16384")
    grace = body.get("start_grace_minutes")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int)
                              or not 1 <= grace <= MAX_START_GRACE_MINUTES):
        raise InvalidPayloadError("start_grace_minutes must be an integer from 1 to "
                                  f"{MAX_START_GRACE_MINUTES}")
    return Enrolment(name, " ".join(key.split()[:2]), volume_id, size, grace)


class HostService:
    def __init__(self, store: HostStore, compute: Compute, clock: Callable[[], datetime],
                 account_prefix: str = "") -> None:
        self._store = store
        self._account_prefix = account_prefix
        self._compute = compute
        self._clock = clock

    def enrol(self, enrolment: Enrolment) -> tuple[Host, bool]:
        """Enrol or re-enrol (new key, enabled again). True if new. Nothing is made in EC2:
        the host's volume is made at each window's launch, from its newest snapshot. An
        existing volume named at the first enrolment (data moved from elsewhere) is
        snapshotted once, and that snapshot is the host's first recovery point."""
        try:  # the instance could never make its account
            account_name(self._account_prefix, enrolment.name)
        except AccountNameError as exc:
            raise InvalidPayloadError(str(exc)) from exc
        existing = self._store.get_host(enrolment.name)
        if existing is not None:
            if enrolment.volume_id is not None:
                raise InvalidPayloadError(  # silently ignoring it would hide the mistake
                    f"host {existing.name} is enrolled already; a volume is adopted only at "
                    "the first enrolment")
            grace = enrolment.start_grace_minutes
            host = replace(existing, public_key=enrolment.public_key, enabled=True,
                           start_grace_minutes=existing.start_grace_minutes if grace is None
                           else grace)
        else:
            host = Host(enrolment.name, enrolment.public_key, True, self._clock(),
                        enrolment.size_gib, enrolment.start_grace_minutes)
        adopted = self._adopt(host, enrolment.volume_id) if enrolment.volume_id else None
        self._store.put_host(host)
        logger.info("host enrolled", extra={
            "host": host.name, "new": existing is None, "adopted_snapshot": adopted,
            "key_fingerprint": public_key_fingerprint(host.public_key)})
        return host, existing is None

    def _adopt(self, host: Host, volume_id: str) -> str:
        """One snapshot of an existing volume, tagged as the host's recovery point of an
        enrolment "window" (its day is the enrolment's)."""
        window_id = f"w-{self._clock():%Y%m%dT%H%M%SZ}-enrol"
        try:
            return self._compute.snapshot_volume(volume_id, {
                TAG_WINDOW: window_id, TAG_HOST: host.name, TAG_REPORTED: "succeeded",
                TAG_COMPLETE: "pending"})
        except VolumeNotFoundError as exc:  # the admin's mistake, not a 500
            raise InvalidPayloadError(f"volume_id: {exc}") from exc

    def revoke(self, name: str) -> Host:
        """Takes effect on the host's next request; its snapshots stay."""
        host = self._store.get_host(name)
        if host is None:
            raise UnknownHostNameError(f"no host {name}")
        revoked = replace(host, enabled=False)
        self._store.put_host(revoked)
        logger.info("host revoked", extra={"host": name})
        return revoked

    def list(self) -> list[Host]:
        return self._store.list_hosts()


def host_view(host: Host) -> dict[str, Any]:
    return {"name": host.name, "enabled": host.enabled, "size_gib": host.size_gib,
            "start_grace_minutes": host.start_grace_minutes,
            "enrolled_at": host.enrolled_at.isoformat(), "public_key": host.public_key,
            "key_fingerprint": public_key_fingerprint(host.public_key)}
