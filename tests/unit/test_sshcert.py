"""Field-by-field checks for the OpenSSH certificate builder, with keys made by each run.

The expected key lines and fingerprints are computed here apart from the module under test
(RFC 4251 strings, OpenSSH's unpadded base64 SHA256 fingerprint). The integration tests check
the certificates with `ssh-keygen -L`, `cryptography`, and byte for byte against a certificate
`ssh-keygen -s` makes over the same fields.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from nacl.signing import SigningKey, VerifyKey

from chalicelib.sshcert import (
    CertificateRequestError,
    CertificateSpec,
    MalformedKeyError,
    SignerError,
    SshCertError,
    UnsupportedKeyTypeError,
    ca_public_key_line,
    certificate_body,
    pack_options,
    pack_string,
    pack_uint32,
    pack_uint64,
    parse_ed25519_public_key,
    public_key_fingerprint,
    sign_user_certificate,
)


def _independent_line(public: bytes, comment: str = "") -> str:
    """An `ssh-ed25519` public key line, packed here with struct, not with the module."""
    blob = b"".join(struct.pack(">I", len(part)) + part for part in (b"ssh-ed25519", public))
    return " ".join(["ssh-ed25519", base64.b64encode(blob).decode(), *([comment] if comment
                                                                         else [])])


def _independent_fingerprint(line: str) -> str:
    digest = hashlib.sha256(base64.b64decode(line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


CA = SigningKey.generate()
CLIENT_KEY = bytes(SigningKey.generate().verify_key)
CLIENT_LINE = _independent_line(CLIENT_KEY, "client@alpha")
CA_LINE = _independent_line(bytes(CA.verify_key))
CA_FINGERPRINT = _independent_fingerprint(CA_LINE)
CLIENT_FINGERPRINT = _independent_fingerprint(CLIENT_LINE)

SPEC = CertificateSpec(
    public_key_line=CLIENT_LINE,
    principal="offsite-alpha",
    key_id="host=alpha window=w-20240101 request=r-1",
    serial=42,
    nonce=bytes(range(100, 132)),
    valid_after=1_700_000_000,
    valid_before=1_700_003_600,
    force_command="/usr/bin/rrsync -wo /srv/offsite/alpha",
    source_address="192.0.2.10/32",
    comment="alpha",
)


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


class Reader:
    """Reads RFC 4251 fields back, written here apart from the module under test."""

    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def uint32(self) -> int:
        (value,) = struct.unpack_from(">I", self.data, self.offset)
        self.offset += 4
        return int(value)

    def uint64(self) -> int:
        (value,) = struct.unpack_from(">Q", self.data, self.offset)
        self.offset += 8
        return int(value)

    def string(self) -> bytes:
        length = self.uint32()
        self.offset += length
        return self.data[self.offset - length : self.offset]

    def strings(self) -> list[bytes]:
        inner = Reader(self.string())
        found = []
        while inner.offset < len(inner.data):
            found.append(inner.string())
        return found

    def done(self) -> bool:
        return self.offset == len(self.data)


def test_certificate_line_is_typed_commented_and_deterministic() -> None:
    line = sign_user_certificate(SPEC, CA)

    assert line.split()[0::2] == ["ssh-ed25519-cert-v01@openssh.com", "alpha"]
    assert blob_of(line).startswith(struct.pack(">I", 32) + b"ssh-ed25519-cert-v01@openssh.com")
    assert sign_user_certificate(SPEC, CA) == line  # Ed25519 signatures are deterministic


def test_key_lines_and_fingerprints() -> None:
    assert ca_public_key_line(CA) == CA_LINE
    assert ca_public_key_line(CA, "offsite-ca") == CA_LINE + " offsite-ca"
    assert public_key_fingerprint(CA_LINE) == CA_FINGERPRINT
    assert public_key_fingerprint(CLIENT_LINE) == CLIENT_FINGERPRINT
    assert parse_ed25519_public_key(CLIENT_LINE) == CLIENT_KEY


def test_every_field_is_where_protocol_certkeys_puts_it() -> None:
    blob = blob_of(sign_user_certificate(SPEC, CA))
    cert = Reader(blob)

    assert cert.string() == b"ssh-ed25519-cert-v01@openssh.com"
    assert cert.string() == bytes(range(100, 132))
    assert cert.string() == CLIENT_KEY
    assert cert.uint64() == 42
    assert cert.uint32() == 1  # user certificate
    assert cert.string() == b"host=alpha window=w-20240101 request=r-1"
    assert cert.strings() == [b"offsite-alpha"]
    assert (cert.uint64(), cert.uint64()) == (1_700_000_000, 1_700_003_600)
    options = cert.strings()
    assert options[0::2] == [b"force-command", b"source-address"]
    assert [Reader(data).string() for data in options[1::2]] == [
        b"/usr/bin/rrsync -wo /srv/offsite/alpha",
        b"192.0.2.10/32",
    ]
    assert cert.strings() == []  # extensions: no pty, no forwarding, nothing
    assert cert.string() == b""  # reserved
    assert cert.string() == pack_string("ssh-ed25519") + pack_string(bytes(CA.verify_key))
    signed_part = blob[: cert.offset]
    signature = Reader(cert.string())
    assert cert.done()
    assert signature.string() == b"ssh-ed25519"
    VerifyKey(bytes(CA.verify_key)).verify(signed_part, signature.string())
    assert signature.done()
    assert signed_part == certificate_body(SPEC, bytes(CA.verify_key))


def options_and_extensions(body: bytes) -> tuple[list[bytes], list[bytes]]:
    cert = Reader(body)
    for read in (cert.string, cert.string, cert.string, cert.uint64, cert.uint32, cert.string):
        read()
    cert.strings(), cert.uint64(), cert.uint64()  # principals, validity
    return cert.strings(), cert.strings()


def test_without_source_address_only_force_command_is_critical() -> None:
    body = certificate_body(replace(SPEC, source_address=None), bytes(CA.verify_key))

    options, extensions = options_and_extensions(body)

    assert options == [b"force-command", pack_string("/usr/bin/rrsync -wo /srv/offsite/alpha")]
    assert extensions == []


def test_extensions_the_caller_asks_for_are_flags_sorted_by_name() -> None:
    spec = replace(SPEC, extensions=("permit-pty", "permit-X11-forwarding"))

    _, extensions = options_and_extensions(certificate_body(spec, bytes(CA.verify_key)))

    assert extensions == [b"permit-X11-forwarding", b"", b"permit-pty", b""]


def test_pack_helpers_follow_rfc4251() -> None:
    assert pack_uint32(1) == b"\x00\x00\x00\x01"
    assert pack_uint64(2**64 - 1) == b"\xff" * 8
    assert pack_string(b"") == b"\x00\x00\x00\x00"
    assert pack_string("é") == b"\x00\x00\x00\x02\xc3\xa9"
    assert pack_options({"b": b"", "a": b"x"}) == (
        pack_string("a") + pack_string(b"x") + pack_string("b") + pack_string(b"")
    )


def test_datetimes_and_epoch_seconds_give_the_same_certificate() -> None:
    after = datetime.fromtimestamp(1_700_000_000, UTC).astimezone(timezone(timedelta(hours=2)))
    spec = replace(SPEC, valid_after=after, valid_before=after + timedelta(hours=1))

    assert sign_user_certificate(spec, CA) == sign_user_certificate(SPEC, CA)


def test_a_sign_callable_gives_the_same_certificate() -> None:
    def sign(data: bytes) -> bytes:
        return CA.sign(data).signature

    line = sign_user_certificate(SPEC, sign, ca_public_key=bytes(CA.verify_key))

    assert line == sign_user_certificate(SPEC, CA)


def test_a_signer_with_another_key_is_refused() -> None:
    other = SigningKey.generate()

    with pytest.raises(SignerError):
        sign_user_certificate(SPEC, lambda d: other.sign(d).signature, bytes(CA.verify_key))
    with pytest.raises(SignerError):
        sign_user_certificate(SPEC, CA, ca_public_key=bytes(other.verify_key))
    with pytest.raises(SignerError):
        sign_user_certificate(SPEC, lambda d: CA.sign(d).signature)
    with pytest.raises(SignerError):
        sign_user_certificate(SPEC, lambda d: CA.sign(d).signature, bytes(CA.verify_key)[:31])


def rsa_line() -> str:
    blob = (
        pack_string("ssh-rsa") + pack_string(b"\x01\x00\x01") + pack_string(b"\x00" + b"\xc3" * 256)
    )
    return "ssh-rsa " + base64.b64encode(blob).decode() + " someone@rsa"


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (rsa_line(), UnsupportedKeyTypeError),
        ("ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=", UnsupportedKeyTypeError),
        ("ssh-ed25519-cert-v01@openssh.com AAAA", UnsupportedKeyTypeError),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI!!!", MalformedKeyError),
        ("ssh-ed25519 " + CA_LINE.split()[1][:42], MalformedKeyError),
        ("ssh-ed25519 " + base64.b64encode(blob_of(CA_LINE)[:-1]).decode(), MalformedKeyError),
        ("ssh-ed25519 " + rsa_line().split()[1], MalformedKeyError),
        ("ssh-ed25519 " + CA_LINE.split()[1] + "AAAA", MalformedKeyError),
        ("ssh-ed25519", MalformedKeyError),
        ("", MalformedKeyError),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA\u00e9", MalformedKeyError),  # was a ValueError
    ],
    # the keys are made by each run (and each xdist worker): ids must not hold them
    ids=["rsa", "ecdsa", "certificate", "not-base64", "bad-padding", "blob-cut", "rsa-blob",
         "blob-trailing", "no-blob", "empty", "not-ascii"],
)
def test_only_well_formed_ed25519_keys_are_certified(line: str, error: type[SshCertError]) -> None:
    with pytest.raises(error):
        parse_ed25519_public_key(line)
    with pytest.raises(error):
        sign_user_certificate(replace(SPEC, public_key_line=line), CA)


@pytest.mark.parametrize(
    "line",
    [
        CLIENT_LINE + "\n",
        CLIENT_LINE + "\r\n",
        CLIENT_LINE + "\r",
        CLIENT_LINE + "\n" + CA_LINE,
        CLIENT_LINE + " comment\n" + CA_LINE,
        CLIENT_LINE + " comment\x00" + CA_LINE,
        CLIENT_LINE + " comment\x00",
        CLIENT_LINE + "\tcomment",
        CLIENT_LINE + " " + CA_LINE,
        CLIENT_LINE + " comment " + CA_LINE.split()[1],
        CLIENT_LINE + " " + CA_LINE.split()[1][:30],
        CLIENT_LINE + " ssh-rsa",
        CLIENT_LINE + " ssh-ed25519-cert-v01@openssh.com",
    ],
    ids=["lf", "crlf", "cr", "two-lines", "comment-then-line", "nul-then-line", "nul",
         "tab", "two-keys", "comment-then-blob", "blob-piece", "rsa-word", "cert-word"],
)
def test_anything_but_exactly_one_key_line_is_refused(line: str) -> None:
    """Splitting on whitespace used to certify the first key of such a line silently."""
    with pytest.raises(MalformedKeyError):
        parse_ed25519_public_key(line)


@pytest.mark.parametrize("comment", ["", " h1@offsite-run", " rsa-key-20240101", " a b c",
                                     " user@host.example ssh key", " jos\u00e9@laptop",
                                     " \u30e6\u30fc\u30b6\u30fc@\u30db\u30b9\u30c8 AAAA\u00e9"])
def test_a_key_line_with_an_ordinary_comment_is_accepted(comment: str) -> None:
    assert parse_ed25519_public_key(CLIENT_LINE.rsplit(" ", 1)[0] + comment) == CLIENT_KEY


def test_the_refusal_of_another_key_type_says_which_keys_are_accepted() -> None:
    with pytest.raises(UnsupportedKeyTypeError, match="only ssh-ed25519 keys are accepted"):
        parse_ed25519_public_key(rsa_line())


@pytest.mark.parametrize(
    "change",
    [
        {"valid_before": 1_700_000_000},
        {"valid_before": 1_699_999_999},
        {"valid_after": -1},
        {"valid_before": 2**64},
        {"valid_after": datetime(2024, 1, 1)},  # naive: which zone would it mean?
        {"serial": -1},
        {"serial": 2**64},
        {"nonce": bytes(15)},
        {"principal": ""},
        {"force_command": ""},
        {"extensions": ("permit-pty", "permit-pty")},
        {"comment": "two\nlines"},
    ],
)
def test_inconsistent_requests_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(CertificateRequestError):
        sign_user_certificate(replace(SPEC, **change), CA)  # type: ignore[arg-type]


def test_fingerprint_refuses_a_blob_of_another_type_than_its_line() -> None:
    with pytest.raises(MalformedKeyError):
        public_key_fingerprint("ssh-rsa " + CA_LINE.split()[1])
