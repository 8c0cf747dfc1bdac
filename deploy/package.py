"""Package Offsite for one stage: the Lambda bundle and its CloudFormation (SAM) template.

    .venv/bin/python deploy/package.py --stage dev build/dev

runs `chalice package --stage dev --merge-template deploy/resources.json build/dev`, which
writes build/dev/deployment.zip and build/dev/sam.json: chalice's functions, roles (one per
function, from policies/) and REST API, merged with what chalice does not make (the README,
"Deploying to a real AWS account", lists it). Then it pins the template's Stage parameter to
the stage packaged: the code and the environment in the template belong to that stage alone.

chalice downloads the bundle's wheels (requirements.txt) from the package index.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MERGE_TEMPLATE = ROOT / "deploy" / "resources.json"
STAGES = ("dev", "prod")
TEMPLATE = "sam.json"
# chalice wants a region to start; the template names none (it uses AWS::Region).
FALLBACK_REGION = "us-east-1"


def chalice_package_command(stage: str, outdir: Path, project_dir: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from chalice.cli import main; sys.exit(main())",
            "--project-dir", str(project_dir), "package", "--stage", stage,
            "--merge-template", str(MERGE_TEMPLATE), str(outdir)]


def pin_stage(template: dict[str, Any], stage: str) -> dict[str, Any]:
    parameter = template["Parameters"]["Stage"]
    parameter["AllowedValues"] = [stage]
    parameter["Default"] = stage
    return template


def package(stage: str, outdir: Path, project_dir: Path = ROOT) -> Path:
    """The path of the packaged template; raises CalledProcessError if chalice failed."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    env = dict(os.environ)
    if not (env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")):
        env["AWS_DEFAULT_REGION"] = FALLBACK_REGION
    subprocess.run(chalice_package_command(stage, outdir, project_dir), check=True, env=env)
    path = outdir / TEMPLATE
    path.write_text(json.dumps(pin_stage(json.loads(path.read_text()), stage), indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("outdir", type=Path, help="where deployment.zip and sam.json go")
    args = parser.parse_args(argv)
    try:
        template = package(args.stage, args.outdir)
    except subprocess.CalledProcessError as exc:
        print(f"chalice package failed (exit status {exc.returncode})", file=sys.stderr)
        return 1
    print(template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
