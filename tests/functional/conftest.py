"""The window service on in-memory fakes, with a clock the test moves."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from nacl.signing import SigningKey

from chalicelib.adapters.compute import FakeCompute
from chalicelib.adapters.metrics import FakeMetrics
from chalicelib.adapters.notifier import FakeNotifier
from chalicelib.adapters.scheduler import FakeScheduler
from chalicelib.adapters.store import InMemoryStore
from chalicelib.instance.userdata import BootRenderer
from chalicelib.records import Host
from chalicelib.settings import Settings
from chalicelib.sshcert import ca_public_key_line
from chalicelib.windows import Ports, WindowService

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
HOSTS = ("c", "h", "o", "l")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Rig:
    service: WindowService
    store: InMemoryStore
    compute: FakeCompute
    scheduler: FakeScheduler
    notifier: FakeNotifier
    metrics: FakeMetrics
    clock: Clock


def make_settings(**changes: object) -> Settings:
    base = dict(table_name="t", instance_id="i-1", topic_arn="arn:topic",
                deadline_target_arn="arn:fn", scheduler_role_arn="arn:role",
                instance_types=("t3.small", "t3a.small"))
    return Settings(**{**base, **changes})  # type: ignore[arg-type]



def throwaway_boot() -> BootRenderer:
    """The real user-data renderer, with a CA made for this test."""
    ca_line = ca_public_key_line(SigningKey.generate())
    return BootRenderer(lambda: ca_line, "/offsite/test/host-key", "us-east-1")

@pytest.fixture
def rig() -> Rig:
    store, compute, clock = InMemoryStore(), FakeCompute(), Clock()
    for i, name in enumerate(HOSTS):
        store.put_host(Host(name, f"ssh-ed25519 KEY{i}", True, f"vol-{i:017x}", T0))
    ports = Ports(store, compute, FakeScheduler(), FakeNotifier(), FakeMetrics(), throwaway_boot())
    service = WindowService(make_settings(), ports, clock=clock,
                            new_id=lambda now: f"w-{now:%Y%m%dT%H%M%SZ}-000000")
    return Rig(service, store, compute, ports.scheduler, ports.notifier,  # type: ignore[arg-type]
               ports.metrics, clock)  # type: ignore[arg-type]
