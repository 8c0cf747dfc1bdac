"""Verifies a host's signed request: HTTP Message Signatures (RFC 9421), `ed25519`.

The host client signs ("@method" "@authority" "@path" "@query" "content-type" "content-digest")
with `created`, `nonce`, `keyid` (the host name) and `alg="ed25519"`; see
`offsite_host.httpsig` for why those. The server requires all six: a signature that covers
fewer is refused, even if it verifies. The verifier is handed the request as the client made it:
`path` is the path requested, with whatever API Gateway puts before the routes (the stage,
`/api/v1/sessions`, or a custom domain's base path, `/offsite/v1/sessions`: host_auth's
`requested_path`), `authority` the `Host` header, `query` the raw query string (empty on
every host route). It parses `Signature-Input` and `Signature` (the RFC 8941 subset they need),
rebuilds the signature base (RFC 9421 section 2.5), checks the policy, the time, the key, the
signature and then `Content-Digest` (RFC 9530) against the body.

Pure: `now` comes in, the key comes from `lookup(keyid)`, and nothing touches AWS. The nonce is
returned, not checked: refusing a replay is the nonce table's conditional put. Every failure is
a `SignatureError` whose `code` and message are for the log only; the API answers a bare 401.
Messages never quote the signature or the header values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from nacl.exceptions import BadSignatureError as _NaclBadSignatureError
from nacl.signing import VerifyKey

ErrorCode = Literal[
    "bad_signature", "unknown_key", "stale_request", "malformed_signature", "digest_mismatch"]
_MALFORMED: Final = "malformed_signature"
_DIGEST: Final = "digest_mismatch"
_STALE: Final = "stale_request"
# Every component the host client signs (offsite_host.httpsig.COVERED_COMPONENTS): a signature
# that leaves one out would let it be changed in transit (another Host, a query added, ...).
REQUIRED_COMPONENTS = frozenset(
    {"@method", "@authority", "@path", "@query", "content-type", "content-digest"})
MAX_SKEW_SECONDS = 300
_HASHES = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
BareItem = int | str | bytes | bool
Params = dict[str, BareItem]
Member = tuple[BareItem | list[tuple[BareItem, Params]], Params]
_PARAM_TYPES: dict[str, type] = {
    "created": int, "expires": int, "nonce": str, "keyid": str, "alg": str, "tag": str}


class SignatureError(Exception):
    """Why a signature was refused. `code` is stable, for logs and metrics; the client is told
    only that the request was not authenticated."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code: ErrorCode = code
        self.reason = reason


@dataclass(frozen=True)
class SignedRequest:
    """A request as the client made it; `path` is the path requested, `query` has no `?`."""

    method: str
    authority: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Policy:
    """What a signature must carry to be accepted; the defaults are the host API's. Only a test
    against the RFC's own examples, which sign neither a nonce nor a body, relaxes them."""

    components: frozenset[str] = REQUIRED_COMPONENTS
    require_nonce: bool = True
    max_skew: int = MAX_SKEW_SECONDS


@dataclass(frozen=True)
class VerifiedSignature:
    """`nonce` is None only under a policy that does not require one."""

    keyid: str
    nonce: str | None
    created: int
    label: str


def content_digest(body: bytes) -> str:
    """The `Content-Digest` field value for `body` (RFC 9530 section 2): `sha-256=:<b64>:`."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def verify_request(
    request: SignedRequest,
    *,
    now: int,
    lookup: Callable[[str], bytes | None],
    policy: Policy = Policy(),
    label: str | None = None,
) -> VerifiedSignature:
    """Check the request's signature; `label=None` means it must carry exactly one.
    `lookup(keyid)` answers the enrolled public key (32 raw bytes), or None."""
    fields = _fields(request.headers)
    label, covered, params, signature = _select(fields, label)
    _check_coverage(covered, policy.components)
    created, nonce, keyid = _check_params(params, policy.require_nonce)
    _check_time(created, params.get("expires"), now, policy.max_skew)
    verify_key = _verify_key(lookup(keyid))
    base = _signature_base(request, fields, covered, params)
    try:
        verify_key.verify(base, signature)
    except _NaclBadSignatureError:
        raise SignatureError("bad_signature", "the signature does not verify") from None
    if "content-digest" in fields:
        _check_digest(fields["content-digest"], request.body)
    return VerifiedSignature(keyid=keyid, nonce=nonce, created=created, label=label)


def _fields(headers: Mapping[str, str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in headers.items():
        key, value = name.lower(), value.strip(" \t")
        fields[key] = f"{fields[key]}, {value}" if key in fields else value
    return fields


def _select(
    fields: Mapping[str, str], label: str | None
) -> tuple[str, list[str], dict[str, BareItem], bytes]:
    if "signature-input" not in fields or "signature" not in fields:
        raise SignatureError(_MALFORMED, "Signature-Input or Signature is missing")
    inputs = _Parser(fields["signature-input"]).dictionary()
    signatures = _Parser(fields["signature"]).dictionary()
    if label is None:
        if len(inputs) != 1:
            raise SignatureError(_MALFORMED, f"expected one signature, got {len(inputs)}")
        label = next(iter(inputs))
    if label not in inputs or label not in signatures:
        raise SignatureError(_MALFORMED, "no signature under the expected label")
    (covered, params), (signature, _) = inputs[label], signatures[label]
    if not isinstance(covered, list) or not isinstance(signature, bytes):
        raise SignatureError(_MALFORMED, "Signature-Input is not a list or Signature not bytes")
    if len(signature) != 64:
        raise SignatureError("bad_signature", "an ed25519 signature is 64 bytes")
    names = [name for name, item_params in covered if type(name) is str and not item_params]
    if len(names) != len(covered) or len(set(names)) != len(names):
        raise SignatureError(_MALFORMED, "components must be distinct, unparameterised strings")
    return label, names, params, signature


def _check_coverage(covered: list[str], required: Collection[str]) -> None:
    missing = sorted(set(required) - set(covered))
    if missing:
        raise SignatureError(_MALFORMED, f"the signature does not cover {', '.join(missing)}")


def _check_params(
    params: Mapping[str, BareItem], require_nonce: bool
) -> tuple[int, str | None, str]:
    """`created`, `nonce` and `keyid`, once every parameter is known and well typed."""
    for name, value in params.items():
        if name not in _PARAM_TYPES or type(value) is not _PARAM_TYPES[name]:
            raise SignatureError(_MALFORMED, f"parameter {name!r} is unknown or mistyped")
    if params.get("alg", "ed25519") != "ed25519":
        raise SignatureError(_MALFORMED, "the signature algorithm is not ed25519")
    created, nonce, keyid = params.get("created"), params.get("nonce"), params.get("keyid")
    if not isinstance(created, int) or not isinstance(keyid, str) or not keyid:
        raise SignatureError(_MALFORMED, "created or keyid is missing")
    if nonce == "" or (require_nonce and nonce is None):
        raise SignatureError(_MALFORMED, "the nonce is missing")
    return created, nonce if isinstance(nonce, str) else None, keyid


def _check_time(created: int, expires: object, now: int, max_skew: int) -> None:
    if abs(now - created) > max_skew:
        raise SignatureError(_STALE, f"created is {now - created} s off (max {max_skew} s)")
    if isinstance(expires, int) and expires < now - max_skew:
        raise SignatureError(_STALE, "the signature has expired")


def _verify_key(public_key: bytes | None) -> VerifyKey:
    if public_key is None:
        raise SignatureError("unknown_key", "no enrolled key for this keyid")
    if len(public_key) != 32:
        raise SignatureError("unknown_key", "the enrolled key is not a 32-byte Ed25519 public key")
    return VerifyKey(public_key)


def _signature_base(request: SignedRequest, fields: Mapping[str, str], covered: list[str],
                    params: Mapping[str, BareItem]) -> bytes:
    derived = {"@method": request.method, "@authority": request.authority.lower(),
               "@path": request.path or "/", "@query": f"?{request.query}"}
    lines = []
    for name in covered:
        value = derived.get(name) if name.startswith("@") else fields.get(name)
        if value is None or name != name.lower() or "\n" in value or "\r" in value:
            raise SignatureError(_MALFORMED, f"cannot rebuild covered component {name!r}")
        lines.append(f"{_ser(name)}: {value}")
    items = " ".join(_ser(name) for name in covered)
    lines.append(f'"@signature-params": ({items})'
                 + "".join(f";{key}={_ser(value)}" for key, value in params.items()))
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise SignatureError(_MALFORMED, "the signature base is not ASCII") from None


def _check_digest(field: str, body: bytes) -> None:
    try:
        digests = _Parser(field).dictionary()
    except SignatureError:
        raise SignatureError(_DIGEST, "Content-Digest is not a dictionary") from None
    known = [(alg, value) for alg, (value, _) in digests.items() if alg in _HASHES]
    if not known:
        raise SignatureError(_DIGEST, "Content-Digest has no sha-256 or sha-512 member")
    for alg, value in known:
        actual = _HASHES[alg](body).digest()
        if not isinstance(value, bytes) or not hmac.compare_digest(value, actual):
            raise SignatureError(_DIGEST, f"the {alg} digest does not match the body")


def _ser(value: BareItem) -> str:
    """Serialize a String or Integer (RFC 8941 sections 4.1.4 and 4.1.6)."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


class _Token(str):
    """An RFC 8941 Token, kept apart from a String so `alg=ed25519` is not `alg="ed25519"`."""


_KEY = re.compile(r"[a-z*][a-z0-9_.*-]*")
_SPACES = re.compile(r" *")
_ITEM_END = re.compile(r" +|(?=\))")
_COMMA = re.compile(r"[ \t]*,[ \t]*(?=\S)")
_BARE = re.compile(
    r'(?P<int>-?[0-9]{1,15}(?![0-9.]))|"(?P<str>(?:[ !#-\[\]-~]|\\[\\"])*)"'
    r"|:(?P<bytes>[A-Za-z0-9+/=]*):|\?(?P<bool>[01])"
    r"|(?P<token>[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*)")


class _Parser:
    """The RFC 8941 subset signatures use: a Dictionary of Items and Inner Lists (no Decimals).
    Stricter than the RFC in one way: a repeated dictionary key is refused, not overwritten."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text.strip(" "), 0

    def dictionary(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        while self.pos < len(self.text):
            if members:
                self._match(_COMMA)
            key = self._match(_KEY).group()
            if key in members:
                raise SignatureError(_MALFORMED, "a dictionary key is repeated")
            value: BareItem | list[tuple[BareItem, Params]] = True
            if self._eat("="):
                value = self._inner_list() if self._eat("(") else self._bare_item()
            members[key] = (value, self._params())
        return members

    def _inner_list(self) -> list[tuple[BareItem, Params]]:
        items: list[tuple[BareItem, Params]] = []
        self._match(_SPACES)
        while not self._eat(")"):
            items.append((self._bare_item(), self._params()))
            self._match(_ITEM_END)
        return items

    def _params(self) -> Params:
        params: Params = {}
        while self._eat(";"):
            self._match(_SPACES)
            key = self._match(_KEY).group()
            params[key] = self._bare_item() if self._eat("=") else True
        return params

    def _bare_item(self) -> BareItem:
        match = self._match(_BARE)
        if match["int"] is not None:
            return int(match["int"])
        if match["str"] is not None:
            return re.sub(r"\\(.)", r"\1", match["str"])
        if match["bool"] is not None:
            return match["bool"] == "1"
        if match["token"] is not None:
            return _Token(match["token"])
        try:
            return base64.b64decode(match["bytes"], validate=True)
        except binascii.Error:
            raise SignatureError(_MALFORMED, "bad base64 in a byte sequence") from None

    def _match(self, pattern: re.Pattern[str]) -> re.Match[str]:
        match = pattern.match(self.text, self.pos)
        if match is None:
            raise SignatureError(_MALFORMED, f"unexpected input at offset {self.pos}")
        self.pos = match.end()
        return match

    def _eat(self, char: str) -> bool:
        matched = self.text.startswith(char, self.pos)
        self.pos += matched
        return matched
