"""Smoke test of bench/sessions: a handful of sessions through the whole in-process path on a
moto server, and the figures hang together. Nothing here depends on how fast the machine is:
only counts, identities and orderings are asserted."""

from __future__ import annotations

import math
import os
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from nacl.signing import SigningKey

import app as app_module
from bench.sessions import (
    GET_ITEM,
    SIGN,
    STAGES,
    WINDOW_ID,
    ImportTime,
    SessionFigures,
    certificate_serial,
    import_report,
    measure_sessions,
    package_report,
    package_size,
    parse_importtime,
    percentile,
    session_report,
)
from chalicelib.sshcert import CertificateSpec, ca_public_key_line, sign_user_certificate

SESSIONS, ALONE = 6, 3


@pytest.fixture(scope="module")
def figures() -> SessionFigures:
    before = dict(os.environ)
    measured = measure_sessions(SESSIONS, alone=ALONE)
    assert dict(os.environ) == before
    assert app_module.session_service.cache_info().currsize == 0
    return measured


def test_every_session_gets_its_own_certificate_in_the_open_window(
        figures: SessionFigures) -> None:
    assert len(figures.latencies) == SESSIONS
    assert len(set(figures.serials)) == SESSIONS
    assert figures.windows == {WINDOW_ID}
    assert percentile(figures.latencies, 99) >= percentile(figures.latencies, 50) > 0
    assert figures.first_session > 0


def test_the_stages_split_each_session_exactly(figures: SessionFigures) -> None:
    assert set(figures.stages) == set(STAGES)
    for i, latency in enumerate(figures.latencies):
        parts = [figures.stages[stage][i] for stage in STAGES]
        assert min(parts) >= 0
        assert math.isclose(sum(parts), latency, rel_tol=1e-9, abs_tol=1e-9)


def test_each_stage_and_baseline_is_also_timed_alone(figures: SessionFigures) -> None:
    assert set(figures.alone) == {*STAGES, GET_ITEM, SIGN}
    assert all(len(samples) == ALONE and min(samples) > 0 for samples in figures.alone.values())
    report = session_report(figures)
    assert f"{SESSIONS} sessions:" in report
    assert "baseline: bare GetItem, same server" in report


def test_the_serial_is_read_back_from_the_certificate() -> None:
    now = int(datetime(2026, 11, 29, tzinfo=timezone.utc).timestamp())
    spec = CertificateSpec(
        public_key_line=ca_public_key_line(SigningKey.generate()), principal="c", key_id="k",
        serial=0x0123456789ABCDEF, nonce=bytes(32), valid_after=now, valid_before=now + 60,
        force_command="/usr/bin/rrsync -wo /srv/offsite/c")
    assert certificate_serial(sign_user_certificate(spec, SigningKey.generate())) == \
        0x0123456789ABCDEF


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 | encodings
import time:        50 |         50 |   botocore.compat
import time:       300 |       2000 |   boto3
import time:        40 |         40 |     chalicelib.names
import time:       200 |        600 |   chalicelib.hosts
import time:      1000 |       3700 | app
"""


def test_importtime_gives_the_module_and_its_direct_imports_heaviest_first() -> None:
    found = parse_importtime(IMPORTTIME, "app")
    assert found == ImportTime("app", 3700, (("boto3", 2000), ("chalicelib.hosts", 600),
                                             ("botocore.compat", 50)))
    report = import_report(found, ImportTime("boto3", 1850), runs=1)
    assert "app / boto3      2.00x" in report
    assert "boto3 2, chalicelib.hosts 1" in report


def test_the_package_is_grouped_by_distribution(tmp_path: Path) -> None:
    zip_path = tmp_path / "deployment.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("app.py", "import nacl\n")
        archive.writestr("nacl/__init__.py", "x" * 300)
        archive.writestr("pynacl-1.6.2.dist-info/RECORD",
                         "nacl/__init__.py,,300\npynacl-1.6.2.dist-info/RECORD,,\n")
    size = package_size(zip_path, ["pynacl", "aws-lambda-powertools"])
    assert [(p.label, p.unpacked, p.files) for p in size.parts] == [
        ("pynacl 1.6.2", 300 + len("nacl/__init__.py,,300\npynacl-1.6.2.dist-info/RECORD,,\n"),
         2), ("app.py", 12, 1)]
    assert size.notes[0] == "missing from the zip: aws-lambda-powertools"
    assert "deployment.zip" in package_report(size, None, None, runs=1)
