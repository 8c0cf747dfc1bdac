"""The admin API over HTTPS, each request signed with SigV4 (service `execute-api`) by the
admin's own credentials, as API Gateway's IAM authorizer expects. The local stack's server
ignores the signature, so the same client works against it."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

EXECUTE_API_REGION = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com")
TIMEOUT_S = 60


class ApiError(Exception):
    """The API's own refusal: `{"error": code, "message": text}` with its HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.status = status
        self.code = code
        self.message = message


class ApiUnreachableError(Exception):
    pass


def region_of(api_url: str, fallback: str) -> str:
    """The region SigV4 signs for: the one in an execute-api host name, else `fallback`."""
    found = EXECUTE_API_REGION.search(urllib.parse.urlsplit(api_url).netloc)
    return found.group(1) if found else fallback


def api_error(status: int, body: bytes) -> ApiError:
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "error" in payload:
        return ApiError(status, str(payload["error"]), str(payload.get("message", "")))
    if isinstance(payload, dict) and "message" in payload:  # API Gateway's own, e.g. 403
        return ApiError(status, f"http_{status}", str(payload["message"]))
    return ApiError(status, f"http_{status}", body[:200].decode("utf-8", "replace").strip())


@dataclass(frozen=True)
class AdminApi:
    base_url: str
    credentials: Credentials | None
    region: str

    def url(self, path: str, query: dict[str, str] | None = None) -> str:
        url = self.base_url.rstrip("/") + path
        return f"{url}?{urllib.parse.urlencode(query)}" if query else url

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, str] | None = None) -> urllib.request.Request:
        """The HTTP request, SigV4-signed when there are credentials."""
        data = None if body is None else json.dumps(body).encode()
        request = AWSRequest(method=method, url=self.url(path, query), data=data,
                             headers={"Content-Type": "application/json",
                                      "Accept": "application/json"})
        if self.credentials is not None:
            SigV4Auth(self.credentials, "execute-api", self.region).add_auth(request)
        prepared = request.prepare()
        return urllib.request.Request(  # noqa: S310 (the admin's own API URL)
            prepared.url, data=data, method=method, headers=dict(prepared.headers.items()))

    def call(self, method: str, path: str, body: Any = None,
             query: dict[str, str] | None = None) -> Any:
        outgoing = self.request(method, path, body, query)
        try:
            with urllib.request.urlopen(outgoing, timeout=TIMEOUT_S) as answer:  # noqa: S310
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            raise api_error(error.code, error.read()) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ApiUnreachableError(f"cannot reach the API at {self.base_url}: {reason}") \
                from None
