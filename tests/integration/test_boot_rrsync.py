"""boot.sh's rrsync step (ensure_rrsync) on image layouts like Amazon Linux 2023's: rsync from
the `rsync` package, rrsync among that package's documentation files. The step runs alone: the
functions of boot.sh, then the step, in a sandbox (rrsync's destination, the documentation
directory, and a `dnf` stub that plays the package manager: each call logged, and a reinstall
with docs puts the package's documentation back as rpm would)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from chalicelib.instance.userdata import BOOT_SCRIPT

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("rsync") is None,
    reason="needs root (boot.sh makes rrsync root-owned) and rsync")

RRSYNC_SCRIPT = "#!/usr/bin/env python3\n# rrsync stand-in: the package's doc copy\n"
DNF_STUB = """#!/bin/sh
echo "$*" >> "$DNF_LOG"
case "$*" in
  "-y --setopt=tsflags= reinstall rsync")
    if [ -n "$PACKAGE_DOC" ]; then
      mkdir -p "$DOC_DIR/rsync/support" && cp "$PACKAGE_DOC" "$DOC_DIR/rsync/support/rrsync"
    fi ;;
esac
"""


@dataclass
class Image:
    root: Path

    @property
    def rrsync(self) -> Path:
        return self.root / "usr/bin/rrsync"

    @property
    def docs(self) -> Path:
        return self.root / "usr/share/doc"

    @property
    def dnf_log(self) -> Path:
        return self.root / "dnf.log"

    def dnf_calls(self) -> list[str]:
        return self.dnf_log.read_text().splitlines() if self.dnf_log.exists() else []

    def run_step(self, package_doc: str | None) -> subprocess.CompletedProcess[str]:
        """boot.sh's functions, then `ensure_rrsync` alone; `package_doc` is what the rsync
        package's support/rrsync holds (None: the package has none)."""
        script = BOOT_SCRIPT.read_text()
        functions, dispatch, _ = script.rpartition("\ncase ${1-} in\n")
        assert dispatch, "boot.sh ends by dispatching on its first argument (main or signal)"
        driver = self.root / "step.sh"
        driver.write_text(functions + '\nSCRATCH=$(mktemp -d)\nensure_rrsync\n')
        doc = ""
        if package_doc is not None:
            (self.root / "package-rrsync").write_text(package_doc)
            doc = str(self.root / "package-rrsync")
        env = {**os.environ, "OFFSITE_RRSYNC": str(self.rrsync), "OFFSITE_DOC_DIR": str(self.docs),
               "OFFSITE_TOOLS": str(self.root / "tools"), "DNF_LOG": str(self.dnf_log),
               "DOC_DIR": str(self.docs), "PACKAGE_DOC": doc}
        return subprocess.run(["bash", str(driver)], env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)


@pytest.fixture
def image(tmp_path: Path) -> Image:
    """An image with rsync and without docs (dnf tsflags=nodocs): no rrsync anywhere."""
    image = Image(tmp_path)
    image.docs.mkdir(parents=True)
    (tmp_path / "tools").mkdir()
    dnf = tmp_path / "tools" / "dnf"
    dnf.write_text(DNF_STUB)
    dnf.chmod(0o755)
    return image


def test_without_docs_rrsync_comes_from_the_rsync_package_installed_again_with_docs(
        image: Image) -> None:
    done = image.run_step(package_doc=RRSYNC_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert image.dnf_calls() == ["-y --setopt=tsflags= reinstall rsync"]
    assert image.rrsync.read_text() == RRSYNC_SCRIPT
    assert image.rrsync.stat().st_mode & 0o777 == 0o755


def test_with_docs_rrsync_is_copied_and_no_package_is_touched(image: Image) -> None:
    (image.docs / "rsync/support").mkdir(parents=True)
    (image.docs / "rsync/support/rrsync").write_text(RRSYNC_SCRIPT)
    done = image.run_step(package_doc=None)
    assert done.returncode == 0, done.stderr
    assert image.dnf_calls() == []
    assert image.rrsync.read_text() == RRSYNC_SCRIPT


def test_no_rrsync_in_the_package_fails_with_the_reason(image: Image) -> None:
    done = image.run_step(package_doc=None)
    assert done.returncode != 0
    assert image.dnf_calls() == ["-y --setopt=tsflags= reinstall rsync"]
    assert f"no rrsync: not at {image.rrsync}" in done.stderr
    assert not image.rrsync.exists()


@pytest.mark.parametrize("shebang", ["#!/usr/bin/env python3-offsite-absent",
                                     "#!/nonexistent/bin/python3"], ids=["env", "path"])
def test_rrsync_without_its_interpreter_fails_with_the_reason(image: Image,
                                                               shebang: str) -> None:
    """rrsync is a Python script: an image without the interpreter its first line names cannot
    run a single certificate's forced command, so boot says so (a stand-in name for python3:
    this machine has python3)."""
    done = image.run_step(package_doc=f"{shebang}\n")
    interpreter = shebang.split()[-1].removeprefix("#!")
    assert done.returncode != 0
    assert f"is a script run by '{interpreter}', which this image lacks" in done.stderr
    assert "install python3" in done.stderr


def test_an_installed_rrsync_is_kept(image: Image) -> None:
    image.rrsync.parent.mkdir(parents=True)
    image.rrsync.write_text(RRSYNC_SCRIPT)
    image.rrsync.chmod(0o755)
    done = image.run_step(package_doc="#!/bin/sh\n")
    assert done.returncode == 0, done.stderr
    assert image.dnf_calls() == [] and image.rrsync.read_text() == RRSYNC_SCRIPT
