"""The instance's ready/failed signal with the real tools: `ssh-keygen -Y sign` output checked
by chalicelib/sshsig.py (and ours by `ssh-keygen -Y verify`), and boot.sh's own signal step
(`offsite-boot signal ...`: the host key signs, curl posts) accepted by the control plane's
check, against a small HTTP server standing for the API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from chalicelib.boot_signal import NAMESPACE, check_signal, parse_signal_body
from chalicelib.instance.userdata import BOOT_SCRIPT, render_boot_config
from chalicelib.keys import generate_key_material, read_openssh_private_key
from chalicelib.sshcert import ca_public_key_line, parse_ed25519_public_key
from chalicelib.sshsig import SshSigError, sign, verify

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("ssh-keygen", "curl", "bash")),
    reason="needs OpenSSH's ssh-keygen (>= 8.1), curl and bash")

INSTANCE = "i-0123456789abcdef0"
MESSAGE = b"offsite-boot-signal 1\ninstance i-0123456789abcdef0\n"


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)


@pytest.fixture
def host_key(tmp_path: Path) -> Path:
    """The stage's host key as the instance holds it: what offsite-admin init makes."""
    path = tmp_path / "etc" / "ssh_host_key"
    path.parent.mkdir()
    path.touch(mode=0o600)
    path.write_text(generate_key_material("test").host_private_pem)
    return path


def public_line(key_file: Path) -> str:
    result = run(["ssh-keygen", "-y", "-f", str(key_file)])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_ssh_keygen_signatures_verify_and_nothing_else_does(host_key: Path,
                                                            tmp_path: Path) -> None:
    data = tmp_path / "message"
    data.write_bytes(MESSAGE)
    signed = run(["ssh-keygen", "-Y", "sign", "-f", str(host_key), "-n", NAMESPACE, str(data)])
    assert signed.returncode == 0, signed.stderr
    armored = (tmp_path / "message.sig").read_text()
    public = parse_ed25519_public_key(public_line(host_key))
    verify(armored, MESSAGE, NAMESPACE, public)
    with pytest.raises(SshSigError):
        verify(armored, MESSAGE.replace(b"i-0", b"i-1"), NAMESPACE, public)
    with pytest.raises(SshSigError):
        verify(armored, MESSAGE, "file", public)


def test_our_signatures_are_what_ssh_keygen_verifies(host_key: Path, tmp_path: Path) -> None:
    key = read_openssh_private_key(host_key.read_text())
    (tmp_path / "message.sig").write_text(sign(key, MESSAGE, NAMESPACE))
    (tmp_path / "allowed").write_text(f"archive {public_line(host_key)}\n")
    checked = run(["ssh-keygen", "-Y", "verify", "-f", str(tmp_path / "allowed"), "-I",
                   "archive", "-n", NAMESPACE, "-s", str(tmp_path / "message.sig")],
                  input=MESSAGE.decode())
    assert checked.returncode == 0, checked.stderr


class Api:
    """Records each POST; answers with the next of `codes` (then 200)."""

    def __init__(self, codes: list[int]) -> None:
        self.codes = codes
        self.posts: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture
def api() -> Iterator[tuple[Api, str]]:
    recorder = Api([])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            recorder.posts.append((self.path, json.loads(body)))
            code = recorder.codes.pop(0) if recorder.codes else 200
            answer = b'{"error": "try_again"}' if code >= 400 else b"{}"
            self.send_response(code)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def signal(host_key: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`offsite-boot signal ...` with the instance's paths in a temporary directory."""
    etc = host_key.parent
    ca_line = ca_public_key_line(SigningKey.generate())
    (etc / "instance.conf").write_text(render_boot_config(
        [("c", "/dev/sdf")], ca_line, "/offsite/test/host-key", "eu-west-1", api_url=url))
    env = {"PATH": os.environ["PATH"], "OFFSITE_ETC": str(etc),
           "OFFSITE_INSTANCE_ID": INSTANCE, "OFFSITE_SIGNAL_TRIES": "3"}
    return run(["bash", str(BOOT_SCRIPT), *args], env=env)


def accepted(host_key: Path, path: str, body: dict[str, Any], status: str) -> str:
    """What the control plane does with the post: the route's path, then check_signal."""
    assert path == f"/v1/archives/{INSTANCE}/{status}"
    message, armored = parse_signal_body(body)
    now = int(message.split(b"\ntime ")[1].split(b"\n")[0])
    checked = check_signal(message, armored, public_line(host_key), INSTANCE, status, now)
    return checked.reason


def test_boot_sh_says_ready_with_a_signature_the_control_plane_accepts(
        host_key: Path, api: tuple[Api, str]) -> None:
    recorder, url = api
    result = signal(host_key, url, "signal", "ready", "1 volume(s) mounted")
    assert result.returncode == 0, result.stderr
    [(path, body)] = recorder.posts
    assert accepted(host_key, path, body, "ready") == "1 volume(s) mounted"


def test_boot_sh_says_why_its_boot_failed_on_one_line(host_key: Path,
                                                     api: tuple[Api, str]) -> None:
    recorder, url = api
    result = signal(host_key, url, "signal", "failed", "c: /dev/sdf is not attached\nsecond")
    assert result.returncode == 0, result.stderr
    [(path, body)] = recorder.posts
    assert accepted(host_key, path, body, "failed") == "c: /dev/sdf is not attached second"


def test_a_signal_the_api_could_not_take_is_sent_again_with_a_fresh_nonce(
        host_key: Path, api: tuple[Api, str]) -> None:
    recorder, url = api
    recorder.codes = [503]
    result = signal(host_key, url, "signal", "ready", "up")
    assert result.returncode == 0, result.stderr
    assert len(recorder.posts) == 2
    first, second = (parse_signal_body(body)[0] for _, body in recorder.posts)
    assert first.split(b"\nnonce ")[1] != second.split(b"\nnonce ")[1]
    assert accepted(host_key, *recorder.posts[1], "ready") == "up"


def test_a_refused_signal_is_not_sent_again(host_key: Path, api: tuple[Api, str]) -> None:
    recorder, url = api
    recorder.codes = [401]
    result = signal(host_key, url, "signal", "ready", "up")
    assert result.returncode != 0 and "refused the ready signal (401)" in result.stderr
    assert len(recorder.posts) == 1
