"""A small IAM policy evaluator: what moto does not do (it matches actions and ignores
Condition), for the statements and condition operators Offsite's policies use.

The rules followed ("Policy evaluation logic" and "IAM JSON policy elements: Condition
operators", IAM User Guide): a request is allowed when some Allow statement matches it and no
Deny does. A statement matches when one of its actions and one of its resources match
(`*` any run of characters, `?` one; actions case-insensitively) and every condition in it
holds: every operator, every key of it (AND), any one of a key's values (OR). A key the request
does not carry makes an operator false, except `Null` (which asks exactly that), the
`...IfExists` forms and `ForAllValues:` (true over no values). A negated operator
(`StringNotEquals`, ...) holds when none of the values match. An operator this module does not
know raises, so a policy that starts using one is not silently misjudged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

Values = Sequence[str]


@dataclass(frozen=True)
class Request:
    """One authorisation AWS makes for a call: an action on one resource, with the condition
    keys that request carries (a key's values; one value for a single-valued key)."""

    action: str
    resource: str
    context: Mapping[str, Values] = field(default_factory=dict)
    why: str = ""

    def __str__(self) -> str:
        return f"{self.action} on {self.resource} {dict(self.context)} ({self.why})"


@cache
def _pattern(glob: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def glob_matches(glob: str, value: str, ignore_case: bool = False) -> bool:
    return _pattern(glob, ignore_case).fullmatch(value) is not None


def _equals(value: str, expected: str) -> bool:
    return value == expected


def _bool(value: str, expected: str) -> bool:
    return value.lower() == expected.lower()


def _like(value: str, expected: str) -> bool:
    return glob_matches(expected, value)


_COMPARISONS = {
    "StringEquals": (_equals, False), "StringNotEquals": (_equals, True),
    "StringEqualsIgnoreCase": (lambda v, e: v.lower() == e.lower(), False),
    "StringLike": (_like, False), "StringNotLike": (_like, True),
    "ArnEquals": (_like, False), "ArnLike": (_like, False),
    "ArnNotEquals": (_like, True), "ArnNotLike": (_like, True),
    "Bool": (_bool, False),
}


class UnknownOperatorError(ValueError):
    pass


def listed(value: str | Iterable[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _lookup(context: Mapping[str, Values], key: str) -> list[str] | None:
    for name, values in context.items():
        if name.lower() == key.lower():
            return listed(values)
    return None


def operator_holds(operator: str, key: str, expected: list[str],
                   context: Mapping[str, Values]) -> bool:
    present = _lookup(context, key)
    if operator == "Null":
        (wanted,) = expected
        return (present is None) == (wanted.lower() == "true")
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base not in _COMPARISONS or qualifier not in ("", "ForAllValues", "ForAnyValue"):
        raise UnknownOperatorError(operator)
    compare, negated = _COMPARISONS[base]
    if present is None:
        return qualifier == "ForAllValues" or if_exists

    def one(value: str) -> bool:
        matched = any(compare(value, e) for e in expected)
        return not matched if negated else matched

    if qualifier == "ForAllValues":
        return all(one(v) for v in present)
    if qualifier == "ForAnyValue":
        return any(one(v) for v in present)
    if len(present) != 1:
        raise ValueError(f"{operator} on multivalued {key}: use ForAllValues or ForAnyValue")
    return one(present[0])


def condition_holds(condition: Mapping[str, Mapping[str, Any]],
                    context: Mapping[str, Values]) -> bool:
    return all(operator_holds(operator, key, listed(expected), context)
               for operator, keys in condition.items() for key, expected in keys.items())


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    if "NotAction" in statement or "NotResource" in statement:
        raise UnknownOperatorError("NotAction/NotResource")
    return (any(glob_matches(a, request.action, ignore_case=True)
                for a in listed(statement["Action"]))
            and any(glob_matches(r, request.resource) for r in listed(statement["Resource"]))
            and condition_holds(statement.get("Condition", {}), request.context))


def statements(documents: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = []
    for document in documents:
        listed_statements = document["Statement"]
        found += [listed_statements] if isinstance(listed_statements, dict) else listed_statements
    return found


def decision(documents: Iterable[Mapping[str, Any]], request: Request) -> str:
    """"allow", "deny" (an explicit Deny matched) or "implicit" (no Allow matched)."""
    matched = [s["Effect"] for s in statements(documents) if statement_matches(s, request)]
    if "Deny" in matched:
        return "deny"
    return "allow" if "Allow" in matched else "implicit"
