"""What each command prints: the API's answers as tables and fields (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from statistics import fmean
from typing import Any

from chalicelib.admin.tables import fields, size, table
from chalicelib.admin.usage import Observed
from chalicelib.cost import GIB, MonthlyCost, Prices, cloudwatch_free_usd

ACTIVE_STATES = ("OPENING", "BOOTING", "OPEN", "CLOSING", "SNAPSHOTTING")


def host_line(host: Mapping[str, Any], new: bool | None = None) -> str:
    verb = {True: "enrolled", False: "re-enrolled", None: "host"}[new]
    state = "enabled" if host.get("enabled") else "revoked"
    return (f"{verb} {host['name']} ({state}): size {host.get('size_gib')} GiB, "
            f"key {host.get('key_fingerprint')}")


def hosts_table(hosts: Sequence[Mapping[str, Any]]) -> str:
    if not hosts:
        return "no hosts enrolled"
    rows = [{**h, "state": "enabled" if h.get("enabled") else "revoked",
             "enrolled": str(h.get("enrolled_at", ""))[:19]} for h in hosts]
    return table(rows, [("name", "HOST"), ("state", "STATE"), ("size_gib", "GIB"),
                        ("enrolled", "ENROLLED (UTC)"), ("key_fingerprint", "KEY")])


def window_summary(window: Mapping[str, Any]) -> str:
    lines = [fields([
        ("window", window["window_id"]), ("state", window["state"]),
        ("purpose", window.get("purpose", "backup")),
        ("reason", window.get("reason")), ("trigger", window.get("trigger")),
        ("opened", window.get("opened_at")), ("deadline", window.get("deadline")),
        ("expected", window.get("expected")), ("missing", window.get("missing"))])]
    shards = window.get("shards")
    if shards:
        lines += ["", shards_table(shards)]
    reports = window.get("host_reports")
    if reports:
        rows = [{**r, "sent": size(int(r.get("bytes_sent", 0))),
                 "took": f"{float(r.get('duration_s', 0)):.1f}s"} for r in reports]
        lines += ["", table(rows, [("host", "HOST"), ("status", "REPORT"), ("sent", "SENT"),
                                   ("files", "FILES"), ("took", "TOOK"),
                                   ("detail", "DETAIL")])]
    snapshots = window.get("snapshots") or {}
    if snapshots:
        rows = [{"host": h, "status": s} for h, s in sorted(snapshots.items())]
        lines += ["", table(rows, [("host", "HOST"), ("status", "SNAPSHOT")])]
    return "\n".join(lines)


def shards_table(shards: Sequence[Mapping[str, Any]]) -> str:
    """A window's archives: one instance each, serving its hosts."""
    return table(shards, [("shard_id", "ARCHIVE"), ("state", "STATE"),
                          ("instance_id", "INSTANCE"), ("address", "ADDRESS"),
                          ("hosts", "HOSTS")])


def windows_table(windows: Sequence[Mapping[str, Any]]) -> str:
    if not windows:
        return "no windows yet"
    rows = [{**w, "opened": str(w.get("opened_at", ""))[:19],
             "hosts": f"{len(w.get('expected') or []) - len(w.get('missing') or [])}"
                      f"/{len(w.get('expected') or [])}",
             "archives": len(w.get("shards") or [])} for w in windows]
    return table(rows, [("window_id", "WINDOW"), ("state", "STATE"),
                        ("opened", "OPENED (UTC)"), ("purpose", "PURPOSE"),
                        ("trigger", "TRIGGER"), ("hosts", "REPORTED"),
                        ("archives", "ARCHIVES"), ("reason", "REASON")])


def current_of(windows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The active backup window, else an active restore, if any (the history is newest
    first; at most one backup window is active, restores run beside it)."""
    active = [w for w in windows if w.get("state") in ACTIVE_STATES]
    return next((w for w in active if w.get("purpose", "backup") == "backup"),
                active[0] if active else None)


def fleet_text(answer: Mapping[str, Any]) -> str:
    """`offsite-admin status`: one line a host, then who is stale."""
    hosts = answer.get("hosts") or []
    limit = f"{float(answer.get('stale_after_hours', 0)):g} h"
    rows = []
    for host in hosts:
        point, last = host.get("newest_point") or {}, host.get("last_window") or {}
        rows.append({
            "host": host["host"], "point": point.get("snapshot_id"), "day": point.get("day"),
            "age": f"{float(host.get('age_hours', 0)):.1f}", "window": last.get("window_id"),
            "outcome": f"{last.get('state')}, {last.get('report')}" if last else None,
            "sent": size(int(last.get("bytes_sent", 0))) if last else None,
            "stale": "STALE" if host.get("stale") else "ok"})
    lines = [table(rows, [("host", "HOST"), ("point", "NEWEST COMPLETE POINT"),
                          ("day", "DAY"), ("age", "AGE (H)"), ("window", "LAST WINDOW"),
                          ("outcome", "OUTCOME, REPORT"), ("sent", "SENT"),
                          ("stale", "STALE")]) if rows else "no enabled host"]
    stale = answer.get("stale") or []
    lines.append(f"\n{len(stale)} of {len(hosts)} hosts stale (no complete recovery point for "
                 f"more than {limit})" + (f": {', '.join(stale)}" if stale else ""))
    if answer.get("revoked"):
        lines.append(f"revoked, not watched: {', '.join(answer['revoked'])}")
    return "\n".join(lines)


def snapshots_table(answer: Mapping[str, Any]) -> str:
    snapshots = answer.get("snapshots") or []
    if not snapshots:
        return f"no snapshots of {answer.get('host')}"
    return table(snapshots, [("snapshot_id", "SNAPSHOT"), ("day", "DAY"),
                             ("window_id", "WINDOW"), ("complete", "COMPLETE"),
                             ("size_gib", "GIB"), ("started_at", "STARTED")])


def cost_data(observed: Observed, costs: Sequence[MonthlyCost],
              prices: Prices) -> dict[str, Any]:
    """`costs` are the designs, the observed one (the fleet) first."""
    usage = observed.usage
    designs = {c.design: {"total_usd": round(c.total, 4), "lines": [
        {"item": line.item, "quantity": round(line.quantity, 6), "unit": line.unit,
         "unit_usd": line.unit_usd, "usd": round(line.usd, 4)} for line in c.lines]}
        for c in costs}
    by_name = {c.design: c for c in costs}
    return {
        "windows": list(observed.window_ids),
        "usage": {"hosts": usage.hosts, "volume_gib": usage.volume_gib * usage.hosts,
                  "shards_per_window": len(usage.shards) / usage.windows_seen,
                  "billed_seconds": fmean(s.stopped_s for s in usage.shards),
                  "window_seconds": usage.window_s, "stored_gib": usage.stored_gib,
                  "changed_gib": usage.changed_gib, "retention_days": usage.retention_days,
                  "stored_estimated": observed.stored_estimated},
        "designs": designs,
        "total_usd": round(costs[0].total, 4),
        "kept_up_total_usd": round(by_name["kept up"].total, 4),
        "persistent_total_usd": round(by_name["persistent"].total, 4),
        # what CloudWatch's always-free tier would take off each design's CloudWatch lines
        "cloudwatch_free_usd": round(cloudwatch_free_usd(costs[0], usage.hosts), 4),
        "prices": {"region": prices.region, "read_on": prices.read_on},
    }


def cost_text(observed: Observed, rendered: str) -> str:
    usage = observed.usage
    stored = size(round(usage.stored_gib * GIB)) + (
        " (estimated: each host's largest transfer)" if observed.stored_estimated else "")
    types = sorted({s.instance_type for s in usage.shards})
    head = fields([
        ("from windows", f"{len(observed.window_ids)} closed: "
                         + ", ".join(observed.window_ids[:3])
                         + (", ..." if len(observed.window_ids) > 3 else "")),
        ("hosts", f"{usage.hosts:g} in {len(usage.shards) / usage.windows_seen:g} shard(s) "
                  "a window"),
        ("instances", f"{', '.join(types)}, billed {fmean(s.stopped_s for s in usage.shards):.0f}"
                      f" s a shard (at least 60 s a start) of a {usage.window_s:.0f} s window"),
        ("volumes", f"{usage.volume_gib:g} GiB a host"), ("stored", stored),
        ("sent per window", f"{size(round(usage.changed_gib * GIB))}; snapshots grow "
                            f"{usage.snapshot_bytes_per_sent_byte:g} x that in changed 512 KiB "
                            f"blocks ({size(round(usage.snapshot_growth_gib * GIB))}, "
                            "bench/wire's estimate)"),
        ("retention", f"{usage.retention_days} days")])
    return (f"{head}\n\nA month (30 windows) at this usage (fleet), beside the persistent "
            f"design and the fleet kept up for the whole window:\n{rendered}")
