"""Who is asking: a host's RFC 9421 signature, checked against its enrolled key, and its nonce
remembered so the same request cannot be played twice."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib.adapters.store import HostStore, NonceStore
from chalicelib.httpsig import SignatureError, SignedRequest, verify_request
from chalicelib.names import HOST_NAME
from chalicelib.sshcert import SshCertError, parse_ed25519_public_key

logger = Logger(service="offsite", child=True)
NONCE_TTL_SECONDS = 900  # longer than the skew window on either side of `created`


def requested_path(request_context: Mapping[str, Any] | None) -> str:
    """The path the client requested, which it signed as `@path`: the Lambda proxy event's
    `requestContext.path`, API Gateway's `$context.path`: "The request path. For example, for
    a non-proxy request URL of https://{rest-api-id}.execute-api.{region}.amazonaws.com/
    {stage}/root/child, the $context.path value is /{stage}/root/child" (API Gateway developer
    guide, REST API `$context` variables: https://docs.aws.amazon.com/apigateway/latest/
    developerguide/api-gateway-mapping-template-reference.html#context-variable-reference).
    Behind a custom domain it is the path on that domain, base path included
    (`/offsite/v1/sessions`). The event's top-level `path` will not do: it drops the stage on
    the default endpoint but keeps a custom domain's base path, so it is neither what chalice
    routes (the resource path) nor what the client sent. Missing, it is "", which no signature
    verifies."""
    return str((request_context or {}).get("path") or "")


class NotAuthenticatedError(Exception):
    """401: the signature was not accepted (which check failed is logged, never answered)."""


class HostNotAllowedError(Exception):
    """403: the key is not enrolled, or its host is revoked."""


class HostAuthenticator:
    def __init__(self, hosts: HostStore, nonces: NonceStore, clock: Callable[[], int]) -> None:
        self._hosts = hosts
        self._nonces = nonces
        self._clock = clock

    def authenticate(self, request: SignedRequest) -> str:
        """The name of the enrolled, enabled host that signed `request`."""
        now = self._clock()
        try:
            verified = verify_request(request, now=now, lookup=self._enabled_key)
        except SignatureError as exc:
            logger.warning("request signature refused", extra={"code": exc.code,
                                                                "reason": exc.reason})
            if exc.code == "unknown_key":
                raise HostNotAllowedError("host not enrolled or revoked") from exc
            raise NotAuthenticatedError("request signature not accepted") from exc
        nonce = verified.nonce or ""
        if not self._nonces.remember_nonce(verified.keyid, nonce, now, now + NONCE_TTL_SECONDS):
            logger.warning("request replayed", extra={"host": verified.keyid})
            raise NotAuthenticatedError("request signature not accepted")
        return verified.keyid

    def _enabled_key(self, keyid: str) -> bytes | None:
        if not HOST_NAME.fullmatch(keyid):
            return None
        host = self._hosts.get_host(keyid)
        if host is None or not host.enabled:
            return None
        try:
            return parse_ed25519_public_key(host.public_key)
        except SshCertError:
            return None
