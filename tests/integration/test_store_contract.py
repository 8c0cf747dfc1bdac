"""One contract, two stores: the in-memory fake and DynamoDB (on moto) must agree."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from chalicelib.adapters.dynamo_store import DynamoStore, create_table
from chalicelib.adapters.store import InMemoryStore, WindowActiveError, WindowStore
from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.window import SnapshotStatus, State, Window

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)


@pytest.fixture(params=["in-memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> Iterator[WindowStore]:
    if request.param == "in-memory":
        yield InMemoryStore()
        return
    request.getfixturevalue("aws")
    client = boto3.client("dynamodb")
    create_table(client, "offsite-test")
    yield DynamoStore(client, "offsite-test")


def window(window_id: str = "w-20261129T020000Z-aaaaaa") -> Window:
    return Window(window_id=window_id, state=State.OPENING, opened_at=T0,
                  deadline=T0 + timedelta(hours=3.6), expected=frozenset({"c", "h"}),
                  instance_id="i-1", trigger="schedule", updated_at=T0, reason="opened",
                  entered={"OPENING": T0})


def report(host: str = "c", status: str = "succeeded", wid: str = window().window_id) -> Report:
    return Report(host, wid, status, 100, 3, 2.5, "", T0)


def test_window_round_trip(store: WindowStore) -> None:
    store.create_window(window())
    got = store.get_window(window().window_id)
    assert got == window()
    assert store.active_window_id() == window().window_id
    assert store.get_window("w-missing") is None


def test_only_one_active_window(store: WindowStore) -> None:
    store.create_window(window())
    with pytest.raises(WindowActiveError) as raised:
        store.create_window(window("w-20261129T030000Z-bbbbbb"))
    assert raised.value.window_id == window().window_id
    assert store.get_window("w-20261129T030000Z-bbbbbb") is None


def test_transition_is_conditional_on_the_state_it_leaves(store: WindowStore) -> None:
    store.create_window(window())
    wid = window().window_id
    later = T0 + timedelta(minutes=1)
    assert store.transition(wid, State.OPENING, State.OPEN, "running", later, "198.51.100.1")
    assert not store.transition(wid, State.OPENING, State.OPEN, "again", later)
    got = store.get_window(wid)
    assert got is not None
    assert (got.state, got.address, got.reason) == (State.OPEN, "198.51.100.1", "running")
    assert got.entered["OPEN"] == later


def test_terminal_transition_releases_the_guard(store: WindowStore) -> None:
    store.create_window(window())
    wid = window().window_id
    assert store.transition(wid, State.OPENING, State.FAILED, "no capacity", T0)
    assert store.active_window_id() is None
    store.create_window(window("w-20261129T030000Z-bbbbbb"))
    assert [w.window_id for w in store.list_windows(10)] == [
        "w-20261129T030000Z-bbbbbb", wid]


def test_concurrent_transitions_have_one_winner(store: WindowStore) -> None:
    store.create_window(window())
    wid = window().window_id
    wins: list[bool] = []

    def attempt() -> None:
        wins.append(store.transition(wid, State.OPENING, State.OPEN, "race", T0))

    if isinstance(store, InMemoryStore):
        threads = [threading.Thread(target=attempt) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        # DynamoDB evaluates a condition expression and writes in one atomic step; moto's
        # in-process table checks, then writes, with no lock between, so racing threads can
        # both pass (seen on a loaded machine). Against moto the attempts come one after the
        # other: each must see the state the first one wrote.
        for _ in range(8):
            attempt()
    assert wins.count(True) == 1


def test_reports_once_succeeded_are_final(store: WindowStore) -> None:
    store.create_window(window())
    assert store.put_report(report(status="failed"))
    assert store.put_report(report(status="succeeded"))
    assert not store.put_report(report(status="succeeded"))
    assert not store.put_report(report(status="failed"))
    got = store.get_window(window().window_id)
    assert got is not None and got.reports == {"c": "succeeded"}
    assert [r.bytes_sent for r in store.reports(window().window_id)] == [100]


def test_snapshot_lifecycle(store: WindowStore) -> None:
    store.create_window(window())
    wid = window().window_id
    record = SnapshotRecord(wid, "c", "vol-1", SnapshotStatus.CLAIMED, True, T0)
    assert store.claim_snapshot(record)
    assert not store.claim_snapshot(record)
    store.record_snapshot_id(wid, "c", "snap-1")
    settled = store.settle_snapshot("snap-1", SnapshotStatus.COMPLETED)
    assert settled == replace(record, status=SnapshotStatus.COMPLETED, snapshot_id="snap-1")
    assert store.settle_snapshot("snap-1", SnapshotStatus.COMPLETED) is None
    assert store.settle_snapshot("snap-unknown", SnapshotStatus.COMPLETED) is None
    got = store.get_window(wid)
    assert got is not None and got.snapshots == {"c": SnapshotStatus.COMPLETED}


def test_a_released_claim_can_be_taken_again(store: WindowStore) -> None:
    store.create_window(window())
    wid = window().window_id
    record = SnapshotRecord(wid, "h", "vol-2", SnapshotStatus.CLAIMED, False, T0)
    assert store.claim_snapshot(record)
    store.release_claim(wid, "h")
    assert store.snapshot_records(wid) == []
    assert store.claim_snapshot(record)


def test_hosts(store: WindowStore) -> None:
    host = Host("c", "ssh-ed25519 AAAA", True, "vol-1", T0)
    store.put_host(host)
    store.put_host(replace(host, name="h"))
    store.put_host(replace(host, enabled=False))
    assert store.get_host("c") == replace(host, enabled=False)
    assert [h.name for h in store.list_hosts()] == ["c", "h"]
    assert store.get_host("x") is None


def test_nonces_are_accepted_once_until_they_expire(store: WindowStore) -> None:
    assert store.remember_nonce("c", "n1", now=1000, expires_at=1600)
    assert not store.remember_nonce("c", "n1", now=1001, expires_at=1601)
    assert store.remember_nonce("h", "n1", now=1001, expires_at=1601)  # another host's
    assert store.remember_nonce("c", "n1", now=1600, expires_at=2200)  # expired, TTL lags
