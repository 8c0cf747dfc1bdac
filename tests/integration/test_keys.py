"""The key material made at setup is what OpenSSH reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

from nacl.signing import SigningKey

from chalicelib.keys import generate_key_material, openssh_private_key
from chalicelib.sshcert import ca_public_key_line


def test_host_private_key_reads_back_with_ssh_keygen(tmp_path: Path) -> None:
    material = generate_key_material("demo")
    key_file = tmp_path / "host_key"
    key_file.write_text(material.host_private_pem)
    key_file.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(key_file)], check=True,
                             capture_output=True, text=True, timeout=30).stdout.split()
    assert derived[:2] == material.host_public_line.split()[:2]


def test_private_key_signs_what_its_public_key_verifies(tmp_path: Path) -> None:
    key = SigningKey.generate()
    key_file = tmp_path / "id"
    key_file.write_text(openssh_private_key(key, "test"))
    key_file.chmod(0o600)
    (tmp_path / "id.pub").write_text(ca_public_key_line(key) + "\n")
    message = tmp_path / "message"
    message.write_bytes(b"offsite")
    subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key_file), "-n", "file",
                    str(message)], check=True, capture_output=True, timeout=30)
    allowed = tmp_path / "allowed"
    allowed.write_text(f"tester {ca_public_key_line(key)}\n")
    with message.open("rb") as data:
        verified = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", "tester", "-n", "file",
             "-s", f"{message}.sig"], stdin=data, capture_output=True, timeout=30)
    assert verified.returncode == 0, verified.stderr
