"""Package Offsite for one stage: the Lambda bundle and its CloudFormation (SAM) template.

    .venv/bin/python deploy/package.py --stage dev build/dev

runs `chalice package --stage dev --merge-template deploy/resources.json build/dev`, which
writes build/dev/deployment.zip and build/dev/sam.json: chalice's functions, roles (one per
function, from policies/) and REST API, merged with what chalice does not make (the README,
"Deploying to a real AWS account", lists it). Then it pins the template's Stage parameter to
the stage packaged: the code and the environment in the template belong to that stage alone.

The functions run RUNTIME on the architecture `lambda_architecture` of .chalice/config.json
(arm64, Graviton), whatever Python and machine the workstation has:
- chalice 1.34 takes the runtime from the interpreter it runs in (`Config.lambda_python_version`:
  "we may open this up to configuration later"), so the chalice run here is told RUNTIME;
- chalice's own wheel download gives up on some wheels for arm64 (cffi) with nothing but a
  warning, so the bundle's requirements are installed here instead, with pip, as binary wheels
  for that runtime and platform, into the vendor/ directory of a copy of the project whose
  requirements.txt is empty (chalice puts vendor/ at the root of the bundle: "Packaging",
  chalice documentation);
- then the bundle is read back: every requirement is in it, and every native library in it is
  an ELF of that architecture built for that runtime (or the stable ABI).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MERGE_TEMPLATE = ROOT / "deploy" / "resources.json"
STAGES = ("dev", "prod")
TEMPLATE = "sam.json"
BUNDLE = "deployment.zip"
# chalice wants a region to start; the template names none (it uses AWS::Region).
FALLBACK_REGION = "us-east-1"
# Deprecated on 31 Oct 2028 (python3.11: on 30 Jun 2026): "Lambda runtimes", Supported runtimes,
# https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html . The code, its wheels and
# the template's Runtime all say this one.
RUNTIME = "python3.12"
# Per Lambda architecture: the wheels' platform tag (PEP 599) and the ELF e_machine of its
# libraries (System V ABI: EM_AARCH64, EM_X86_64).
PLATFORMS = {"arm64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
ELF_MACHINES = {"arm64": 183, "x86_64": 62}
PROJECT_PARTS = ("app.py", "chalicelib", "policies", ".chalice/config.json")
CHALICE_WITH_RUNTIME = (
    "import sys; import chalice.config; "
    "chalice.config.Config.lambda_python_version = property(lambda self: {runtime!r}); "
    "from chalice.cli import main; sys.exit(main())")


class BundleError(Exception):
    pass


def chalice_package_command(stage: str, outdir: Path, project_dir: Path) -> list[str]:
    return [sys.executable, "-c", CHALICE_WITH_RUNTIME.format(runtime=RUNTIME),
            "--project-dir", str(project_dir), "package", "--stage", stage,
            "--merge-template", str(MERGE_TEMPLATE), str(outdir)]


def wheels_command(requirements: Path, target: Path, arch: str) -> list[str]:
    """Binary wheels only, for RUNTIME on `arch`: pip refuses what it would have to build."""
    version = RUNTIME.removeprefix("python")
    return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-compile", "--target", str(target), "--only-binary=:all:",
            "--platform", PLATFORMS[arch], "--implementation", "cp",
            "--python-version", version, "-r", str(requirements)]


def architecture(project_dir: Path = ROOT) -> str:
    """The functions' architecture, as .chalice/config.json names it (chalice's default:
    x86_64)."""
    config = json.loads((project_dir / ".chalice" / "config.json").read_text())
    return str(config.get("lambda_architecture", "x86_64"))


def requirements(path: Path) -> list[tuple[str, str]]:
    """(name, version) of each `name==version` line; the bundle's requirements are pinned."""
    pinned = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, separator, version = line.partition("==")
            if not separator:
                raise BundleError(f"{path}: {line!r} is not pinned (name==version)")
            pinned.append((name.strip(), version.strip()))
    return pinned


def pin_stage(template: dict[str, Any], stage: str) -> dict[str, Any]:
    parameter = template["Parameters"]["Stage"]
    parameter["AllowedValues"] = [stage]
    parameter["Default"] = stage
    return template


def runtime_problems(template: Mapping[str, Any], arch: str) -> list[str]:
    """Each function of the template that does not run RUNTIME on `arch`."""
    problems = []
    for logical_id, resource in template.get("Resources", {}).items():
        if isinstance(resource, dict) and resource.get("Type") == "AWS::Serverless::Function":
            properties = resource["Properties"]
            found = (properties.get("Runtime"), properties.get("Architectures", ["x86_64"]))
            if found != (RUNTIME, [arch]):
                problems.append(f"{logical_id} runs {found[0]} on {found[1]}, not {RUNTIME} "
                                f"on {[arch]}")
    return problems


def native_library_problems(libraries: Iterable[tuple[str, bytes]], arch: str) -> list[str]:
    """Each shared library (name, first 20 bytes) not built for `arch` and RUNTIME: it must be
    an ELF whose e_machine is the architecture's, with a CPython extension tag that is RUNTIME's
    or none (the stable ABI's `.abi3.so`, PEP 384, or a plain library)."""
    tag = "cpython-" + RUNTIME.removeprefix("python").replace(".", "")
    problems = []
    for name, head in libraries:
        machine = int.from_bytes(head[18:20], "little")
        if head[:4] != b"\x7fELF" or machine != ELF_MACHINES[arch]:
            problems.append(f"{name} is not an {arch} ELF library")
        elif ".cpython-" in name and f".{tag}-" not in name:
            problems.append(f"{name} is not built for {RUNTIME}")
    return problems


def missing_requirements(names: Iterable[str], pinned: Iterable[tuple[str, str]]) -> list[str]:
    """Each pinned requirement whose `<name>-<version>.dist-info/` is not among `names`."""
    folders = {n.split("/", 1)[0].lower() for n in names if ".dist-info/" in n}
    return [f"{name}=={version} is not in the bundle" for name, version in pinned
            if f"{name.lower().replace('-', '_')}-{version}.dist-info" not in folders]


def bundle_problems(bundle: Path, arch: str, pinned: Iterable[tuple[str, str]]) -> list[str]:
    with zipfile.ZipFile(bundle) as archive:
        names = archive.namelist()
        libraries = [(n, archive.open(n).read(20)) for n in names
                     if n.endswith(".so") or ".so." in n]
    return missing_requirements(names, pinned) + native_library_problems(libraries, arch)


def staged_project(project_dir: Path, scratch: Path) -> Path:
    """A copy of the project for chalice: its requirements installed into vendor/ as wheels
    for RUNTIME and the architecture, and an empty requirements.txt."""
    staged = scratch / "project"
    for part in PROJECT_PARTS:
        source, target = project_dir / part, staged / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    (staged / "requirements.txt").write_text("")
    source_requirements = project_dir / "requirements.txt"
    if requirements(source_requirements):
        subprocess.run(wheels_command(source_requirements, staged / "vendor",
                                      architecture(project_dir)), check=True)
    return staged


def package(stage: str, outdir: Path, project_dir: Path = ROOT) -> Path:
    """The path of the packaged template; raises CalledProcessError if pip or chalice failed,
    BundleError if the bundle or the template is not what RUNTIME and the architecture need."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    env = dict(os.environ)
    if not (env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")):
        env["AWS_DEFAULT_REGION"] = FALLBACK_REGION
    with tempfile.TemporaryDirectory(prefix="offsite-package-") as scratch:
        staged = staged_project(project_dir, Path(scratch))
        subprocess.run(chalice_package_command(stage, outdir, staged), check=True, env=env)
    path = outdir / TEMPLATE
    template = pin_stage(json.loads(path.read_text()), stage)
    arch = architecture(project_dir)
    problems = runtime_problems(template, arch) + bundle_problems(
        outdir / BUNDLE, arch, requirements(project_dir / "requirements.txt"))
    if problems:
        raise BundleError("; ".join(problems))
    path.write_text(json.dumps(template, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", required=True, choices=STAGES)
    parser.add_argument("outdir", type=Path, help="where deployment.zip and sam.json go")
    args = parser.parse_args(argv)
    try:
        template = package(args.stage, args.outdir)
    except subprocess.CalledProcessError as exc:
        print(f"pip or chalice failed (exit status {exc.returncode}; its output is above)",
              file=sys.stderr)
        return 1
    except BundleError as exc:
        print(f"the package is not built for {RUNTIME}: {exc}", file=sys.stderr)
        return 1
    print(template)
    return 0


if __name__ == "__main__":
    sys.exit(main())
