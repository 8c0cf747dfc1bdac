"""When the next scheduled window opens, from the open schedule's EventBridge expression.

Only the daily form Offsite configures is understood: `cron(M H * * ? *)`, where M and H are
numbers or comma lists. Anything else answers None ("not known"), never a wrong time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_DAILY = re.compile(r"cron\((?P<m>[\d,]+) (?P<h>[\d,]+) [*?] [*?] [*?] [*?]\)")


def next_open(expression: str, now: datetime) -> datetime | None:
    match = _DAILY.fullmatch(expression.strip())
    if match is None:
        return None
    minutes = sorted({int(m) for m in match["m"].split(",")})
    hours = sorted({int(h) for h in match["h"].split(",")})
    if minutes[-1] > 59 or hours[-1] > 23:
        return None
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    for offset in (0, 1):
        for hour in hours:
            for minute in minutes:
                at = day + timedelta(days=offset, hours=hour, minutes=minute)
                if at > now:
                    return at
    return None
