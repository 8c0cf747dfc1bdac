"""The manifest of the sent ciphertext tree: sealing, authenticating and judging a copy (pure,
but for one scrypt derivation, made once for the module)."""

from __future__ import annotations

import base64
import json

import pytest
from offsite_host import manifest
from offsite_host.manifest import DamagedCopyError, Manifest, judge, seal, unseal

SALT = bytes(range(32))
CONF = json.dumps({"ScryptObject": {"Salt": base64.b64encode(SALT).decode(), "N": 65536}})
ENTRIES = {"gocryptfs.conf": ("file", "c0"), "AbC": ("dir", ""), "AbC/xYz": ("file", "a1"),
           "AbC/lnk": ("link", "xYz")}
SEALED = Manifest("web1", "w-20300317T010000Z-ab12", "2030-03-17T01:30:00Z", ENTRIES)


@pytest.fixture(scope="module")
def key() -> bytes:
    return manifest.derive_key(b"correct horse", manifest.gocryptfs_salt(CONF))


def test_the_key_depends_on_password_and_repository_salt(key: bytes) -> None:
    assert len(key) == 32
    assert manifest.derive_key(b"correct horse", SALT) == key
    assert manifest.derive_key(b"correct horsf", SALT) != key
    assert manifest.derive_key(b"correct horse", bytes(32)) != key


@pytest.mark.parametrize("conf", ["{}", "not json", json.dumps({"ScryptObject": {"Salt": "!!"}}),
                                  json.dumps({"ScryptObject": {"Salt": "AAAA"}})])
def test_an_unreadable_salt_is_damage(conf: str) -> None:
    with pytest.raises(DamagedCopyError):
        manifest.gocryptfs_salt(conf)


def test_seal_and_unseal_round_trip(key: bytes) -> None:
    data = seal(SEALED, key)
    assert data.startswith(b"offsite-manifest/1 hmac-sha256=")
    assert unseal(data, key) == SEALED


def test_any_change_to_the_sealed_bytes_fails_authentication(key: bytes) -> None:
    data = seal(SEALED, key)
    head, body = data.split(b"\n", 1)
    tampered = [
        head + b"\n" + body.replace(b'"a1"', b'"a2"'),                 # a hash
        head + b"\n" + body.replace(b"w-20300317", b"w-20300316"),     # the window
        head + b"\n" + body + b" ",                                     # trailing bytes
        head[:-1] + (b"0" if head[-1:] != b"0" else b"1") + b"\n" + body,  # the MAC
        b"offsite-manifest/2" + data[len(b"offsite-manifest/1"):],      # the format
    ]
    for data in tampered:
        with pytest.raises(DamagedCopyError):
            unseal(data, key)
    with pytest.raises(DamagedCopyError, match="fails authentication"):
        unseal(seal(SEALED, key), manifest.derive_key(b"another password", SALT))


def test_a_matching_copy_passes_with_the_reason() -> None:
    verdict = judge(SEALED, dict(ENTRIES), "web1", SEALED.window_id, complete=True)
    assert verdict.problems == () and verdict.notes == ()
    assert "matches its manifest (4 entries" in verdict.reason


@pytest.mark.parametrize(("actual", "why"), [
    ({k: v for k, v in ENTRIES.items() if k != "AbC/xYz"}, "missing: AbC/xYz"),
    ({**ENTRIES, "AbC/extra": ("file", "e5")}, "unexpected: AbC/extra"),
    ({**ENTRIES, "AbC/xYz": ("file", "a2")}, "content: AbC/xYz"),
    ({**ENTRIES, "AbC/lnk": ("link", "other")}, "target: AbC/lnk"),
    ({**ENTRIES, "AbC/xYz": ("dir", "")}, "kind: AbC/xYz"),
])
def test_each_difference_from_the_manifest_is_named(actual: manifest.Entries,
                                                    why: str) -> None:
    verdict = judge(SEALED, actual, "web1", SEALED.window_id, complete=True)
    assert len(verdict.problems) == 1 and why in verdict.problems[0]
    assert "not what the host sent" in verdict.reason


def test_another_hosts_manifest_is_refused() -> None:
    verdict = judge(SEALED, dict(ENTRIES), "db1", SEALED.window_id, complete=True)
    assert verdict.problems == ("the manifest is of host web1, not db1",)


def test_a_complete_point_needs_its_own_windows_manifest() -> None:
    """An older manifest on a complete point: the whole copy was rolled back."""
    verdict = judge(SEALED, dict(ENTRIES), "web1", "w-20300318T010000Z-cd34", complete=True)
    assert "rolled-back" in verdict.problems[0]


def test_an_incomplete_point_may_carry_an_older_tree_and_says_so() -> None:
    verdict = judge(SEALED, dict(ENTRIES), "web1", "w-20300318T010000Z-cd34", complete=False)
    assert verdict.problems == ()
    assert verdict.notes == (f"this incomplete point carries the tree of window "
                             f"{SEALED.window_id}",)


def test_entries_leave_out_modes_and_special_files() -> None:
    inventory = {"a": ("file", 0o600, "h"), "d": ("dir", 0o700, ""), "f": ("special", 0, "4")}
    assert manifest.entries_of(inventory) == {"a": ("file", "h"), "d": ("dir", "")}
