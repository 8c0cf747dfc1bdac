"""A host's Unix account on the archive instance: one function names it, so the certificate's
principal, the session's `user` and the account the instance's boot makes never disagree.

The account is the stage's ACCOUNT_PREFIX followed by the host's name. On AWS each shard has
an instance of its own and the prefix is empty (the account is the host's name); the embedded
local stack sets a prefix of its own, so that two stacks on one machine never share an account.
"""

from __future__ import annotations

import re

ACCOUNT_PREFIX = re.compile(r"([a-z][a-z0-9-]{0,15})?")  # starts with a letter: never all digits
MAX_ACCOUNT_LENGTH = 32  # useradd's limit on Linux


class AccountNameError(ValueError):
    pass


def check_account_prefix(prefix: str) -> str:
    if not ACCOUNT_PREFIX.fullmatch(prefix):
        raise AccountNameError(
            f"account prefix must match {ACCOUNT_PREFIX.pattern} (a lowercase letter, then "
            f"letters, digits or '-'; at most 16 characters): {prefix!r}")
    return prefix


def account_name(prefix: str, host: str) -> str:
    """The account of `host` (an already checked host name) on the archive instance."""
    account = check_account_prefix(prefix) + host
    if len(account) > MAX_ACCOUNT_LENGTH:
        raise AccountNameError(
            f"host name {host!r} is too long for the account prefix {prefix!r}: the account "
            f"{account!r} would exceed {MAX_ACCOUNT_LENGTH} characters")
    return account
