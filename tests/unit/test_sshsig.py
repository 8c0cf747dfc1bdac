"""chalicelib/sshsig.py: the SSHSIG checks, on signatures made here (the byte-for-byte check
against `ssh-keygen -Y sign` is in tests/integration/test_sshsig_openssh.py)."""

from __future__ import annotations

import base64

import pytest
from nacl.signing import SigningKey

from chalicelib.sshsig import SshSigError, pack_signature, sign, signed_data, verify

NAMESPACE = "offsite-boot-signal"
MESSAGE = b"offsite-boot-signal 1\ninstance i-0123456789abcdef0\n"


def blob_of(armored: str) -> bytes:
    return base64.b64decode("".join(armored.strip().splitlines()[1:-1]))


def armor(blob: bytes) -> str:
    text = base64.b64encode(blob).decode()
    return f"-----BEGIN SSH SIGNATURE-----\n{text}\n-----END SSH SIGNATURE-----\n"


@pytest.mark.parametrize("algorithm", ["sha512", "sha256"])
def test_a_signature_by_the_key_in_the_namespace_verifies(algorithm: str) -> None:
    key = SigningKey.generate()
    verify(sign(key, MESSAGE, NAMESPACE, algorithm), MESSAGE, NAMESPACE,
           bytes(key.verify_key))


def test_another_message_key_or_namespace_is_refused() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    armored = sign(key, MESSAGE, NAMESPACE)
    with pytest.raises(SshSigError, match="does not verify"):
        verify(armored, MESSAGE + b"x", NAMESPACE, bytes(key.verify_key))
    with pytest.raises(SshSigError, match="another key"):
        verify(armored, MESSAGE, NAMESPACE, bytes(other.verify_key))
    with pytest.raises(SshSigError, match="another namespace"):
        verify(armored, MESSAGE, "file", bytes(key.verify_key))


def test_a_signature_made_for_another_namespace_but_labelled_ours_does_not_verify() -> None:
    """The namespace is inside what the key signs: relabelling the blob breaks it."""
    key = SigningKey.generate()
    raw = key.sign(signed_data("file", "sha512", MESSAGE)).signature
    with pytest.raises(SshSigError, match="does not verify"):
        verify(pack_signature(bytes(key.verify_key), NAMESPACE, "sha512", raw), MESSAGE,
               NAMESPACE, bytes(key.verify_key))


def malformed(case: str, key: SigningKey) -> str:
    public = bytes(key.verify_key)
    good = blob_of(sign(key, MESSAGE, NAMESPACE))
    raw = key.sign(signed_data(NAMESPACE, "sha512", MESSAGE)).signature
    return {
        "not armored": lambda: "SSHSIG",
        "bad base64": lambda: "-----BEGIN SSH SIGNATURE-----\n!!!\n-----END SSH SIGNATURE-----",
        "magic": lambda: armor(b"XXXXXX" + good[6:]),
        "version": lambda: armor(good[:6] + (2).to_bytes(4, "big") + good[10:]),
        "truncated": lambda: armor(good[:-5]),
        "trailing": lambda: armor(good + b"\0"),
        "hash": lambda: pack_signature(public, NAMESPACE, "sha1", raw),
        "too long": lambda: "x" * 5000,
    }[case]()


@pytest.mark.parametrize("case", ["not armored", "bad base64", "magic", "version", "truncated",
                                  "trailing", "hash", "too long"])
def test_malformed_signatures_are_refused_not_crashed_on(case: str) -> None:
    key = SigningKey.generate()
    with pytest.raises(SshSigError):
        verify(malformed(case, key), MESSAGE, NAMESPACE, bytes(key.verify_key))
