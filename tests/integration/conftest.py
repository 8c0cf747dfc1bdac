"""The packaged templates, made once per test process for the tests that read them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.package import package

ROOT = Path(__file__).parents[2]
STAGES = ("dev", "prod")


@pytest.fixture(scope="session")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each stage's sam.json. The template does not depend on the bundle's wheels, so this
    packages a copy of the project whose requirements.txt is empty: no package index is needed,
    and the template is the one `deploy/package.py` writes from the real tree."""
    project = tmp_path_factory.mktemp("project")
    for part in ("app.py", "chalicelib", "policies", ".chalice/config.json"):
        source, target = ROOT / part, project / part
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    (project / "requirements.txt").write_text("")
    out = tmp_path_factory.mktemp("out")
    return {stage: package(stage, out / stage, project_dir=project) for stage in STAGES}
