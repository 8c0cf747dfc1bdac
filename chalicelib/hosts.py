"""Enrolling, revoking and listing hosts (the admin's use cases)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.accounts import AccountNameError, account_name
from chalicelib.adapters.compute import Compute
from chalicelib.adapters.store import WindowStore
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


@dataclass(frozen=True)
class Enrolment:
    name: str
    public_key: str
    volume_id: str | None
    size_gib: int


def parse_enrolment(name: str, body: Mapping[str, Any]) -> Enrolment:
    unknown = sorted(set(body) - {"public_key", "volume_id", "size_gib"})
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
    return Enrolment(name, " ".join(key.split()[:2]), volume_id, size)


class HostService:
    def __init__(self, store: WindowStore, compute: Compute, instance_id: str,
                 clock: Callable[[], datetime], account_prefix: str = "") -> None:
        self._store = store
        self._account_prefix = account_prefix
        self._compute = compute
        self._instance_id = instance_id
        self._clock = clock

    def enrol(self, enrolment: Enrolment) -> tuple[Host, bool]:
        """Enrol or re-enrol (new key, enabled again; the volume stays). True if new."""
        try:  # the instance could never make its account
            account_name(self._account_prefix, enrolment.name)
        except AccountNameError as exc:
            raise InvalidPayloadError(str(exc)) from exc
        existing = self._store.get_host(enrolment.name)
        if enrolment.volume_id is not None:
            self._check_volume_is_free(enrolment)
        if existing is not None:
            if enrolment.volume_id not in (None, existing.volume_id):
                raise InvalidPayloadError(  # silently keeping the old one would hide the mistake
                    f"host {existing.name} keeps its volume {existing.volume_id}; re-enrolment "
                    "changes only its key")
            host = replace(existing, public_key=enrolment.public_key, enabled=True)
        else:
            volume_id = enrolment.volume_id or self._compute.create_host_volume(
                enrolment.name, self._instance_id, enrolment.size_gib)
            host = Host(enrolment.name, enrolment.public_key, True, volume_id, self._clock())
        self._store.put_host(host)
        logger.info("host enrolled", extra={
            "host": host.name, "volume_id": host.volume_id, "new": existing is None,
            "key_fingerprint": public_key_fingerprint(host.public_key)})
        return host, existing is None

    def _check_volume_is_free(self, enrolment: Enrolment) -> None:
        """A volume is one host's: two hosts on one volume would stop every window's boot."""
        for host in self._store.list_hosts():
            if host.volume_id == enrolment.volume_id and host.name != enrolment.name:
                raise InvalidPayloadError(
                    f"volume {enrolment.volume_id} already belongs to host {host.name}")

    def revoke(self, name: str) -> Host:
        """Takes effect on the host's next request; its volume and snapshots stay."""
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
    return {"name": host.name, "enabled": host.enabled, "volume_id": host.volume_id,
            "enrolled_at": host.enrolled_at.isoformat(), "public_key": host.public_key,
            "key_fingerprint": public_key_fingerprint(host.public_key)}
