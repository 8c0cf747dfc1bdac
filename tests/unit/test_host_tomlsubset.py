"""The TOML subset parser used on Python 3.10 reads host.toml exactly as tomllib does."""

from __future__ import annotations

import pytest
import tomllib
from offsite_host.tomlsubset import TomlError, loads, loads_subset

SAMPLE = r'''
# Offsite host configuration
api_url = "https://api.example.com/prod"   # trailing comment
host = 'web-1'
retention_days = 20
bwlimit_kib = 1_000
paths = [
  "/etc",
  '/srv/www#1',   # a hash inside a string is not a comment
  "/home/caf\u00e9",
]
excludes = []
flag = false
quoted = "tab\there \"quoted\" back\\slash"

[tools]
rsync = "C:\\Program Files\\cwRsync\\bin\\rsync.exe"
ssh = 'C:\Windows\System32\OpenSSH\ssh.exe'
'''


def test_subset_matches_tomllib() -> None:
    assert loads_subset(SAMPLE) == tomllib.loads(SAMPLE)
    assert loads(SAMPLE) == tomllib.loads(SAMPLE)


def test_values() -> None:
    data = loads_subset(SAMPLE)
    assert data["paths"] == ["/etc", "/srv/www#1", "/home/café"]
    assert data["bwlimit_kib"] == 1000
    assert data["tools"]["ssh"] == r"C:\Windows\System32\OpenSSH\ssh.exe"


@pytest.mark.parametrize(("text", "message"), [
    ("a = 1\na = 2", "line 2: key 'a' defined twice"),
    ("[t]\n[t]", "line 2: table [t] defined twice"),
    ("just words", "line 1: expected `key = value`"),
    ("a = 1.5", "line 1: unsupported value"),
    ('a = "open', "line 1: unterminated string"),
    ("a = [\n'x',\n", "line 1: unterminated array"),
    ("a = ['x' 'y']", "expected `,` or `]`"),
    ('a = "x" y', "unexpected text after the value"),
    (r'a = "\q"', r"unsupported escape \q"),
    ("a.b = 1", "expected `key = value`"),
])
def test_errors_carry_the_line(text: str, message: str) -> None:
    with pytest.raises(TomlError) as caught:
        loads_subset(text)
    assert message in str(caught.value)


def test_tomllib_errors_become_toml_errors() -> None:
    with pytest.raises(TomlError):
        loads("a = ")
