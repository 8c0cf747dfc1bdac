"""OpenSSH key formats and atomic secret files (OpenSSH's own tools check them in e2e)."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from offsite_host import keys
from offsite_host.exitcodes import ConfigError

SEED = bytes(range(32))


def test_public_line_known_answer() -> None:
    # `ssh-keygen -y` on the private key made from this seed prints the same key.
    assert keys.public_line(SigningKey(SEED), "web-1@offsite") == (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4 "
        "web-1@offsite")


def test_private_key_round_trips_and_is_padded() -> None:
    pem = keys.private_pem(SigningKey(SEED), "comment", 0xDEADBEEF)
    assert pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----\n")
    assert all(len(line) <= 70 for line in pem.splitlines())
    assert bytes(keys.parse_private_pem(pem)) == SEED


def _body(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))


def _pem(body: bytes) -> bytes:
    text = base64.b64encode(body).decode()
    return ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + text +
            "\n-----END OPENSSH PRIVATE KEY-----\n").encode()


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda b: b.replace(b"none", b"aes1", 1), "passphrase-protected"),
    (lambda b: b[:60], "truncated"),
    (lambda b: b"openssh-key-v2" + b[14:], "not an openssh-key-v1 key"),
    (lambda b: b.replace(b"ssh-ed25519", b"ssh-ed25518"), "not an Ed25519 key"),
])
def test_unusable_keys_are_refused(mangle: object, message: str) -> None:
    assert callable(mangle)
    pem = _pem(mangle(_body(keys.private_pem(SigningKey(SEED), "c", 7))))
    with pytest.raises(keys.KeyFormatError, match=message):
        keys.parse_private_pem(pem)


def test_not_a_key_at_all() -> None:
    with pytest.raises(keys.KeyFormatError, match="not an OpenSSH private key"):
        keys.parse_private_pem(b"ssh-ed25519 AAAA")


def test_write_secret_is_atomic_and_private(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "host.key"
    keys.write_secret(target, b"first")
    keys.write_secret(target, b"second")
    assert target.read_bytes() == b"second"
    if os.name == "posix":
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["host.key"]


def test_load_identity_errors_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run `offsite-host keygen`"):
        keys.load_identity(tmp_path / "missing")
    (tmp_path / "bad").write_text("nope")
    with pytest.raises(ConfigError, match="is unusable"):
        keys.load_identity(tmp_path / "bad")
