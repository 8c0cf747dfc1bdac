"""What a host's session costs the control plane: `python -m bench.sessions [--quick]`.

1. Sessions in process: the whole of one `POST /v1/sessions` but HTTP, one at a time. The
   signature checked by `HostAuthenticator.authenticate` (RFC 9421), with the host lookup and the
   nonce's conditional put going to DynamoDB on a moto server on loopback, then
   `SessionService.issue` as app.py builds it (the CA key read through powertools' SSM cache).
   Each stage is timed inside the path and alone, beside a bare GetItem on the same server and
   the client's `sign_request`.
2. Cold import of app.py (`python -X importtime`, a fresh interpreter each time) beside boto3's.
3. The Lambda deployment package that `chalice package` builds (it fetches manylinux wheels from
   PyPI), beside the same distributions installed in the venv, and app.py imported from the
   unpacked zip without a bytecode cache, as a Lambda cold start does.

bench/README.md ("sessions") says how to read the figures.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import io
import json
import math
import os
import platform
import re
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import partial
from importlib import metadata
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from nacl.signing import SigningKey

# mypy cannot follow setuptools' editable-install finder to offsite_host; checked with
# `mypy bench/sessions.py host_client/offsite_host`, where the ignore goes unused.
from offsite_host.httpsig import sign_request  # type: ignore[import-not-found, unused-ignore]

import app as app_module
from bench.moto_app import REPO, BenchError, fake_aws_env, moto_server, quiet_output, scoped_env
from chalicelib import composition
from chalicelib.adapters.dynamo_store import DynamoStore, create_table
from chalicelib.host_auth import NONCE_TTL_SECONDS, HostAuthenticator
from chalicelib.httpsig import SignedRequest, verify_request
from chalicelib.keys import KeyMaterial, KeyParameters, generate_key_material
from chalicelib.payloads import parse_json_object
from chalicelib.records import Host
from chalicelib.sessions import SessionService, parse_session_request
from chalicelib.sshcert import CertificateSpec, ca_public_key_line, sign_user_certificate
from chalicelib.window import Shard, State, Window

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ssm import SSMClient

HOSTS = ("c", "h", "o", "l")
API, AUTHORITY, PATH = "https://api.offsite.test", "api.offsite.test", "/v1/sessions"
TABLE, KEY_PREFIX, WINDOW_ID = "offsite-bench", "/offsite/bench", "w-20261129T020000Z-bench"
APP_ENV = {"TABLE_NAME": TABLE, "KEY_PARAMETER_PREFIX": KEY_PREFIX,
           "TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:offsite",
           "DEADLINE_TARGET_ARN": "arn:aws:lambda:us-east-1:123456789012:function:deadline",
           "SCHEDULER_ROLE_ARN": "arn:aws:iam::123456789012:role/offsite-scheduler",
           "POWERTOOLS_SERVICE_NAME": "offsite", "POWERTOOLS_METRICS_NAMESPACE": "Offsite"}
AWS_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6})  # app.py's
VERIFY, HOST_LOOKUP, NONCE_PUT = "verify", "host lookup", "nonce put"
WINDOW_READ, CERTIFICATE = "window read", "certificate"
STAGES = (VERIFY, HOST_LOOKUP, NONCE_PUT, WINDOW_READ, CERTIFICATE)
STORE_STAGES = (HOST_LOOKUP, NONCE_PUT, WINDOW_READ)
GET_ITEM, SIGN = "bare GetItem", "sign_request"
WARM_UP = 3


# 1. sessions in process ---------------------------------------------------------------------
class TimedStore(DynamoStore):
    """The DynamoDB store, adding the time spent in each call a session makes to `spent`.

    moto answers a Query by scanning the whole table, where DynamoDB reads one partition, so
    the nonces a run leaves would slow the window read down session after session: `forget`
    deletes them (untimed) to keep the table at its provisioned size."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        super().__init__(client, table_name)
        self.spent = dict.fromkeys(STORE_STAGES, 0.0)
        self.nonces: list[tuple[str, str]] = []

    def take(self) -> dict[str, float]:
        spent, self.spent = self.spent, dict.fromkeys(STORE_STAGES, 0.0)
        return spent

    def forget_nonces(self) -> None:
        for keyid, nonce in self.nonces:
            self._db.delete_item(TableName=self._table,
                                 Key={"pk": {"S": f"NONCE#{keyid}#{nonce}"}, "sk": {"S": "NONCE"}})
        self.nonces.clear()

    @contextmanager
    def _timing(self, stage: str) -> Iterator[None]:
        start = perf_counter()
        try:
            yield
        finally:
            self.spent[stage] += perf_counter() - start

    def get_host(self, name: str) -> Host | None:
        with self._timing(HOST_LOOKUP):
            return super().get_host(name)

    def remember_nonce(self, keyid: str, nonce: str, now: int, expires_at: int) -> bool:
        self.nonces.append((keyid, nonce))
        with self._timing(NONCE_PUT):
            return super().remember_nonce(keyid, nonce, now, expires_at)

    def active_window_id(self, guard: str = "BACKUP") -> str | None:
        with self._timing(WINDOW_READ):
            return super().active_window_id(guard)

    def get_window(self, window_id: str) -> Window | None:
        with self._timing(WINDOW_READ):
            return super().get_window(window_id)


@dataclass
class SessionRig:
    client: DynamoDBClient
    store: TimedStore
    authenticator: HostAuthenticator
    service: SessionService
    keys: dict[str, SigningKey]


@dataclass(frozen=True)
class SessionFigures:
    """Seconds per call. `stages` split each session's latency exactly: verify is the time in
    `authenticate` outside the store, certificate the time in `issue` outside the store."""

    latencies: tuple[float, ...]
    stages: Mapping[str, tuple[float, ...]]
    alone: Mapping[str, tuple[float, ...]]
    first_session: float
    serials: tuple[int, ...]
    windows: frozenset[str]

    @property
    def per_second(self) -> float:
        return len(self.latencies) / sum(self.latencies)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest sample at or above q percent of them."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def certificate_serial(line: str) -> int:
    """The serial of an `ssh-ed25519-cert-v01@openssh.com` line (PROTOCOL.certkeys: it follows
    the type name, the nonce and the 32-byte key, each an RFC 4251 `string`)."""
    blob, offset = base64.b64decode(line.split()[1]), 0
    for _ in range(3):
        (length,) = struct.unpack_from(">I", blob, offset)
        offset += 4 + length
    return int(struct.unpack_from(">Q", blob, offset)[0])


def signed_session(key: SigningKey, host: str) -> tuple[bytes, SignedRequest]:
    """A host's `POST /v1/sessions` for a fresh ephemeral key, signed as offsite-host signs it,
    as the application sees it (app.py's `_signer`)."""
    body = json.dumps({"host": host, "ssh_public_key": ca_public_key_line(SigningKey.generate()),
                       "purpose": "backup"}).encode()
    headers = sign_request("POST", API + PATH, body, key, keyid=host, created=int(time.time()),
                           nonce=secrets.token_urlsafe(16))
    return body, SignedRequest(method="POST", authority=AUTHORITY, path=PATH, query="",
                               headers={"host": AUTHORITY, **{k.lower(): v for k, v in
                                                              headers.items()}}, body=body)


def put_key_material(ssm: SSMClient, material: KeyMaterial) -> None:
    names = KeyParameters(KEY_PREFIX)
    for name, value, kind in material.parameters(names):
        ssm.put_parameter(Name=name, Value=value, Type=kind, Overwrite=True)


def provision(endpoint: str) -> SessionRig:
    """The table, the key material, four enrolled hosts and an open window expecting them; then
    app.py's session service and authenticator, on a store that times its calls."""
    client = boto3.client("dynamodb", config=AWS_CONFIG)
    ssm = boto3.client("ssm", config=AWS_CONFIG)
    if {client.meta.endpoint_url, ssm.meta.endpoint_url} != {endpoint}:
        raise BenchError("boto3 would not call the moto server only")
    create_table(client, TABLE)
    put_key_material(ssm, generate_key_material("offsite-bench"))
    store, now = TimedStore(client, TABLE), datetime.now(timezone.utc)
    keys = {host: SigningKey.generate() for host in HOSTS}
    for host, key in keys.items():
        store.put_host(Host(host, ca_public_key_line(key), True, now))
    shard = Shard("s01", frozenset(HOSTS), State.OPENING, now, entered={"OPENING": now})
    store.create_window(Window(WINDOW_ID, State.OPENING, now, now + timedelta(hours=3.6),
                               frozenset(HOSTS), "bench", now, shards={"s01": shard},
                               entered={"OPENING": now}))
    store.transition_shard(WINDOW_ID, "s01", State.OPENING, State.OPEN,
                           "bench: instance running", now, address="203.0.113.10")
    store.transition(WINDOW_ID, State.OPENING, State.OPEN, "bench: its one archive is open", now)
    service = dataclasses.replace(composition.session_service(), store=store)
    return SessionRig(client, store, HostAuthenticator(store, store, lambda: int(time.time())),
                      service, keys)


def one_session(rig: SessionRig, i: int) -> tuple[float, dict[str, float], dict[str, object]]:
    """Session i's latency, its stages and the grant; the client's signing is not timed."""
    host = HOSTS[i % len(HOSTS)]
    body, request = signed_session(rig.keys[host], host)
    rig.store.take()
    start = perf_counter()
    signer = rig.authenticator.authenticate(request)
    authenticated = perf_counter()
    grant = rig.service.issue(signer, parse_session_request(parse_json_object(body)),
                              f"bench-{i}")
    end = perf_counter()
    spent = rig.store.take()
    stages = {VERIFY: authenticated - start - spent[HOST_LOOKUP] - spent[NONCE_PUT],
              CERTIFICATE: end - authenticated - spent[WINDOW_READ], **spent}
    return end - start, stages, grant


Probe = Callable[[int], Callable[[], object]]
"""Given i, makes its arguments (untimed) and answers the call to time."""


def time_probes(i: int, probes: Mapping[str, Probe], samples: Mapping[str, list[float]]) -> None:
    """Add the seconds of each probe's call i to its samples."""
    for name, probe in probes.items():
        call = probe(i)
        start = perf_counter()
        call()
        samples[name].append(perf_counter() - start)


def certificate_spec(session: SessionService, i: int) -> CertificateSpec:
    """What `issue` certifies for session i (its policy, serial and nonce)."""
    host, now = HOSTS[i % len(HOSTS)], datetime.now(timezone.utc)
    return CertificateSpec(
        public_key_line=ca_public_key_line(SigningKey.generate()), principal=host,
        key_id=f"host={host} window={WINDOW_ID} req=bench-{i}", serial=session.serial(),
        nonce=session.nonce(), valid_after=now - session.policy.backdate,
        valid_before=now + timedelta(hours=3),
        force_command=session.policy.force_command(host, "backup"))


def stage_probes(rig: SessionRig) -> dict[str, Probe]:
    """Each stage by itself (on a plain DynamoStore), and the two baselines."""
    store, ca = DynamoStore(rig.client, TABLE), rig.service.ca
    public = {host: bytes(key.verify_key) for host, key in rig.keys.items()}

    def verify(i: int) -> Callable[[], object]:
        _, request = signed_session(rig.keys[HOSTS[i % len(HOSTS)]], HOSTS[i % len(HOSTS)])
        return lambda: verify_request(request, now=int(time.time()), lookup=public.get)

    def nonce_put(i: int) -> Callable[[], object]:
        now, nonce = int(time.time()), secrets.token_urlsafe(16)
        rig.store.nonces.append((HOSTS[0], nonce))
        return partial(store.remember_nonce, HOSTS[0], nonce, now, now + NONCE_TTL_SECONDS)

    def certificate(i: int) -> Callable[[], object]:
        spec = certificate_spec(rig.service, i)
        return lambda: sign_user_certificate(spec, ca.signing_key())

    def sign(i: int) -> Callable[[], object]:
        return partial(sign_request, "POST", API + PATH, b'{"host": "c"}', rig.keys[HOSTS[0]],
                       keyid=HOSTS[0], created=int(time.time()), nonce=secrets.token_urlsafe(16))

    return {
        VERIFY: verify,
        HOST_LOOKUP: lambda i: partial(store.get_host, HOSTS[i % len(HOSTS)]),
        NONCE_PUT: nonce_put,
        WINDOW_READ: lambda i: lambda: store.get_window(store.active_window_id() or ""),
        CERTIFICATE: certificate,
        GET_ITEM: lambda i: partial(rig.client.get_item, TableName=TABLE,
                                    Key={"pk": {"S": "HOST"}, "sk": {"S": HOSTS[i % len(HOSTS)]}}),
        SIGN: sign,
    }


@contextmanager
def fresh_app() -> Iterator[None]:
    """app.py's cached settings, clients and services, built anew here and dropped after."""
    app_module.reset_caches()
    try:
        yield
    finally:
        app_module.reset_caches()


def measure_sessions(n: int, alone: int | None = None) -> SessionFigures:
    """n sessions through the whole path, after a first one and a short warm-up, and `alone`
    (default n) calls of each stage by itself. The two are interleaved, so that a burst of load
    elsewhere on the machine falls on both alike."""
    alone = n if alone is None else alone
    if n < 1 or alone < 1:
        raise BenchError("measure at least one session and one call of each stage")
    with quiet_output(), moto_server() as endpoint, scoped_env(fake_aws_env(endpoint)), \
            scoped_env(APP_ENV), fresh_app():
        rig = provision(endpoint)
        first, _, _ = one_session(rig, 0)
        for i in range(WARM_UP):
            one_session(rig, i)
        rig.store.forget_nonces()
        probes = stage_probes(rig)
        latencies, serials, windows = [], [], set()
        stages: dict[str, list[float]] = {stage: [] for stage in STAGES}
        samples: dict[str, list[float]] = {name: [] for name in probes}
        for i in range(max(n, alone)):
            if i < alone:
                time_probes(i, probes, samples)
            rig.store.forget_nonces()
            if i >= n:
                continue
            latency, spent, grant = one_session(rig, i)
            rig.store.forget_nonces()
            latencies.append(latency)
            for stage, seconds in spent.items():
                stages[stage].append(seconds)
            serials.append(certificate_serial(str(grant["certificate"])))
            windows.add(str(grant["window_id"]))
    return SessionFigures(
        latencies=tuple(latencies), stages={k: tuple(v) for k, v in stages.items()},
        alone={k: tuple(v) for k, v in samples.items()}, first_session=first,
        serials=tuple(serials), windows=frozenset(windows))


# 2. cold import -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportTime:
    """Microseconds, from `-X importtime`: the module's cumulative time and its direct imports',
    heaviest first (a dependency counts under whichever import pulled it in first)."""

    module: str
    cumulative_us: int
    children: tuple[tuple[str, int], ...] = ()


def parse_importtime(stderr: str, module: str) -> ImportTime:
    """Lines are `import time: <self> | <cumulative> | <two spaces a level><name>`, each module
    printed after everything it imported."""
    children: list[tuple[str, int]] = []
    for line in stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[1].strip().isdigit():
            continue
        name, cumulative = fields[2].strip(), int(fields[1])
        depth = (len(fields[2]) - len(fields[2].lstrip(" ")) - 1) // 2
        if depth == 1:
            children.append((name, cumulative))
        elif depth == 0 and name == module:
            return ImportTime(module, cumulative, tuple(sorted(children, key=lambda c: -c[1])))
        elif depth == 0:
            children = []
    raise BenchError(f"-X importtime printed no top-level import of {module}")


def import_time(module: str, cwd: Path, runs: int, no_bytecode: bool = False) -> ImportTime:
    """The median of `runs` imports, each in a fresh interpreter; `no_bytecode` neither writes
    nor (the directory holding none) reads .pyc files for what is under `cwd`."""
    command = [sys.executable, *(["-B"] if no_bytecode else []), "-X", "importtime", "-c",
               f"import {module}"]
    results = []
    for _ in range(runs):
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise BenchError(f"import {module} failed: {done.stderr.strip().splitlines()[-1:]}")
        results.append(parse_importtime(done.stderr, module))
    return sorted(results, key=lambda r: r.cumulative_us)[(len(results) - 1) // 2]


# 3. the deployment package ------------------------------------------------------------------
STAGE = "dev"
PACKAGE_TIMEOUT_S = 300
MAX_PLACEHOLDERS = 10


@dataclass(frozen=True)
class Part:
    """A distribution in the zip (or, for files no RECORD lists, a top-level entry), and the
    same distribution as installed in the venv."""

    name: str
    zipped: int
    unpacked: int
    files: int
    version: str = ""
    venv: int | None = None
    venv_version: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}".strip()


@dataclass(frozen=True)
class PackageSize:
    zip_bytes: int
    parts: tuple[Part, ...]  # biggest zipped first
    largest_files: tuple[tuple[str, int], ...]
    notes: tuple[str, ...] = field(default=())


class PackageError(Exception):
    """`chalice package` did not produce a deployment package."""


def stage_project(project: Path) -> None:
    """A copy of what `chalice package` reads: app.py, chalicelib, requirements.txt, vendor,
    .chalice's config and policies, and the policies the config names."""
    project.mkdir(parents=True)
    for name in ("app.py", "requirements.txt"):
        shutil.copy2(REPO / name, project)
    for name in ("chalicelib", "vendor", "policies"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, project / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (project / ".chalice").mkdir()
    for config in (REPO / ".chalice").glob("*.json"):
        shutil.copy2(config, project / ".chalice")


_MISSING_POLICY = re.compile(r"Unable to load IAM policy file (\S+): \[Errno 2\]")


def build_package(work: Path) -> tuple[Path, list[str]]:
    """`chalice package` on a copy of the project. A policy file the config names but the repo
    lacks is replaced by an empty policy (the zip does not depend on it), and noted."""
    project, out, notes = work / "project", work / "out", []
    stage_project(project)
    # chalice wants a region and credentials, but packaging calls no AWS API.
    fake = {**fake_aws_env("https://unused.invalid"), "AWS_ENDPOINT_URL": None}
    env = {k: v for k, v in {**os.environ, **fake}.items() if v is not None}
    command = [str(Path(sys.executable).with_name("chalice")), "package", "--stage", STAGE,
               str(out)]
    for _ in range(MAX_PLACEHOLDERS + 1):
        try:
            done = subprocess.run(command, cwd=project, env=env, capture_output=True,
                                  text=True, timeout=PACKAGE_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PackageError(f"{command[0]} package: {exc}") from exc
        missing = _MISSING_POLICY.search(done.stderr)
        if done.returncode == 0 or missing is None:
            break
        policy = Path(missing[1]).resolve()
        if not policy.is_relative_to(project.resolve()):
            break
        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text('{"Version": "2012-10-17", "Statement": []}\n')
        notes.append(f"{policy.relative_to(project.resolve())} is missing in the repo, so "
                     f"`chalice package` fails there; packaged with an empty policy in its place")
    zip_path = out / "deployment.zip"
    if done.returncode != 0 or not zip_path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-2:]
        raise PackageError(f"chalice package exited {done.returncode}: {' | '.join(tail)}")
    notes += [f"chalice: {line.strip()}" for line in done.stderr.splitlines()
              if "could not" in line.lower() or "warning" in line.lower()]
    return zip_path, notes


def package_size(zip_path: Path, requirements: Sequence[str]) -> PackageSize:
    with zipfile.ZipFile(zip_path) as archive:
        infos = {i.filename: i for i in archive.infolist() if not i.is_dir()}
        owners = _owners(archive, infos)
    grouped: dict[tuple[str, str], list[zipfile.ZipInfo]] = {}
    for name, info in infos.items():
        grouped.setdefault(owners.get(name, (name.split("/")[0], "")), []).append(info)
    parts = [_part(name, version, group) for (name, version), group in grouped.items()]
    packaged = {_normal(name) for name, _ in owners.values()}
    missing = sorted(r for r in requirements if _normal(r) not in packaged)
    notes = [f"missing from the zip: {', '.join(missing)}"] if missing else []
    notes += [f"the venv has {p.name} {p.venv_version}, the zip {p.version}" for p in parts
              if p.venv_version and p.venv_version != p.version]
    largest = sorted(((n, i.file_size) for n, i in infos.items()), key=lambda f: -f[1])[:5]
    return PackageSize(zip_path.stat().st_size, tuple(sorted(parts, key=lambda p: -p.zipped)),
                       tuple(largest), tuple(notes))


def _owners(archive: zipfile.ZipFile, infos: Mapping[str, zipfile.ZipInfo]) -> dict[
        str, tuple[str, str]]:
    """Path -> (distribution, version), from each `<name>-<version>.dist-info/RECORD`."""
    owners: dict[str, tuple[str, str]] = {}
    for path in infos:
        if path.endswith(".dist-info/RECORD"):
            name, _, version = path.split("/")[0].removesuffix(".dist-info").rpartition("-")
            for row in csv.reader(io.StringIO(archive.read(path).decode())):
                if row and row[0] in infos:
                    owners[row[0]] = (name, version)
    return owners


def _part(name: str, version: str, infos: Sequence[zipfile.ZipInfo]) -> Part:
    venv_version, venv = installed(name) if version else ("", None)
    return Part(name, sum(i.compress_size for i in infos), sum(i.file_size for i in infos),
                len(infos), version, venv, venv_version)


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def installed(distribution: str) -> tuple[str, int | None]:
    """The version and bytes of a distribution in this interpreter's environment (the files
    its RECORD lists, with the .pyc files pip wrote)."""
    try:
        found = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return "", None
    paths = (Path(str(f.locate())) for f in found.files or [])
    return found.version, sum(p.stat().st_size for p in paths if p.is_file())


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        text = line.split("#")[0].strip()
        if text and not text.startswith("-"):
            names.append(text.split(";")[0].split("[")[0].split("=")[0].split("<")[0]
                         .split(">")[0].split("~")[0].strip())
    return names


# the report ---------------------------------------------------------------------------------
STAGE_NAMES = {
    VERIFY: "verify: RFC 9421 signature and digest (CPU)",
    HOST_LOOKUP: "host lookup: GetItem HOST",
    NONCE_PUT: "nonce put: conditional PutItem",
    WINDOW_READ: "window read: GetItem ACTIVE + Query",
    CERTIFICATE: "certificate: body, CA key (SSM cache), sign, audit",
}


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, the first left-aligned, the numbers right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in (header, *rows))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def session_report(f: SessionFigures) -> str:
    total, get_item = statistics.fmean(f.latencies), percentile(f.alone[GET_ITEM], 50)
    rows = []
    for stage in STAGES:
        inside, alone = f.stages[stage], f.alone[stage]
        rows.append([STAGE_NAMES[stage], _ms(percentile(inside, 50)),
                     _ms(statistics.fmean(inside)), f"{statistics.fmean(inside) / total:.0%}",
                     _ms(percentile(alone, 50)), _ms(percentile(alone, 99)),
                     f"{percentile(alone, 50) / get_item:.2f}"])
    p50, p99 = percentile(f.latencies, 50), percentile(f.latencies, 99)
    rows.append(["session, whole path", _ms(p50), _ms(total), "100%", "", _ms(p99),
                 f"{p50 / get_item:.2f}"])
    for name, label in ((GET_ITEM, "baseline: bare GetItem, same server"),
                        (SIGN, "client: sign_request")):
        samples = f.alone[name]
        rows.append([label, "", "", "", _ms(percentile(samples, 50)),
                     _ms(percentile(samples, 99)), f"{percentile(samples, 50) / get_item:.2f}"])
    store = sum(statistics.fmean(f.stages[s]) for s in STORE_STAGES) / total
    header = ["stage", "in path p50 ms", "mean ms", "share", "alone p50 ms", "p99 ms",
              "p50 / GetItem"]
    return "\n".join([
        "1. Sessions in process: POST /v1/sessions minus HTTP, DynamoDB on a moto server on "
        "loopback, one at a time",
        f"   {len(f.latencies)} sessions: {f.per_second:,.0f} sessions/s, p50 "
        f"{_ms(percentile(f.latencies, 50))} ms, p99 {_ms(percentile(f.latencies, 99))} ms; "
        f"the first (CA and host keys read from SSM) {_ms(f.first_session)} ms",
        f"   baseline: a bare GetItem, p50 {_ms(get_item)} ms ({1 / get_item:,.0f}/s); "
        f"a session's p50 is {percentile(f.latencies, 50) / get_item:.1f} of them",
        f"   the 4 store calls are {store:.0%} of a session, our CPU (verify + certificate) "
        f"{1 - store:.0%}; the client signs {1 / percentile(f.alone[SIGN], 50):,.0f} requests/s",
        "", table(header, rows), "",
        "   in path: each session's time split exactly (verify and certificate are the time in",
        "   authenticate and issue outside the store); alone: each stage by itself, where",
        "   certificate is the CA key from the SSM cache and the signing, without issue's audit",
        "   log line and EMF metric"])


def import_report(app: ImportTime, boto: ImportTime, runs: int) -> str:
    heaviest = ", ".join(f"{name} {us / 1000:.0f}" for name, us in app.children[:5])
    return "\n".join([
        f"2. Cold import, a fresh `python -X importtime -c 'import <module>'` in the repo, "
        f"median of {runs}",
        f"   import app    {app.cumulative_us / 1000:7.0f} ms",
        f"   import boto3  {boto.cumulative_us / 1000:7.0f} ms",
        f"   app / boto3   {app.cumulative_us / boto.cumulative_us:7.2f}x",
        f"   app.py's heaviest imports, ms: {heaviest}"])


def _mib(size: int) -> str:
    return f"{size / 2**20:.2f}"


def package_report(size: PackageSize, lambda_import: ImportTime | None, app: ImportTime | None,
                   runs: int) -> str:
    zipped, unpacked = sum(p.zipped for p in size.parts), sum(p.unpacked for p in size.parts)
    venv = sum(p.venv or 0 for p in size.parts)
    rows = [[p.label, _mib(p.zipped), _mib(p.unpacked), str(p.files),
             "-" if p.venv is None else _mib(p.venv)] for p in size.parts[:8]]
    rows.append([f"all {len(size.parts)} entries", _mib(zipped), _mib(unpacked),
                 str(sum(p.files for p in size.parts)), _mib(venv)])
    lines = [f"3. Lambda deployment package: chalice package --stage {STAGE}",
             f"   deployment.zip {_mib(size.zip_bytes)} MiB ({size.zip_bytes:,} bytes), "
             f"{_mib(unpacked)} MiB unpacked (Lambda's limit: 50 MiB zipped, 250 MiB unpacked)",
             f"   the same distributions installed in the venv: {_mib(venv)} MiB "
             f"(with the .pyc files pip wrote; the zip has none)", "",
             table(["distribution or entry", "zipped MiB", "unpacked MiB", "files", "venv MiB"],
                   rows), "",
             "   largest files:",
             *(f"   {s / 1024:9,.0f} KiB  {n}" for n, s in size.largest_files)]
    if lambda_import is not None and app is not None:
        lines.append(f"   import app from the unpacked zip without bytecode, as a cold Lambda "
                     f"does (boto3 from the venv), median of {runs}: "
                     f"{lambda_import.cumulative_us / 1000:.0f} ms, "
                     f"{lambda_import.cumulative_us / app.cumulative_us:.2f}x the repo's")
    lines += [f"   note: {note}" for note in size.notes]
    return "\n".join(lines)


def run_package(imports: int, app: ImportTime | None) -> str:
    with tempfile.TemporaryDirectory(prefix="offsite-package-") as work:
        try:
            zip_path, notes = build_package(Path(work))
        except PackageError as exc:
            return f"3. Lambda deployment package: not built ({exc})"
        size = package_size(zip_path, requirement_names(REPO / "requirements.txt"))
        size = dataclasses.replace(size, notes=(*notes, *size.notes))
        unpacked = Path(work) / "task"
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(unpacked)
        try:
            lambda_import = import_time("app", unpacked, imports, no_bytecode=True)
        except BenchError as exc:
            size = dataclasses.replace(size, notes=(*size.notes, f"import from the zip: {exc}"))
            lambda_import = None
        return package_report(size, lambda_import, app, imports)


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: want 1 or more")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sessions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=_count, default=300,
                   help="sessions through the whole path (default 300)")
    p.add_argument("--alone", type=_count, default=100,
                   help="calls of each stage by itself and of each baseline (default 100)")
    p.add_argument("--imports", type=_count, default=3,
                   help="fresh interpreters per import measured (default 3)")
    p.add_argument("--quick", action="store_true",
                   help="20 sessions, 20 calls alone, 1 import each, no package unless "
                        "--package")
    p.add_argument("--package", action=argparse.BooleanOptionalAction, default=None,
                   help="build the deployment package (default: yes, but not with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.sessions, args.alone, args.imports = 20, 20, 1
    if args.package is None:
        args.package = not args.quick
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"Offsite sessions and cold start, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}\n", flush=True)
    try:
        figures = measure_sessions(args.sessions, args.alone)
        print(session_report(figures) + "\n", flush=True)
        app = import_time("app", REPO, args.imports)
        print(import_report(app, import_time("boto3", REPO, args.imports), args.imports) + "\n",
              flush=True)
        if args.package:
            print(run_package(args.imports, app) + "\n")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
