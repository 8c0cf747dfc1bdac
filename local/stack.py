"""The embedded local stack: AWS on moto, app.py's API over HTTP and its handlers behind a
local event bus, each archive instance of a window's fleet as a real sshd of its own.
`with LocalStack(...) as stack:` starts everything from nothing and leaves nothing running
when the block ends, failure or not.

Time is compressed by configuration only (the window's length, the instance's boot time, the
reconciler's rate, Retry-After), never by code paths of its own.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import boto3
from chalice.config import Config
from chalice.local import (
    ChaliceRequestHandler,
    CustomLocalChalice,
    HTTPServerThread,
    LocalChalice,
    LocalDevServer,
)

import app as app_module
from local import events
from local.aws import Deployment, MotoServer, ReservedPort, aws_client, provision
from local.bus import FleetBus
from local.fleet import Fleet

TERMINAL = ("CLOSED", "FAILED")
INSTANCE_ROOT = Path("/var/lib/offsite-local")


@dataclass(frozen=True)
class StackSettings:
    window_hours: float = 0.05
    boot_seconds: float = 2.0
    reconcile_seconds: float = 5.0
    retry_after: int = 2
    retention_days: int = 20
    restore_hours: float = 0.05
    hosts_per_archive: int = 20


class StackError(RuntimeError):
    pass


class LocalStack:
    def __init__(self, root: Path, settings: StackSettings = StackSettings(),
                 log: Callable[[str], None] = print,
                 initialise: Callable[[str], None] | None = None) -> None:
        """`initialise(endpoint)`, if given, runs against the fresh moto server before the
        rest is provisioned (e.g. `offsite-admin init --stage local`): it makes the table and
        the keys, which the stack then uses."""
        self.root = root
        self.initialise = initialise
        self.settings = settings
        self.log = log
        self._exit = ExitStack()
        self._ports = [ReservedPort() for _ in range(3)]  # held until the stack ends
        for reserved in self._ports:
            self._exit.callback(reserved.close)  # after the servers: registered first
        self.ssh_port, self.api_port, self._moto_port = (p.port for p in self._ports)
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self._saved_env = dict(os.environ)
        self.deployment: Deployment | None = None
        self.fleet: Fleet | None = None
        self.bus: FleetBus | None = None
        self.instance_root: Path | None = None  # under INSTANCE_ROOT, this stack's own

    def __enter__(self) -> LocalStack:
        try:
            self._start()
        except BaseException:
            self._exit.close()
            self._restore_env()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        try:
            self._exit.close()
        finally:
            self._restore_env()

    # starting --------------------------------------------------------------------------------
    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
        warnings.filterwarnings("ignore", "IAMAuthorizer is not a supported in local mode")
        moto = MotoServer(self._moto_port)
        moto.start()
        self._exit.callback(moto.stop)
        if self.initialise is not None:
            self.initialise(moto.endpoint)
        self.deployment = provision(moto.endpoint, initialised=self.initialise is not None)
        os.environ.update(self.deployment.app_environment())
        os.environ.update({
            "SSH_PORT": str(self.ssh_port),
            "RRSYNC": shutil.which("rrsync") or "",
            "WINDOW_HOURS": str(self.settings.window_hours),
            "RETENTION_DAYS": str(self.settings.retention_days),
            "SESSION_RETRY_AFTER": str(self.settings.retry_after),
            "HOSTS_PER_ARCHIVE": str(self.settings.hosts_per_archive),
            "RESTORE_HOURS": str(self.settings.restore_hours),
            "BOOT_TIMEOUT_MINUTES": "5", "STOP_GRACE_MINUTES": "1",
            # where the archives say they are ready (boot.sh's signal step, run by the fleet)
            "API_URL": self.api_url})
        _clear_app_caches()
        self._exit.callback(_clear_app_caches)
        # The instances' files live where their accounts can reach them whatever self.root's
        # parents allow (sshd reads principals files, and rrsync runs, as the host's account).
        INSTANCE_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        instance_root = Path(tempfile.mkdtemp(prefix="fleet-", dir=INSTANCE_ROOT))
        instance_root.chmod(0o755)  # mkdtemp makes it 0700: sshd reads in it as the account
        self.instance_root = instance_root
        self._exit.callback(shutil.rmtree, instance_root, ignore_errors=True)
        self.fleet = Fleet.create(instance_root, aws_client("ec2", moto.endpoint), self.ssh_port,
                                  self.deployment.keys, self.settings.boot_seconds, self.log,
                                  log_dir=self.root)
        self._exit.callback(self.fleet.close)  # after the bus has stopped: registered first
        # Snapshots are copied when the app asks for them (Fleet.snapshot_requested): the
        # app's clients come from boto3's default session, made after this (caches cleared).
        emitter = boto3._get_default_session().events
        hook = f"offsite-local-{self.fleet.accounts.stack_id}"
        emitter.register("after-call.ec2.CreateSnapshot", self.fleet.snapshot_requested,
                        unique_id=hook)
        self._exit.callback(emitter.unregister, "after-call.ec2.CreateSnapshot", unique_id=hook)
        # Its own accounts (<stack id>-<host>): another stack's hosts may bear the same names.
        os.environ["ACCOUNT_PREFIX"] = self.fleet.accounts.prefix
        os.environ["MOUNT_ROOT"] = str(self.fleet.settings.mount_root)
        os.environ["RESTORE_ROOT"] = str(self.fleet.settings.restore_root)
        self._start_api()
        self.bus = FleetBus(self._clients(), self.fleet, self.settings.reconcile_seconds,
                            self.log)
        self.bus.start()
        self._exit.callback(self.bus.stop)
        self.log(f"local stack {self.fleet.accounts.stack_id}: AWS on {moto.endpoint}, API on "
                 f"{self.api_url}, archives' sshd on port {self.ssh_port} of their own "
                 "loopback addresses")

    def _start_api(self) -> None:
        config = Config.create(chalice_stage="local", app_name="offsite", lambda_timeout=900,
                               lambda_memory_size=512)
        log = self.log

        class Handler(ChaliceRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log("api: " + format % args)

        # What chalice.local.create_local_server does, with our request log.
        if not isinstance(app_module.app, LocalChalice):
            CustomLocalChalice.__bases__ = (LocalChalice, app_module.app.__class__)
            app_module.app.__class__ = CustomLocalChalice
        server = HTTPServerThread(lambda: LocalDevServer(
            app_module.app, config, "127.0.0.1", self.api_port, handler_cls=Handler))
        server.start()
        self._exit.callback(server.shutdown)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{self.api_url}/v1/hosts", timeout=2)  # noqa: S310
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        raise StackError("the local API did not start")

    def _clients(self) -> dict[str, Any]:
        assert self.deployment is not None
        return {name: aws_client(name, self.deployment.endpoint)
                for name in ("ec2", "scheduler", "dynamodb")}

    def _restore_env(self) -> None:
        os.environ.clear()
        os.environ.update(self._saved_env)

    # what an admin and EventBridge do --------------------------------------------------------
    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """An admin API call (IAM is not emulated: loopback only)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (our own loopback API)
            f"{self.api_url}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def enrol(self, host: str, public_key: str) -> dict[str, Any]:
        status, body = self.admin("PUT", f"/v1/hosts/{host}", {"public_key": public_key})
        if status not in (200, 201):
            raise StackError(f"enrolling {host}: {status} {body}")
        return dict(body)

    def fire_open_schedule(self) -> dict[str, Any]:
        """What EventBridge does at the daily schedule's time."""
        assert self.bus is not None
        self.bus.invoke("scheduled_open", events.scheduled("offsite-local-scheduled_open"))
        _, windows = self.admin("GET", "/v1/windows")
        return dict(windows["windows"][0])

    def snapshots(self, host: str) -> list[dict[str, Any]]:
        """The host's recovery points, newest first (`GET /v1/snapshots?host=`)."""
        status, body = self.admin("GET", f"/v1/snapshots?host={host}")
        if status != 200:
            raise StackError(f"snapshots of {host}: {status} {body}")
        return list(body["snapshots"])

    def restore(self, host: str, **request: Any) -> tuple[int, Any]:
        """An admin's restore (`POST /v1/restores`): day= or snapshot_id=, allow_incomplete=."""
        return self.admin("POST", "/v1/restores", {"host": host, **request})

    def window(self, window_id: str) -> dict[str, Any]:
        status, body = self.admin("GET", f"/v1/windows/{window_id}")
        if status != 200:
            raise StackError(f"window {window_id}: {status} {body}")
        return dict(body)

    def wait_for(self, window_id: str, states: tuple[str, ...] = TERMINAL,
                 timeout: float = 600) -> dict[str, Any]:
        limit = time.monotonic() + timeout
        while time.monotonic() < limit:
            window = self.window(window_id)
            if window["state"] in states:
                return window
            time.sleep(0.2)
        raise StackError(f"window {window_id} still {window['state']} after {timeout:.0f} s")


    def leftovers(self) -> list[str]:
        """What this stack made on the machine and has not removed: empty once it has ended
        cleanly (processes, mounts, ports, accounts, group, instance files)."""
        accounts = self.fleet.accounts if self.fleet else None
        named = [entry.pw_name for entry in pwd.getpwall()
                 if accounts and entry.pw_name.startswith(accounts.prefix)]
        return leftovers(self.root, [reserved.port for reserved in self._ports],
                         self.instance_root, named, accounts.group if accounts else None)


@contextmanager
def output_to_log(path: Path) -> Iterator[tuple[TextIO, TextIO]]:
    """The control plane's JSON logs and metrics (stdout, and the offsite logger) go to `path`
    while the block runs; yields the terminal's stdout, for what the user reads, and the log."""
    out = sys.stdout
    with path.open("a") as log:
        sys.stdout = log
        for handler in logging.getLogger("offsite").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(log)
        try:
            yield out, log
        finally:
            sys.stdout = out


def leftovers(root: Path, ports: list[int], instance: Path | None,
              accounts: list[str] | None = None, group: str | None = None) -> list[str]:
    """What a stack (work files in `root`, instance files in `instance`) left behind."""
    found = [f"instance files {instance}"] if instance and instance.exists() else []
    processes = subprocess.run(["pgrep", "-af", f"{root}|{instance}"], capture_output=True,
                               text=True, check=False).stdout.strip()
    if processes:
        found.append(f"processes: {processes}")
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if str(root) in line]
    found += [f"mount: {m}" for m in mounts]
    for port in ports:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                found.append(f"port {port} still listening")
    for account in accounts or []:
        if subprocess.run(["id", account], capture_output=True, check=False).returncode == 0:
            found.append(f"account {account}")
    if group and subprocess.run(["getent", "group", group], capture_output=True,
                                check=False).returncode == 0:
        found.append(f"group {group}")
    return found


def _clear_app_caches() -> None:
    app_module.reset_caches()
