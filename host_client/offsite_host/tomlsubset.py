"""Reads the host configuration's TOML: `tomllib` on Python 3.11+, and on 3.10 (which has no
TOML parser in the standard library, and the client depends on nothing but pynacl) a small
parser of the subset `host.toml` is documented to use:

- `# comments` and blank lines;
- `[table]` headers, one level deep (`[tools]`);
- `key = value` with a bare key, where value is a basic string `"..."` (escapes `\\" \\\\ \\n
  \\t \\uXXXX`), a literal string `'...'`, a decimal integer, `true`/`false`, or an array of
  strings `[ ... ]` that may span lines and end with a trailing comma.

Anything else is refused with the line number, so a config that parses here parses the same way
under `tomllib`.
"""

from __future__ import annotations

import re
import sys
from typing import Any


class TomlError(ValueError):
    pass


def loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TomlError(str(exc)) from exc
    return loads_subset(text)


_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TABLE = re.compile(r"\[\s*([A-Za-z0-9_-]+)\s*\]")
_INT = re.compile(r"[+-]?(0|[1-9](_?[0-9])*)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def loads_subset(text: str) -> dict[str, Any]:
    """Parses the documented subset (see the module docstring)."""
    root: dict[str, Any] = {}
    table = root
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number, line = index + 1, _strip_comment(lines[index]).strip()
        index += 1
        if not line:
            continue
        header = _TABLE.fullmatch(line)
        if header:
            if header.group(1) in root:
                raise TomlError(f"line {number}: table [{header.group(1)}] defined twice")
            table = root[header.group(1)] = {}
            continue
        key, sep, rest = line.partition("=")
        key, rest = key.strip(), rest.strip()
        if not sep or not _KEY.fullmatch(key):
            raise TomlError(f"line {number}: expected `key = value`")
        if key in table:
            raise TomlError(f"line {number}: key {key!r} defined twice")
        if rest.startswith("[") and not _array_closed(rest):
            while index < len(lines) and not _array_closed(rest):
                rest += " " + _strip_comment(lines[index]).strip()
                index += 1
        table[key] = _value(rest, number)
    return root


def _value(raw: str, number: int) -> Any:
    if raw in ("true", "false"):
        return raw == "true"
    if _INT.fullmatch(raw):
        return int(raw.replace("_", ""))
    if raw.startswith("["):
        return _array(raw, number)
    value, rest = _string(raw, number)
    if rest.strip():
        raise TomlError(f"line {number}: unexpected text after the value")
    return value


def _array(raw: str, number: int) -> list[str]:
    if not _array_closed(raw):
        raise TomlError(f"line {number}: unterminated array")
    items: list[str] = []
    rest = raw[1:].strip()
    while not rest.startswith("]"):
        item, rest = _string(rest, number)
        items.append(item)
        rest = rest.strip()
        if rest.startswith(","):
            rest = rest[1:].strip()
        elif not rest.startswith("]"):
            raise TomlError(f"line {number}: expected `,` or `]` in the array")
    if rest[1:].strip():
        raise TomlError(f"line {number}: unexpected text after the array")
    return items


def _string(raw: str, number: int) -> tuple[str, str]:
    """One quoted string at the start of `raw`; returns it and what follows."""
    if raw.startswith("'"):
        end = raw.find("'", 1)
        if end < 0:
            raise TomlError(f"line {number}: unterminated string")
        return raw[1:end], raw[end + 1:]
    if not raw.startswith('"'):
        raise TomlError(f"line {number}: unsupported value (use a quoted string, an integer, "
                        "true/false or an array of strings)")
    out: list[str] = []
    pos = 1
    while pos < len(raw):
        char = raw[pos]
        if char == '"':
            return "".join(out), raw[pos + 1:]
        if char == "\\":
            escape = raw[pos + 1:pos + 2]
            if escape == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", raw[pos + 2:pos + 6]):
                out.append(chr(int(raw[pos + 2:pos + 6], 16)))
                pos += 6
                continue
            if escape not in _ESCAPES:
                raise TomlError(f"line {number}: unsupported escape \\{escape}")
            out.append(_ESCAPES[escape])
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise TomlError(f"line {number}: unterminated string")


def _strip_comment(line: str) -> str:
    """The line without a `#` comment that is outside any string."""
    pos = _find_outside_strings(line, "#")
    return line if pos < 0 else line[:pos]


def _array_closed(raw: str) -> bool:
    return _find_outside_strings(raw, "]") >= 0


def _find_outside_strings(text: str, target: str) -> int:
    """The index of the first `target` character that is not inside a quoted string, or -1."""
    quote = ""
    pos = 0
    while pos < len(text):
        char = text[pos]
        if quote:
            if char == "\\" and quote == '"':
                pos += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == target:
            return pos
        pos += 1
    return -1
