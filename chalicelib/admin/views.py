"""What each command prints: the API's answers as tables and fields (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from chalicelib.admin.tables import fields, size, table
from chalicelib.admin.usage import Observed
from chalicelib.cost import MonthlyCost, Prices

ACTIVE_STATES = ("OPENING", "OPEN", "CLOSING", "SNAPSHOTTING")


def host_line(host: Mapping[str, Any], new: bool | None = None) -> str:
    verb = {True: "enrolled", False: "re-enrolled", None: "host"}[new]
    state = "enabled" if host.get("enabled") else "revoked"
    return (f"{verb} {host['name']} ({state}): volume {host.get('volume_id')}, "
            f"key {host.get('key_fingerprint')}")


def hosts_table(hosts: Sequence[Mapping[str, Any]]) -> str:
    if not hosts:
        return "no hosts enrolled"
    rows = [{**h, "state": "enabled" if h.get("enabled") else "revoked",
             "enrolled": str(h.get("enrolled_at", ""))[:19]} for h in hosts]
    return table(rows, [("name", "HOST"), ("state", "STATE"), ("volume_id", "VOLUME"),
                        ("enrolled", "ENROLLED (UTC)"), ("key_fingerprint", "KEY")])


def window_summary(window: Mapping[str, Any]) -> str:
    lines = [fields([
        ("window", window["window_id"]), ("state", window["state"]),
        ("purpose", window.get("purpose", "backup")),
        ("reason", window.get("reason")), ("trigger", window.get("trigger")),
        ("opened", window.get("opened_at")), ("deadline", window.get("deadline")),
        ("expected", window.get("expected")), ("missing", window.get("missing")),
        ("address", window.get("address"))])]
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


def windows_table(windows: Sequence[Mapping[str, Any]]) -> str:
    if not windows:
        return "no windows yet"
    rows = [{**w, "opened": str(w.get("opened_at", ""))[:19],
             "hosts": f"{len(w.get('expected') or []) - len(w.get('missing') or [])}"
                      f"/{len(w.get('expected') or [])}"} for w in windows]
    return table(rows, [("window_id", "WINDOW"), ("state", "STATE"),
                        ("opened", "OPENED (UTC)"), ("purpose", "PURPOSE"),
                        ("trigger", "TRIGGER"),
                        ("hosts", "REPORTED"), ("reason", "REASON")])


def current_of(windows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The active window, if any (the history is newest first; at most one is active)."""
    return next((w for w in windows if w.get("state") in ACTIVE_STATES), None)


def snapshots_table(answer: Mapping[str, Any]) -> str:
    snapshots = answer.get("snapshots") or []
    if not snapshots:
        return f"no snapshots of {answer.get('host')}"
    return table(snapshots, [("snapshot_id", "SNAPSHOT"), ("day", "DAY"),
                             ("window_id", "WINDOW"), ("complete", "COMPLETE"),
                             ("size_gib", "GIB"), ("started_at", "STARTED")])


def cost_data(observed: Observed, mine: MonthlyCost, kept_up: MonthlyCost,
              prices: Prices) -> dict[str, Any]:
    usage = observed.usage
    return {
        "windows": list(observed.window_ids),
        "usage": {**vars(usage), "stored_estimated": observed.stored_estimated},
        "lines": [{"item": a.item, "observed_usd": round(a.usd, 4),
                   "kept_up_usd": round(b.usd, 4), "quantity": round(a.quantity, 4),
                   "unit": a.unit} for a, b in zip(mine.lines, kept_up.lines, strict=True)],
        "total_usd": round(mine.total, 4), "kept_up_total_usd": round(kept_up.total, 4),
        "prices": {"region": prices.region, "read_on": prices.read_on},
    }


def cost_text(observed: Observed, rendered: str) -> str:
    usage = observed.usage
    stored = size(usage.stored_bytes) + (" (estimated: each host's largest transfer)"
                                         if observed.stored_estimated else "")
    head = fields([
        ("from windows", f"{len(observed.window_ids)} closed: "
                         + ", ".join(observed.window_ids[:3])
                         + (", ..." if len(observed.window_ids) > 3 else "")),
        ("hosts", usage.hosts),
        ("instance", f"{usage.instance_type}, billed {usage.billed_seconds:.0f} s a window "
                     f"(at least 60 s a start) of a {usage.window_seconds:.0f} s window"),
        ("volumes", f"{usage.volume_gib:g} GiB"), ("stored", stored),
        ("sent per window", size(usage.sent_bytes)),
        ("retention", f"{usage.retention_days} days")])
    return (f"{head}\n\nA month (30 windows) at this usage, beside the instance kept up for "
            f"the whole window:\n{rendered}")
