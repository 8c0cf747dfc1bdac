"""Host names: each becomes a Unix account on the instance and a path, so only a narrow
alphabet is accepted."""

from __future__ import annotations

import re

HOST_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


class InvalidHostNameError(ValueError):
    pass


def check_host_name(name: object) -> str:
    if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
        raise InvalidHostNameError(
            f"host name must match {HOST_NAME.pattern} (lowercase letters, digits, '-'; "
            "at most 32 characters)")
    return name
