"""Which entries a run's verification reads: what it sent, what an earlier run sent and never
verified, and the slices due, such that every file is re-read once per cycle even when nights
are skipped (fake clock; properties with hypothesis)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st
from offsite_host.verify_plan import (
    DAY_S,
    Plan,
    Stat,
    after_check,
    due_slices,
    make_plan,
    slice_of,
)

NOW = 20_000 * DAY_S + 3 * 3600  # 03:00 UTC on day 20,000; today's slot is 20,000 % N
CYCLE = 20


def view_of(count: int, size: int = 1000) -> dict[str, Stat]:
    return {f"d{i % 7}/f{i:04d}": (size, 10 * i, 10 * i, 100 + i) for i in range(count)}


def cache_of(view: dict[str, Stat]) -> dict[str, tuple[int, int, int, int, str]]:
    return {path: (*stat, f"sha-{path}") for path, stat in view.items()}


def steady(now: float = NOW) -> list[float | None]:
    """Every slice checked within the cycle, today's slot not yet today."""
    return [now - ((20_000 - i) % CYCLE or CYCLE) * DAY_S for i in range(CYCLE)]


def test_slices_are_stable_and_spread() -> None:
    paths = [f"dir/file-{i}" for i in range(4000)]
    assert [slice_of(p, CYCLE) for p in paths] == [slice_of(p, CYCLE) for p in paths]
    counts = Counter(slice_of(p, CYCLE) for p in paths)
    assert set(counts) == set(range(CYCLE))
    assert max(counts.values()) < 2 * min(counts.values())
    assert slice_of("x", 1) == 0
    assert slice_of("caf\udce9", CYCLE) in range(CYCLE)  # a name that is not UTF-8


def test_a_first_run_or_a_changed_cycle_checks_every_slice() -> None:
    assert due_slices(None, NOW, CYCLE) == tuple(range(CYCLE))
    assert due_slices([NOW] * 7, NOW, CYCLE) == tuple(range(CYCLE))


def test_in_steady_state_only_todays_slot_is_due() -> None:
    assert due_slices(steady(), NOW, CYCLE) == (20_000 % CYCLE,)


def test_a_slot_already_checked_today_is_not_read_again() -> None:
    checked = after_check(steady(), (20_000 % CYCLE,), NOW, CYCLE)
    assert due_slices(checked, NOW + 3600, CYCLE) == ()


def test_skipped_nights_leave_their_slices_overdue_for_the_next_run() -> None:
    checked = steady()
    later = NOW + 3 * DAY_S  # no run for three nights: their slots are now a cycle old
    assert due_slices(checked, later, CYCLE) == tuple(
        sorted(d % CYCLE for d in range(20_000, 20_004)))


def test_a_clock_set_back_makes_the_slice_due() -> None:
    checked = steady()
    checked[5] = NOW + DAY_S
    assert 5 in due_slices(checked, NOW, CYCLE)


def test_no_cache_or_no_slice_state_checks_everything() -> None:
    view = view_of(50)
    for verified, checked in ((None, steady()), ({}, steady()), (cache_of(view), None)):
        plan = make_plan(view, ["a"], verified, checked, NOW, CYCLE)
        assert plan.everything and plan.slices == tuple(range(CYCLE))
    assert make_plan(view, [], cache_of(view), steady(), NOW, CYCLE, full=True).everything
    assert make_plan(view, [], cache_of(view), [NOW - DAY_S], NOW, 1).everything


def test_the_check_lists_what_was_sent_then_what_changed_unverified_then_the_slice() -> None:
    view = view_of(400)
    cache = cache_of(view)
    cache["d0/f0000"] = (999, 0, 0, 1, "old")  # changed since the last verified run
    cache["d1/removed"] = (5, 5, 5, 5, "gone")  # deleted since: its deletion was not checked
    del cache["d2/f0002"]  # new since
    sent = ["d3/f0003", "*new-dir/"]

    plan = make_plan(view, sent, cache, steady(), NOW, CYCLE)

    assert not plan.everything
    assert plan.sent == ("d3/f0003", "*new-dir/")
    assert plan.unverified == ("d0/f0000", "d1/removed", "d2/f0002")
    slot = 20_000 % CYCLE
    expected = sorted(p for p in view if slice_of(p, CYCLE) == slot
                      and p not in {*sent, *plan.unverified})
    assert list(plan.sliced) == expected and plan.slices == (slot,)
    assert plan.slice_bytes == 1000 * len(expected)
    assert plan.paths() == [*sent, *plan.unverified, *expected]
    assert len(plan.paths()) == len(set(plan.paths()))


def test_a_cut_off_runs_sent_files_are_checked_by_the_next_run_that_does_not_resend_them(
) -> None:
    """Run 1 sent a new version of f0007 and was cut off before verifying (so it did not seal:
    the cache is run 0's). Run 2's push finds f0007 already on the archive and sends nothing;
    its check still reads f0007."""
    before = view_of(100)
    after = dict(before)
    after["d0/f0007"] = (2000, 99_999, 99_999, 5000)

    plan = make_plan(after, [], cache_of(before), steady(), NOW, CYCLE)

    assert "d0/f0007" in plan.unverified and "d0/f0007" in plan.paths()
    once_sealed = make_plan(after, [], cache_of(after), steady(), NOW, CYCLE)
    assert once_sealed.unverified == ()


def test_the_description_says_what_was_read() -> None:
    view = view_of(6679, 180_000)
    cache = cache_of(view)
    cache["d0/f0000"] = (1, 1, 1, 1, "x")
    plan = make_plan(view, [f"d1/f{i:04d}" for i in range(12)], cache, steady(), NOW, CYCLE)
    text = plan.describe()
    assert text.startswith(f"verified 12 sent entries + 1 unverified since an earlier run + slice "
                           f"{20_000 % CYCLE + 1}/20 ({len(plan.sliced):,} files, ")
    assert text.endswith(" MB) of 6,679 files; every file re-read within 20 days")
    everything = make_plan(view, [], None, None, NOW, CYCLE)
    assert everything.describe() == "verified all 6,679 files (1.2 GB)"


def test_after_a_check_the_slices_carry_its_time() -> None:
    assert after_check(None, (0, 2), NOW, 3) == [NOW, None, NOW]
    assert after_check([1.0, 2.0], (1,), NOW, 2) == [1.0, NOW]
    assert after_check([1.0], (1,), NOW, 2) == [None, NOW]  # another cycle: start again


def run_nights(cycle: int, nights: list[tuple[bool, int]]) -> list[tuple[float, Plan]]:
    """Runs on the nights marked True, each at its own minute of the day; returns when each
    run checked what (the plan), keeping the slice times between runs as a host would."""
    view = view_of(60)
    checked: list[float | None] | None = None
    runs = []
    for night, (ran, minute) in enumerate(nights):
        if not ran:
            continue
        now = NOW - 3 * 3600 + night * DAY_S + minute * 60
        plan = make_plan(view, [], cache_of(view), checked, now, cycle)
        checked = after_check(checked, plan.slices, now, cycle)
        runs.append((now, plan))
    return runs


NIGHTS = st.lists(st.tuples(st.booleans(), st.integers(0, 24 * 60 - 1)), min_size=1,
                  max_size=90)


@settings(max_examples=200, deadline=None)
@given(cycle=st.integers(1, 30), nights=NIGHTS)
def test_after_every_run_no_slice_is_a_cycle_old(cycle: int,
                                                 nights: list[tuple[bool, int]]) -> None:
    """Whatever nights were skipped, a run leaves no slice unchecked for a whole cycle: what
    skipped nights left is caught up by the next run."""
    last: dict[int, float] = {}
    for now, plan in run_nights(cycle, nights):
        last.update({i: now for i in plan.slices})
        assert sorted(last) == list(range(cycle))
        assert all(now - at < cycle * DAY_S for at in last.values())


@settings(max_examples=100, deadline=None)
@given(cycle=st.integers(2, 30), minutes=st.lists(st.integers(0, 24 * 60 - 1), min_size=2,
                                                  max_size=90))
def test_with_a_run_every_night_each_reads_one_slice_and_each_slice_is_read_per_cycle(
        cycle: int, minutes: list[int]) -> None:
    runs = run_nights(cycle, [(True, m) for m in minutes])
    assert runs[0][1].everything  # the first run knows nothing yet
    assert all(len(plan.slices) == 1 and not plan.everything for _, plan in runs[1:])
    last: dict[int, float] = {i: runs[0][0] for i in range(cycle)}
    for now, plan in runs[1:]:
        (index,) = plan.slices
        assert now - last[index] < (cycle + 1) * DAY_S
        last[index] = now
