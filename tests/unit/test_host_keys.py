"""OpenSSH key formats and atomic secret files (OpenSSH's own tools check them in
tests/integration/test_keys.py). Every key is made by the run."""

from __future__ import annotations

import base64
import os
import stat
import struct
from pathlib import Path

import pytest
from nacl.signing import SigningKey
from offsite_host import keys
from offsite_host.exitcodes import ConfigError


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def test_public_line_is_the_rfc4251_blob_of_the_key(key: SigningKey) -> None:
    # packed here apart from the module; `ssh-keygen -y` agrees in the integration tests
    blob = b"".join(struct.pack(">I", len(part)) + part
                    for part in (b"ssh-ed25519", bytes(key.verify_key)))
    assert keys.public_line(key, "web-1@offsite") == (
        f"ssh-ed25519 {base64.b64encode(blob).decode()} web-1@offsite")


def test_private_key_round_trips_and_is_padded(key: SigningKey) -> None:
    pem = keys.private_pem(key, "comment", 0xDEADBEEF)
    assert pem.startswith(f"{keys.BEGIN}\n".encode())
    assert all(len(line) <= 70 for line in pem.splitlines())
    assert bytes(keys.parse_private_pem(pem)) == bytes(key)


def _body(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda b: b.replace(b"none", b"aes1", 1), "passphrase-protected"),
    (lambda b: b[:60], "truncated"),
    (lambda b: b"openssh-key-v2" + b[14:], "not an openssh-key-v1 key"),
    (lambda b: b.replace(b"ssh-ed25519", b"ssh-ed25518"), "not an Ed25519 key"),
])
def test_unusable_keys_are_refused(mangle: object, message: str, key: SigningKey) -> None:
    assert callable(mangle)
    pem = keys.armour(mangle(_body(keys.private_pem(key, "c", 7))))
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
