"""Which entries a run's verification reads (pure; `verify_state` gathers the inputs).

Re-reading the whole archive every night costs what is stored, not what changed, so a run
checks, with `--checksum`:

- **what this run's push sent or deleted** (its `--itemize-changes` lines);
- **what changed in the view since the last verified run**: every regular file whose
  (size, mtime, ctime, inode) differs from the digest cache the last seal left
  (`manifest-digests.json`, written only after a verification passed), and every file that
  cache has and the view no longer has. That is what an earlier run sent but never verified:
  a run cut off after sending leaves its files on the archive, and this run's push, finding
  them there, does not send them again. It needs no bookkeeping during the run, so a run
  killed outright (SIGKILL, power loss) loses nothing; a state file of pending paths would
  have to be written before rsync sends them, and a lost or stale one would hide them. (The
  key relies on the view passing the repository's inodes and ctimes through, as gocryptfs 2
  does on Linux; a view that did not would list every file every night: slower, not weaker);
- **a rotating slice of the rest**: each file belongs to one of `cycle_days` slices (a hash of
  its path), and the slice of today's UTC day number (mod `cycle_days`) is due, plus every
  slice not checked for a whole cycle (nights with no run, or a run that failed), plus every
  slice never checked. So with a run every night every file is re-read once per cycle, and
  after skipped nights the first run catches up on what they left.

A first run, a lost or unreadable state, a changed `cycle_days`, or a lost digest cache check
everything (the whole view, as `verify --full` does). What the push itself can see (missing
and extra entries, a size or a time that differs, a symlink's target) it repairs every night;
what only a checksum shows (a damaged block that kept its size and time) is what the slices
are for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DAY_S = 86_400

Stat = tuple[int, int, int, int]
"""(size, mtime_ns, ctime_ns, inode): the key of the digest cache (`compare.Digests`)."""


def slice_of(path: str, slices: int) -> int:
    """The slice of a path in the view: stable across runs, hosts and Python versions."""
    digest = hashlib.sha256(path.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % slices


def due_slices(checked: Sequence[float | None] | None, now: float,
               cycle_days: int) -> tuple[int, ...]:
    """The slices to check at `now`: today's (unless already checked today), every slice
    last checked a whole cycle ago or more, or never, or in the future (a clock set back).
    Unknown state, or state of another cycle length, makes every slice due."""
    if checked is None or len(checked) != cycle_days:
        return tuple(range(cycle_days))
    today = int(now // DAY_S)
    slot = today % cycle_days
    return tuple(i for i, at in enumerate(checked)
                 if at is None or at > now or now - at >= cycle_days * DAY_S
                 or (i == slot and at < today * DAY_S))


def after_check(checked: Sequence[float | None] | None, slices: Sequence[int], now: float,
                cycle_days: int) -> list[float | None]:
    """The slice times once `slices` were checked at `now`."""
    times: list[float | None] = (list(checked) if checked is not None
                                 and len(checked) == cycle_days else [None] * cycle_days)
    for i in slices:
        times[i] = now
    return times


@dataclass(frozen=True)
class Plan:
    everything: bool
    """Check the whole view (no list): no usable state, or every slice due."""
    sent: tuple[str, ...]
    """What this run's push sent, created or deleted."""
    unverified: tuple[str, ...]
    """Changed in the view since the last verified run, and not in `sent`."""
    slices: tuple[int, ...]
    sliced: tuple[str, ...]
    """The files of the due slices not already listed above."""
    slice_bytes: int
    files: int
    """Regular files in the view."""
    total_bytes: int
    cycle_days: int

    def paths(self) -> list[str]:
        """The `--files-from` list (meaningless when `everything`)."""
        return [*self.sent, *self.unverified, *self.sliced]

    def describe(self) -> str:
        """What was checked, for the console and the report's detail."""
        if self.everything:
            return f"verified all {self.files:,} files ({_size(self.total_bytes)})"
        parts = [f"{len(self.sent):,} sent entries"]
        if self.unverified:
            parts.append(f"{len(self.unverified):,} unverified since an earlier run")
        if self.slices:
            names = ",".join(str(i + 1) for i in self.slices)
            plural = "s" if len(self.slices) > 1 else ""
            parts.append(f"slice{plural} {names}/{self.cycle_days} ({len(self.sliced):,} files, "
                         f"{_size(self.slice_bytes)})")
        days = f"{self.cycle_days} day{'s' if self.cycle_days != 1 else ''}"
        return (f"verified {' + '.join(parts)} of {self.files:,} files; every file re-read "
                f"within {days}")


def make_plan(view: Mapping[str, Stat], sent: Sequence[str],
              verified: Mapping[str, Sequence[object]] | None,
              checked: Sequence[float | None] | None, now: float, cycle_days: int,
              full: bool = False) -> Plan:
    """The check for a run: `view` is the view's regular files now, `sent` the paths the push
    itemized, `verified` the digest cache of the last verified run (None or empty: unknown),
    `checked` the slice times (None: unknown)."""
    due = due_slices(checked, now, cycle_days)
    total = sum(stat[0] for stat in view.values())
    if full or not verified or len(due) == cycle_days:
        return Plan(True, tuple(sent), (), tuple(range(cycle_days)), (), total, len(view),
                    total, cycle_days)
    listed = set(sent)
    unverified = sorted(
        (p for p in {*view, *verified} - listed
         if p not in view or p not in verified or tuple(verified[p][:4]) != view[p]),
        key=lambda p: p.encode("utf-8", "surrogateescape"))
    listed.update(unverified)
    wanted = set(due)
    sliced = sorted((p for p in view if p not in listed and slice_of(p, cycle_days) in wanted),
                    key=lambda p: p.encode("utf-8", "surrogateescape"))
    return Plan(False, tuple(sent), tuple(unverified), due, tuple(sliced),
                sum(view[p][0] for p in sliced), len(view), total, cycle_days)


def _size(count: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"
