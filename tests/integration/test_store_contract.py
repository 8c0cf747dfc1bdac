"""One contract per aggregate, two implementations: the in-memory stores and DynamoDB (on
moto) must agree on windows with their shards, hosts and nonces."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import boto3
import pytest

from chalicelib.adapters.dynamo_store import DynamoStore, create_table
from chalicelib.adapters.store import InMemoryStore, WindowActiveError
from chalicelib.records import Host, Report, SnapshotRecord
from chalicelib.window import RESTORE, Shard, SnapshotStatus, State, Window

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
WID = "w-20261129T020000Z-aaaaaa"
LATER = T0 + timedelta(minutes=1)
Store = InMemoryStore | DynamoStore


@pytest.fixture(params=["in-memory", "dynamo"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "in-memory":
        yield InMemoryStore()
        return
    request.getfixturevalue("aws")
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_table(client, "offsite-test")
    yield DynamoStore(client, "offsite-test")


def shard(shard_id: str, *hosts: str) -> Shard:
    return Shard(shard_id, frozenset(hosts), State.OPENING, T0, entered={"OPENING": T0})


def window(window_id: str = WID, shards: dict[str, Shard] | None = None) -> Window:
    shards = shards if shards is not None else {"s01": shard("s01", "c", "h"),
                                                "s02": shard("s02", "l", "o")}
    return Window(window_id=window_id, state=State.OPENING, opened_at=T0,
                  deadline=T0 + timedelta(hours=3.6),
                  expected=frozenset(h for s in shards.values() for h in s.hosts),
                  trigger="schedule", updated_at=T0, reason="opened", shards=shards,
                  entered={"OPENING": T0})


def restore(host: str, window_id: str) -> Window:
    return replace(window(window_id, {"s01": shard("s01", host)}), purpose=RESTORE,
                   snapshot_id="snap-1", trigger="restore:api")


def many_shards(count: int, window_id: str = WID) -> Window:
    return window(window_id, {f"s{i:03d}": shard(f"s{i:03d}", f"h{i:03d}")
                              for i in range(1, count + 1)})


def report(host: str = "c", status: str = "succeeded", wid: str = WID) -> Report:
    return Report(host, wid, status, 100, 3, 2.5, "", T0)


def got(store: Store, window_id: str = WID) -> Window:
    found = store.get_window(window_id)
    assert found is not None
    return found


# windows and their guards -------------------------------------------------------------------
def test_window_round_trip_with_its_shards(store: Store) -> None:
    store.create_window(window())
    assert got(store) == window()
    assert store.active_window_id() == WID
    assert store.active_window_ids() == [WID]
    assert store.get_window("w-missing") is None


def test_a_restore_round_trips_with_its_snapshot(store: Store) -> None:
    store.create_window(restore("c", "w-restore-1"))
    assert got(store, "w-restore-1") == restore("c", "w-restore-1")
    assert got(store, "w-restore-1").is_restore


def test_a_second_backup_window_is_refused(store: Store) -> None:
    store.create_window(window())
    with pytest.raises(WindowActiveError) as raised:
        store.create_window(window("w-20261129T030000Z-bbbbbb"))
    assert raised.value.window_id == WID
    assert store.get_window("w-20261129T030000Z-bbbbbb") is None
    assert store.active_window_ids() == [WID]


def test_a_backup_and_a_restore_per_host_may_be_active_together(store: Store) -> None:
    store.create_window(window())
    store.create_window(restore("c", "w-restore-c"))
    store.create_window(restore("h", "w-restore-h"))
    with pytest.raises(WindowActiveError) as raised:  # one restore per host at a time
        store.create_window(restore("c", "w-restore-c2"))
    assert raised.value.window_id == "w-restore-c"
    assert store.get_window("w-restore-c2") is None
    assert sorted(store.active_window_ids()) == sorted([WID, "w-restore-c", "w-restore-h"])
    assert store.active_window_id() == WID
    assert store.active_window_id("RESTORE#c") == "w-restore-c"


def test_transition_is_conditional_on_the_state_it_leaves(store: Store) -> None:
    store.create_window(window())
    assert store.transition(WID, State.OPENING, State.OPEN, "running", LATER)
    assert not store.transition(WID, State.OPENING, State.OPEN, "again", LATER)
    assert not store.transition("w-missing", State.OPENING, State.OPEN, "none", LATER)
    window_now = got(store)
    assert (window_now.state, window_now.reason) == (State.OPEN, "running")
    assert window_now.entered == {"OPENING": T0, "OPEN": LATER}
    assert store.active_window_id() == WID  # an active state keeps the guard


def test_a_terminal_transition_releases_only_its_own_guard(store: Store) -> None:
    store.create_window(window())
    store.create_window(restore("c", "w-restore-c"))
    assert store.transition("w-restore-c", State.OPENING, State.CLOSED, "restored", LATER)
    assert store.active_window_ids() == [WID]
    assert store.active_window_id("RESTORE#c") is None
    store.create_window(restore("c", "w-restore-c2"))  # the host may restore again
    assert store.transition(WID, State.OPENING, State.FAILED, "no capacity", LATER)
    assert store.active_window_ids() == ["w-restore-c2"]
    store.create_window(window("w-20261129T030000Z-bbbbbb"))
    assert [w.window_id for w in store.list_windows(10)] == [
        "w-restore-c2", "w-restore-c", "w-20261129T030000Z-bbbbbb", WID]
    assert [w.window_id for w in store.list_windows(1)] == ["w-restore-c2"]


def race(store: Store, attempt: Callable[[], bool]) -> list[bool]:
    wins: list[bool] = []
    if isinstance(store, InMemoryStore):
        threads = [threading.Thread(target=lambda: wins.append(attempt())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        # DynamoDB evaluates a condition expression and writes in one atomic step; moto's
        # in-process table checks, then writes, with no lock between, so racing threads can
        # both pass. Against moto the attempts come one after the other: each must see the
        # state the first one wrote.
        wins.extend(attempt() for _ in range(8))
    return wins


def test_concurrent_transitions_have_one_winner(store: Store) -> None:
    store.create_window(window())
    assert race(store, lambda: store.transition(
        WID, State.OPENING, State.OPEN, "race", T0)).count(True) == 1
    assert race(store, lambda: store.transition_shard(
        WID, "s01", State.OPENING, State.OPEN, "race", T0)).count(True) == 1


# shards -------------------------------------------------------------------------------------
def test_transition_shard_moves_one_shard_conditionally(store: Store) -> None:
    store.create_window(window())
    volumes = {"c": "vol-c", "h": "vol-h"}
    assert store.transition_shard(WID, "s01", State.OPENING, State.OPEN, "running", LATER,
                                  "198.51.100.1", volumes)
    assert not store.transition_shard(WID, "s01", State.OPENING, State.OPEN, "again", LATER,
                                      "198.51.100.9", {"c": "vol-x"})
    assert not store.transition_shard(WID, "s09", State.OPENING, State.OPEN, "none", LATER)
    s01, s02 = got(store).shards["s01"], got(store).shards["s02"]
    assert (s01.state, s01.reason, s01.address, dict(s01.volumes)) == (
        State.OPEN, "running", "198.51.100.1", volumes)
    assert (s01.updated_at, s01.entered) == (LATER, {"OPENING": T0, "OPEN": LATER})
    assert s02 == window().shards["s02"]  # the other shard is untouched
    assert got(store).state is State.OPENING  # the window moves by its own transition
    # later transitions keep the address and volumes they are not given
    later = LATER + timedelta(minutes=5)
    assert store.transition_shard(WID, "s01", State.OPEN, State.CLOSING, "reported", later)
    s01 = got(store).shards["s01"]
    assert (s01.state, s01.address, dict(s01.volumes)) == (State.CLOSING, "198.51.100.1",
                                                           volumes)
    assert s01.entered == {"OPENING": T0, "OPEN": LATER, "CLOSING": later}
    assert store.active_window_id() == WID  # a shard's end never releases the guard


def test_record_launch_names_one_instance_per_opening_shard(store: Store) -> None:
    store.create_window(window())
    assert store.record_launch(WID, "s01", "i-1", "t4g.small")
    assert store.record_launch(WID, "s01", "i-1", "t4g.small")  # the same id again: fine
    assert not store.record_launch(WID, "s01", "i-2", "t3.small")  # another one: refused
    assert store.find_instance("i-1") == (WID, "s01")
    assert store.find_instance("i-2") is None
    assert store.find_instance("i-someone-elses") is None
    s01 = got(store).shards["s01"]
    assert (s01.instance_id, s01.instance_type, s01.state) == ("i-1", "t4g.small",
                                                               State.OPENING)
    # a shard no longer opening takes no instance
    assert store.transition_shard(WID, "s02", State.OPENING, State.FAILED, "closed", LATER)
    assert not store.record_launch(WID, "s02", "i-3", "t4g.small")
    assert got(store).shards["s02"].instance_id is None
    assert store.find_instance("i-3") is None
    assert not store.record_launch(WID, "s09", "i-4", "t4g.small")
    assert not store.record_launch("w-missing", "s01", "i-5", "t4g.small")
    assert store.find_instance("i-4") is None and store.find_instance("i-5") is None


def test_find_instance_after_the_shard_moved_on(store: Store) -> None:
    store.create_window(window())
    store.record_launch(WID, "s02", "i-2", "t3a.small")
    store.transition_shard(WID, "s02", State.OPENING, State.OPEN, "running", LATER)
    store.transition_shard(WID, "s02", State.OPEN, State.CLOSING, "reported", LATER)
    assert store.find_instance("i-2") == (WID, "s02")  # its late events still find it
    assert got(store).shards["s02"].instance_id == "i-2"


@pytest.mark.parametrize("count", [97, 98, 130])
def test_a_window_of_many_shards(store: Store, count: int) -> None:
    """TransactWriteItems takes at most 100 actions: past 97 shards (beside the guard, META
    and the index) the DynamoDB store writes the shards outside the transaction."""
    big = many_shards(count)
    store.create_window(big)
    assert got(store) == big
    last = f"s{count:03d}"
    assert store.transition_shard(WID, last, State.OPENING, State.OPEN, "running", LATER)
    assert store.record_launch(WID, "s001", "i-1", "t4g.small")
    assert store.find_instance("i-1") == (WID, "s001")
    assert got(store).shards[last].state is State.OPEN
    # refused by the guard: nothing of the refused window is left behind
    with pytest.raises(WindowActiveError):
        store.create_window(many_shards(count, "w-20261129T030000Z-bbbbbb"))
    assert store.get_window("w-20261129T030000Z-bbbbbb") is None
    assert [w.window_id for w in store.list_windows(10)] == [WID]
    assert got(store) == replace(big, shards={
        **big.shards, last: got(store).shards[last],
        "s001": replace(big.shards["s001"], instance_id="i-1", instance_type="t4g.small")})


def test_a_refused_big_window_leaves_no_shard_items(aws: None) -> None:
    client = boto3.client("dynamodb", region_name="us-east-1")
    create_table(client, "offsite-test")
    store = DynamoStore(client, "offsite-test")
    store.create_window(window())
    refused = "w-20261129T030000Z-bbbbbb"
    with pytest.raises(WindowActiveError):
        store.create_window(many_shards(120, refused))
    items = client.query(TableName="offsite-test", KeyConditionExpression="pk = :pk",
                         ExpressionAttributeValues={":pk": {"S": f"WINDOW#{refused}"}})
    assert items["Items"] == []


# reports and snapshot records ---------------------------------------------------------------
def test_reports_once_succeeded_are_final(store: Store) -> None:
    store.create_window(window())
    assert store.put_report(report(status="failed"))
    assert store.put_report(report(status="succeeded"))
    assert not store.put_report(report(status="succeeded"))
    assert not store.put_report(report(status="failed"))
    assert store.put_report(report("o", "failed"))
    assert got(store).reports == {"c": "succeeded", "o": "failed"}
    assert [(r.host, r.bytes_sent) for r in store.reports(WID)] == [("c", 100), ("o", 100)]


def test_snapshot_lifecycle(store: Store) -> None:
    store.create_window(window())
    record = SnapshotRecord(WID, "c", "vol-1", SnapshotStatus.CLAIMED, True, T0)
    assert store.claim_snapshot(record)
    assert not store.claim_snapshot(record)
    assert got(store).snapshots == {"c": SnapshotStatus.CLAIMED}
    store.record_snapshot_id(WID, "c", "snap-1")
    assert got(store).snapshots == {"c": SnapshotStatus.PENDING}
    settled = store.settle_snapshot("snap-1", SnapshotStatus.COMPLETED)
    assert settled == replace(record, status=SnapshotStatus.COMPLETED, snapshot_id="snap-1")
    assert store.settle_snapshot("snap-1", SnapshotStatus.FAILED) is None  # settled once
    assert store.settle_snapshot("snap-unknown", SnapshotStatus.COMPLETED) is None
    assert got(store).snapshots == {"c": SnapshotStatus.COMPLETED}
    assert store.snapshot_records(WID) == [settled]
    store.release_claim(WID, "c")  # a settled record is not a claim: kept
    assert store.snapshot_records(WID) == [settled]


def test_a_released_claim_can_be_taken_again(store: Store) -> None:
    store.create_window(window())
    record = SnapshotRecord(WID, "h", "vol-2", SnapshotStatus.CLAIMED, False, T0)
    assert store.claim_snapshot(record)
    store.release_claim(WID, "h")
    assert store.snapshot_records(WID) == []
    assert store.claim_snapshot(record)


# hosts and nonces ---------------------------------------------------------------------------
def test_hosts(store: Store) -> None:
    host = Host("c", "ssh-ed25519 AAAA", True, T0, size_gib=8)
    store.put_host(host)
    store.put_host(replace(host, name="h"))
    store.put_host(replace(host, enabled=False))
    assert store.get_host("c") == replace(host, enabled=False)
    assert [h.name for h in store.list_hosts()] == ["c", "h"]
    assert store.get_host("x") is None


def test_nonces_are_accepted_once_until_they_expire(store: Store) -> None:
    assert store.remember_nonce("c", "n1", now=1000, expires_at=1600)
    assert not store.remember_nonce("c", "n1", now=1001, expires_at=1601)
    assert store.remember_nonce("h", "n1", now=1001, expires_at=1601)  # another host's
    assert store.remember_nonce("c", "n1", now=1600, expires_at=2200)  # expired, TTL lags


# stale marks (the dead man's switch) -------------------------------------------------------
def test_a_host_is_marked_stale_once_and_cleared_once(store: Store) -> None:
    assert store.stale_marks() == {}
    assert store.mark_stale("h", T0) is True
    assert store.mark_stale("h", LATER) is False  # another evaluation told the admins
    assert store.stale_marks() == {"h": T0}
    store.put_host(Host("h", "ssh-ed25519 KEY", True, T0))  # a host item beside: not a mark
    assert store.clear_stale("h") is True
    assert store.clear_stale("h") is False
    assert store.stale_marks() == {}


def test_an_evaluation_is_claimed_only_when_the_last_is_due(store: Store) -> None:
    assert store.claim_evaluation(T0, T0 - timedelta(hours=6)) is True  # none yet
    assert store.claim_evaluation(LATER, LATER - timedelta(hours=6)) is False
    later = T0 + timedelta(hours=6)
    assert store.claim_evaluation(later, later - timedelta(hours=6)) is True
    assert store.claim_evaluation(later, later) is True  # a conclusion records its own


def test_a_start_is_recorded_once_and_read_with_the_window(store: Store) -> None:
    """A host's first session in a window (idle close: it no longer counts as idle); its own
    start grace rides with the window it was opened with."""
    store.create_window(replace(window(), start_grace={"o": 90}))
    assert not store.record_start(WID, "s01", "c", T0)  # its archive is not OPEN yet
    for shard_id in ("s01", "s02"):
        store.transition_shard(WID, shard_id, State.OPENING, State.OPEN, "ready", T0)
    assert got(store).started == frozenset()
    assert store.record_start(WID, "s01", "c", T0)
    assert store.record_start(WID, "s01", "c", LATER)  # a second session: still one start
    assert store.record_start(WID, "s02", "o", T0)
    read = got(store)
    assert read.started == frozenset({"c", "o"}) and read.start_grace == {"o": 90}


def test_an_idle_close_and_a_session_exclude_each_other(store: Store) -> None:
    """The reconciler closes s01 for idle h while h's session is being issued: whichever
    writes first wins, and the other is refused (no certificate for a closing archive, no
    close under a host that came)."""
    store.create_window(window())
    store.transition_shard(WID, "s01", State.OPENING, State.OPEN, "ready", T0)
    store.transition_shard(WID, "s02", State.OPENING, State.OPEN, "ready", T0)
    assert store.record_start(WID, "s01", "h", LATER)  # the session first
    assert not store.transition_shard(WID, "s01", State.OPEN, State.CLOSING, "idle", LATER,
                                      unless_started={"c", "h"})
    assert got(store).shards["s01"].state is State.OPEN
    assert store.transition_shard(WID, "s01", State.OPEN, State.CLOSING, "idle", LATER,
                                  unless_started={"c"})  # c never came
    # the close first: the session of l, read while s02 was OPEN, is refused
    assert store.transition_shard(WID, "s02", State.OPEN, State.CLOSING, "idle", LATER,
                                  unless_started={"l"})
    assert not store.record_start(WID, "s02", "l", LATER)
    assert got(store).started == frozenset({"h"})


def test_a_hosts_own_start_grace_round_trips(store: Store) -> None:
    store.put_host(Host("c", "ssh-ed25519 AAAA", True, T0, 20, 90))
    store.put_host(Host("o", "ssh-ed25519 AAAA", True, T0))
    assert {h.name: h.start_grace_minutes for h in store.list_hosts()} == {"c": 90, "o": None}
