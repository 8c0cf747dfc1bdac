"""The key files offsite-host writes are the ones OpenSSH writes: byte for byte."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from offsite_host import keys

from tests.e2e.conftest import HostFactory, must

pytestmark = pytest.mark.e2e


def checkint_of(pem: bytes) -> int:
    """The check integer of an unencrypted openssh-key-v1 file (PROTOCOL.key)."""
    lines = pem.decode().strip().splitlines()
    body = base64.b64decode("".join(lines[1:-1]))
    pos = len(b"openssh-key-v1\0")
    for _ in range(3):  # ciphername, kdfname, kdfoptions
        pos += 4 + struct.unpack_from(">I", body, pos)[0]
    pos += 4  # number of keys
    pos += 4 + struct.unpack_from(">I", body, pos)[0]  # public key
    return int(struct.unpack_from(">I", body, pos + 4)[0])


def test_private_key_is_byte_identical_to_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "id"
    must(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "web-1@offsite", "-f", str(path)])
    pem = path.read_bytes()
    key = keys.parse_private_pem(pem)
    assert keys.private_pem(key, "web-1@offsite", checkint_of(pem)) == pem
    assert keys.public_line(key, "web-1@offsite") == Path(f"{path}.pub").read_text().strip()


def test_ssh_keygen_reads_the_key_offsite_host_writes(tmp_path: Path) -> None:
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    path = tmp_path / "host.key"
    keys.write_secret(path, keys.private_pem(key, "web-1@offsite", 0x12345678))
    assert path.stat().st_mode & 0o777 == 0o600
    assert must(["ssh-keygen", "-y", "-f", str(path)]).split()[:2] == \
        keys.public_line(key, "x").split()[:2]


def test_keygen_and_init_say_what_to_enrol_and_keep_safe(make_host: HostFactory) -> None:
    host = make_host()
    keygen, init = host.setup_output["keygen"], host.setup_output["init"]
    assert keygen.stdout.startswith("ssh-ed25519 AAAA")
    assert keygen.stdout.strip().endswith(f"{host.name}@offsite")
    assert str(host.password_file) in init.stdout
    assert ".gocryptfs.reverse.conf" in init.stdout
    assert "master key is" not in (init.stdout + init.stderr).lower()
    assert host.password_file.read_text().strip() not in init.stdout + init.stderr
    assert host.password_file.stat().st_mode & 0o777 == 0o600
    again = host.cli("init")
    assert again.returncode == 0 and "already initialised" in again.stderr
