"""Signs a host's request to the control plane: HTTP Message Signatures (RFC 9421), `ed25519`.

The body is bound by `Content-Digest` (RFC 9530, sha-256). The signature covers

    ("@method" "@authority" "@path" "@query" "content-type" "content-digest")

with the parameters `created`, `nonce`, `keyid` (the host name) and `alg="ed25519"`. These are
the components the Lambda behind API Gateway can rebuild byte for byte: the method, the `Host`
header, the path requested, the query string (always empty on the host routes, so `@query` is
the bare `?` and a query added in transit breaks the signature), and two fields it receives
untouched. `@target-uri` and `content-length` are left out: the scheme does not reach the
Lambda, and a proxy may re-frame the body.

`@path` is the path of the URL requested, as RFC 9421 section 2.2.6 defines it, whatever API
Gateway puts in front of the routes: the stage of the default endpoint
(`https://<api>.execute-api.<region>.amazonaws.com/api/v1/sessions`) or the base path of a
custom domain's mapping (`https://backup.example.com/offsite/v1/sessions`). The Lambda reads
that path from the event's `requestContext.path` (chalicelib/httpsig.py says why not `path`).
`@authority` is the URL's host, lowercase, without a default port.

Time and randomness come in as arguments (`created=int(time.time())`,
`nonce=secrets.token_urlsafe(16)`), so the function is pure and a test can pin its output.
Standard library and pynacl only: this runs on every host, Python >= 3.10.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING
from urllib.parse import SplitResult, urlsplit

if TYPE_CHECKING:
    from nacl.signing import SigningKey

COVERED_COMPONENTS = ("@method", "@authority", "@path", "@query", "content-type", "content-digest")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_LABEL = re.compile(r"[a-z*][a-z0-9_.*-]*")


def content_digest(body: bytes) -> str:
    """The `Content-Digest` field value for `body` (RFC 9530 section 2): `sha-256=:<b64>:`."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def sign_request(
    method: str,
    url: str,
    body: bytes,
    key: SigningKey,
    keyid: str,
    created: int,
    nonce: str,
    *,
    content_type: str = "application/json",
    label: str = "offsite",
) -> dict[str, str]:
    """The headers to add to the request: `Content-Type`, `Content-Digest`, `Signature-Input`
    and `Signature` (RFC 9421 sections 3.1 and 4). `url` is the URL actually requested."""
    parts = urlsplit(url)
    fields = {"content-type": _field_value(content_type), "content-digest": content_digest(body)}
    values = {
        "@method": method.upper(),
        "@authority": authority(parts),
        "@path": parts.path or "/",
        "@query": f"?{parts.query}",
        **fields,
    }
    params = signature_params(COVERED_COMPONENTS, created=created, nonce=nonce, keyid=keyid)
    signature = key.sign(signature_base(values, params)).signature
    return {
        "Content-Type": fields["content-type"],
        "Content-Digest": fields["content-digest"],
        "Signature-Input": f"{_check_label(label)}={params}",
        "Signature": f"{label}=:{base64.b64encode(signature).decode('ascii')}:",
    }


def authority(parts: SplitResult) -> str:
    """`@authority` (RFC 9421 section 2.2.3): host[:port], lowercase, default port omitted."""
    host = parts.netloc.rpartition("@")[2].lower()
    default_port = _DEFAULT_PORTS.get(parts.scheme.lower(), "")
    if default_port and host.endswith(default_port):
        host = host[: -len(default_port)]
    if not host:
        raise ValueError("the request URL has no host")
    return host


def signature_params(covered: tuple[str, ...], *, created: int, nonce: str, keyid: str) -> str:
    """The serialized `@signature-params` inner list (RFC 9421 section 2.3, RFC 8941 3.1.1)."""
    if not nonce:
        raise ValueError("the nonce must not be empty")
    items = " ".join(_sf_string(name) for name in covered)
    return (f"({items});created={created:d};nonce={_sf_string(nonce)}"
            f";keyid={_sf_string(keyid)};alg=\"ed25519\"")


def signature_base(values: dict[str, str], params: str) -> bytes:
    """The signature base (RFC 9421 section 2.5), one `"name": value` line per component."""
    lines = [f"{_sf_string(name)}: {value}" for name, value in values.items()]
    lines.append(f'"@signature-params": {params}')
    return "\n".join(lines).encode("ascii")


def _sf_string(value: str) -> str:
    """An RFC 8941 section 3.3.3 String: printable ASCII, `"` and `\\` escaped."""
    if not all(" " <= char <= "~" for char in value):
        raise ValueError("a signature parameter must be printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _field_value(value: str) -> str:
    stripped = value.strip(" \t")
    if not stripped or not all(" " <= char <= "~" for char in stripped):
        raise ValueError("a covered field must be non-empty printable ASCII")
    return stripped


def _check_label(label: str) -> str:
    if not _LABEL.fullmatch(label):
        raise ValueError("a signature label must be a structured-field key (RFC 8941 3.2)")
    return label
