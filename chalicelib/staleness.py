"""The dead man's switch, as pure code: how old each host's newest complete recovery point
is, which hosts are stale, and what to tell the admins about it.

A host is *stale* when it is enabled and its newest complete recovery point (retention.py's
one definition) started more than `stale_after` ago; a host that never had one counts from its
enrolment. A revoked (disabled) host is never stale. The admins hear once when a host becomes
stale and once when it recovers: `changes` compares the hosts' state with the marks already
recorded (the store keeps them, each written by a conditional write, so two evaluations racing
tell once).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from chalicelib.records import Host
from chalicelib.retention import RecoveryPoint, newest_complete

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class HostAge:
    host: str
    newest: RecoveryPoint | None  # its newest complete recovery point, if any
    age: timedelta  # since that point started; since its enrolment when it has none
    stale: bool

    @property
    def age_hours(self) -> float:
        return self.age / HOUR


class Change(Enum):
    STALE = "stale"  # tell the admins, mark it
    RECOVERED = "recovered"  # tell the admins, clear the mark
    FORGOTTEN = "forgotten"  # revoked (or gone) while marked: clear the mark quietly


@dataclass(frozen=True)
class Verdict:
    host: str
    change: Change
    reason: str


def host_ages(hosts: Iterable[Host], points: Iterable[RecoveryPoint], now: datetime,
              stale_after: timedelta) -> list[HostAge]:
    """The enabled hosts' ages, by name."""
    by_host: dict[str, list[RecoveryPoint]] = {}
    for point in points:
        by_host.setdefault(point.host, []).append(point)
    ages = []
    for host in sorted((h for h in hosts if h.enabled), key=lambda h: h.name):
        newest = newest_complete(by_host.get(host.name, ()))
        since = newest.started if newest else host.enrolled_at
        age = max(timedelta(0), now - since)
        ages.append(HostAge(host.name, newest, age, age > stale_after))
    return ages


def changes(ages: Iterable[HostAge], marked: Mapping[str, datetime],
            stale_after: timedelta) -> list[Verdict]:
    """What to tell (and record) given the hosts marked stale already: a host is told once when
    it becomes stale and once when it recovers, never again in between."""
    limit = f"{stale_after / HOUR:g} h"
    verdicts, seen = [], set()
    for age in ages:
        seen.add(age.host)
        if age.stale and age.host not in marked:
            what = (f"its newest complete recovery point started {age.age_hours:.1f} h ago"
                    if age.newest else
                    f"it has had no complete recovery point since its enrolment "
                    f"{age.age_hours:.1f} h ago")
            verdicts.append(Verdict(age.host, Change.STALE, f"{what}, more than {limit}"))
        elif not age.stale and age.host in marked:
            verdicts.append(Verdict(age.host, Change.RECOVERED,
                                    f"its newest complete recovery point is "
                                    f"{age.age_hours:.1f} h old again, within {limit}"))
    for host in sorted(set(marked) - seen):
        verdicts.append(Verdict(host, Change.FORGOTTEN, "revoked: no longer watched"))
    return verdicts


def point_line(point: RecoveryPoint | None) -> str:
    if point is None:
        return "none"
    return (f"{point.snapshot_id} of {point.day} (window {point.window_id}, started "
            f"{point.started.isoformat()})")


def stale_message(verdict: Verdict, age: HostAge, last_report: str) -> tuple[str, str]:
    """The subject and text of the alert."""
    return (f"Offsite: host {verdict.host} is not being backed up",
            f"Host {verdict.host} is stale: {verdict.reason}.\n\n"
            f"Its last good recovery point: {point_line(age.newest)}.\n"
            f"The last it reported: {last_report}.\n\n"
            "You are told again when it has a complete recovery point.")


def recovered_message(verdict: Verdict, age: HostAge) -> tuple[str, str]:
    return (f"Offsite: host {verdict.host} is backed up again",
            f"Host {verdict.host} recovered: {verdict.reason}.\n\n"
            f"Its newest recovery point: {point_line(age.newest)}.")
