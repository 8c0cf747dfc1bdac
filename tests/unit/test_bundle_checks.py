"""deploy/package.py's read-back of what it packaged: each function runs RUNTIME on the
configured architecture, every requirement is in the bundle, every native library is an ELF of
that architecture built for RUNTIME (or the stable ABI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.package import (
    RUNTIME,
    BundleError,
    missing_requirements,
    native_library_problems,
    requirements,
    runtime_problems,
    wheels_command,
)


def elf(machine: int) -> bytes:
    """The first 20 bytes of a little-endian ELF64 shared object for `machine`."""
    return b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") + machine.to_bytes(
        2, "little")


AARCH64, X86_64 = 183, 62
CP = "cpython-" + RUNTIME.removeprefix("python").replace(".", "")


def function(runtime: str, architectures: list[str] | None) -> dict[str, object]:
    properties: dict[str, object] = {"Runtime": runtime}
    if architectures is not None:
        properties["Architectures"] = architectures
    return {"Type": "AWS::Serverless::Function", "Properties": properties}


def test_runtime_is_pinned_to_a_supported_python_not_the_workstations() -> None:
    assert RUNTIME == "python3.12"  # python3.11 is deprecated since 30 Jun 2026
    assert runtime_problems({"Resources": {"F": function(RUNTIME, ["arm64"]),
                                           "Table": {"Type": "AWS::DynamoDB::Table"}}},
                            "arm64") == []


@pytest.mark.parametrize(("resource", "problem"), [
    (function("python3.11" if RUNTIME != "python3.11" else "python3.13", ["arm64"]),
     "F runs python3"),
    (function(RUNTIME, None), "F runs " + RUNTIME + " on ['x86_64'], not"),
    (function(RUNTIME, ["x86_64"]), "F runs " + RUNTIME + " on ['x86_64'], not"),
], ids=["other-python", "default-architecture", "x86_64"])
def test_a_function_on_another_runtime_or_architecture_is_refused(
        resource: dict[str, object], problem: str) -> None:
    (found,) = runtime_problems({"Resources": {"F": resource}}, "arm64")
    assert found.startswith(problem)


def test_native_libraries_of_the_architecture_and_runtime_pass() -> None:
    assert native_library_problems([
        (f"_cffi_backend.{CP}-aarch64-linux-gnu.so", elf(AARCH64)),
        ("nacl/_sodium.abi3.so", elf(AARCH64)),
        ("pynacl.libs/libsodium-1a2b.so.26.1.0", elf(AARCH64))], "arm64") == []


@pytest.mark.parametrize(("name", "head", "problem"), [
    (f"_cffi_backend.{CP}-x86_64-linux-gnu.so", elf(X86_64), "is not an arm64 ELF library"),
    ("nacl/_sodium.abi3.so", elf(X86_64), "is not an arm64 ELF library"),
    ("_cffi_backend.cpython-310-aarch64-linux-gnu.so", elf(AARCH64),
     f"is not built for {RUNTIME}"),
    ("nacl/_sodium.abi3.so", b"MZ" + bytes(18), "is not an arm64 ELF library"),
], ids=["x86-extension", "x86-abi3", "other-python", "not-elf"])
def test_a_native_library_for_another_machine_or_python_is_refused(
        name: str, head: bytes, problem: str) -> None:
    assert native_library_problems([(name, head)], "arm64") == [f"{name} {problem}"]


def test_a_requirement_missing_from_the_bundle_is_named() -> None:
    names = ["pynacl-1.6.2.dist-info/METADATA", "nacl/__init__.py",
             "aws_lambda_powertools-3.37.0.dist-info/RECORD"]
    assert missing_requirements(names, [("pynacl", "1.6.2"), ("aws-lambda-powertools", "3.37.0"),
                                        ("cffi", "2.1.1")]) == ["cffi==2.1.1 is not in the bundle"]
    assert missing_requirements(names, [("pynacl", "1.6.3")]) == [
        "pynacl==1.6.3 is not in the bundle"]


def test_requirements_must_be_pinned(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("# the bundle\npynacl==1.6.2  # signing\n\n")
    assert requirements(path) == [("pynacl", "1.6.2")]
    path.write_text("pynacl>=1.6\n")
    with pytest.raises(BundleError, match="not pinned"):
        requirements(path)


def test_wheels_are_binary_only_for_the_runtime_and_the_platform(
        tmp_path: Path) -> None:
    command = wheels_command(tmp_path / "r.txt", tmp_path / "vendor", "arm64")
    assert command[1:4] == ["-m", "pip", "install"]
    for flag, value in [("--platform", "manylinux2014_aarch64"), ("--implementation", "cp"),
                        ("--python-version", RUNTIME.removeprefix("python")),
                        ("--target", str(tmp_path / "vendor"))]:
        assert command[command.index(flag) + 1] == value
    assert "--only-binary=:all:" in command
