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
from chalicelib.launcher import InlineLauncher
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
    base = dict(table_name="t", topic_arn="arn:topic",
                deadline_target_arn="arn:fn", scheduler_role_arn="arn:role",
                instance_types=("t3.small", "t3a.small"), subnet_ids=("subnet-a", "subnet-b"))
    return Settings(**{**base, **changes})  # type: ignore[arg-type]



def throwaway_boot() -> BootRenderer:
    """The real user-data renderer, with a CA made for this test."""
    ca_line = ca_public_key_line(SigningKey.generate())
    return BootRenderer(lambda: ca_line, "/offsite/test/host-key", "us-east-1",
                        api_url="https://api.offsite.test")


class FakeBoot:
    """The boot port: records what each archive was asked to mount."""

    def __init__(self) -> None:
        self.rendered: list[tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = []

    def user_data(self, hosts: object, restores: object = ()) -> str:
        self.rendered.append((tuple(hosts), tuple(restores)))  # type: ignore[call-overload]
        return f"#cloud-config\n# hosts {list(hosts)} restores {list(restores)}\n"  # type: ignore[call-overload]


def make_service(store: InMemoryStore, compute: FakeCompute, clock: Clock,
                 **settings: object) -> WindowService:
    """The window service on fakes, launching each shard inline (as its Lambda would)."""
    holder: list[WindowService] = []
    launcher = InlineLauncher(lambda w, s: holder[0].launch_shard(w, s))
    ports = Ports(store, store, compute, FakeScheduler(), FakeNotifier(), FakeMetrics(),
                  FakeBoot(), launcher)
    holder.append(WindowService(make_settings(**settings), ports, clock=clock,
                                new_id=lambda now: f"w-{now:%Y%m%dT%H%M%SZ}-000000"))
    return holder[0]


def enrol_all(store: InMemoryStore, names: tuple[str, ...] | list[str]) -> None:
    for i, name in enumerate(names):
        store.put_host(Host(name, f"ssh-ed25519 KEY{i}", True, T0))


@pytest.fixture
def rig() -> Rig:
    store, compute, clock = InMemoryStore(), FakeCompute(), Clock()
    enrol_all(store, HOSTS)
    service = make_service(store, compute, clock)
    ports = service.ports
    return Rig(service, store, compute, ports.scheduler, ports.notifier,  # type: ignore[arg-type]
               ports.metrics, clock)  # type: ignore[arg-type]


@pytest.fixture
def two_shards(rig: Rig) -> Rig:
    """Four hosts in archives of two: s01 = c, h; s02 = l, o."""
    rig.service = make_service(rig.store, rig.compute, rig.clock, hosts_per_archive=2)
    rig.scheduler = rig.service.ports.scheduler  # type: ignore[assignment]
    rig.notifier = rig.service.ports.notifier  # type: ignore[assignment]
    rig.metrics = rig.service.ports.metrics  # type: ignore[assignment]
    return rig
