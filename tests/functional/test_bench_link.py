"""bench/link.py: the shaped link a bench's sshd sits behind (`--link-mbit`): a network
namespace and a veth pair, each end under tc's token bucket at the rate asked, all removed
afterwards; and bench/restore across it, on a few MB. No wall-clock speed is asserted: the
rate is read back from tc."""

from __future__ import annotations

import contextlib
import ipaddress
import subprocess
from pathlib import Path

import pytest

from bench import link
from bench.restore import measure, report

from .bench_rig import assert_left_nothing, real_tools


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def test_the_network_is_one_no_interface_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = [ipaddress.ip_network(f"10.{200 + a}.0.0/16") for a in range(8)][:-1]
    shown = "".join(f"{i}: eth{i}    inet {n[1]}/{n.prefixlen} scope global\n"
                    for i, n in enumerate(taken))
    monkeypatch.setattr(link, "_run", lambda argv: shown)
    for _ in range(20):  # only 10.207.0.0/16 of 10.200.0.0/13 is left
        assert link._free_network().subnet_of(ipaddress.ip_network("10.207.0.0/16"))
    monkeypatch.setattr(link, "_run", lambda argv: "1: eth0    inet 10.0.0.1/8 scope global\n")
    with pytest.raises(link.LinkError, match="no free /30"):
        link._free_network()


def test_a_link_needs_a_rate_above_zero() -> None:
    with contextlib.ExitStack() as cleanup, pytest.raises(link.LinkError, match="above 0"):
        link.shaped_link(cleanup, 0)


@real_tools
def test_a_shaped_link_reaches_its_namespace_at_the_rate_asked_and_goes() -> None:
    with contextlib.ExitStack() as cleanup:
        made = link.shaped_link(cleanup, 8)
        assert made.namespace in ip("netns", "list")
        inside = subprocess.run(made.enter(["ip", "-o", "-4", "addr", "show"]),
                                capture_output=True, text=True, check=True).stdout
        assert f"inet {made.address}/30" in inside
        for argv in (["tc", "-n", made.namespace, "qdisc", "show"], ["tc", "qdisc", "show"]):
            shown = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            assert any("tbf" in line and "rate 8Mbit" in line for line in shown.splitlines())
        # a process entered into it keeps the machine's mounts (sshd writes the bench's volumes)
        mounts = subprocess.run(made.enter(["cat", "/proc/self/mountinfo"]),
                                capture_output=True, text=True, check=True).stdout
        assert mounts == Path("/proc/self/mountinfo").read_text()
    assert made.namespace not in ip("netns", "list")
    assert f"ob{made.namespace.rsplit('-', 1)[1]}" not in ip("-o", "link")


@real_tools
def test_the_restore_bench_runs_across_a_link_and_leaves_nothing() -> None:
    figures = measure(3.0, quiet=True, link_mbit=200)
    assert figures.identical and figures.restored_bytes == figures.plaintext_bytes
    assert figures.link.startswith("a 200 Mbit/s link each way")
    assert f"between the host and sshd: {figures.link}" in report(figures)
    assert_left_nothing(Path(figures.work), "offsite-bench-restore-", figures.sshd_pid,
                        figures.account)
    assert figures.link_namespace.startswith("offsite-bench-")
    assert figures.link_namespace not in ip("netns", "list")
