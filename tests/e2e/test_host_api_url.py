"""On the local stack (chalice serving app.py as API Gateway would): a host whose api_url has
a wrong path is told the URL is wrong, not that it is "unknown or revoked"; with the right URL
an unknown host still gets the API's own refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
from nacl.signing import SigningKey
from offsite_host.api import ApiClient, WrongApiError
from offsite_host.exitcodes import ConfigError
from offsite_host.session import open_session

from local.stack import LocalStack


def ask(url: str) -> None:
    client = ApiClient(url, "never-enrolled", SigningKey.generate())

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"retried ({seconds} s) where it should have failed at once")

    open_session(client, "ssh-ed25519 AAAA x", 600, lambda _: None, sleep=no_sleep)


def test_a_wrong_path_is_a_wrong_url_and_the_right_one_reaches_the_api(tmp_path: Path) -> None:
    with LocalStack(tmp_path / "stack", log=lambda line: None) as stack:
        with pytest.raises(WrongApiError, match=r"the URL is wrong: .* has no such path"):
            ask(stack.api_url + "/prod")  # a stage this API does not have
        with pytest.raises(ConfigError, match="HTTP 403"):
            ask(stack.api_url)  # Offsite's own answer: this host is not enrolled
