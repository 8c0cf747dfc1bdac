"""A shaped network link for the benches (`--link-mbit`): sshd in a network namespace of its
own, reached over a veth pair whose two ends are each limited by tc's token bucket filter, so
that a transfer is bound by the link, as a host's uplink binds it, and not by the CPU as over
loopback, where ssh, rsync, sshd and the FUSE daemon share the same cores.

Only the network namespace is new: sshd enters it with `nsenter --net`, keeping the machine's
mount namespace, so the volumes and mounts the bench makes later are the ones sshd writes to
(`ip netns exec` would give it a copy of the mounts taken when it starts). Every name carries a
random tag and the /30 is one no interface of the machine uses, so two benches, or a bench and
the tests, never share one. Everything is removed by the ExitStack that made it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

LATENCY_MS = 50  # how long tbf may queue a packet before dropping it


class LinkError(Exception):
    pass


@dataclass(frozen=True)
class Link:
    namespace: str
    address: str  # sshd's end, inside the namespace
    mbit: float

    def enter(self, argv: Sequence[str]) -> list[str]:
        """`argv` run in the namespace's network, with the machine's mounts."""
        return ["nsenter", f"--net=/run/netns/{self.namespace}", *argv]

    def describe(self) -> str:
        return (f"a {self.mbit:g} Mbit/s link each way (tc tbf on a veth pair into a network "
                f"namespace, {LATENCY_MS} ms queue)")


def shaped_link(cleanup: contextlib.ExitStack, mbit: float) -> Link:
    """A namespace and a veth pair of `mbit` Mbit/s each way; removed by `cleanup`."""
    if not mbit > 0:
        raise LinkError(f"--link-mbit must be above 0, not {mbit:g}")
    tag = secrets.token_hex(3)
    namespace, outer, inner = f"offsite-bench-{tag}", f"ob{tag}o", f"ob{tag}i"
    network = _free_network()
    ours, theirs = (str(a) for a in network.hosts())
    _ip("netns", "add", namespace)
    cleanup.callback(_quietly, "netns", "del", namespace)
    _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
    cleanup.callback(_quietly, "link", "del", outer)  # takes its peer with it
    _ip("link", "set", inner, "netns", namespace)
    _ip("addr", "add", f"{ours}/30", "dev", outer)
    _ip("link", "set", outer, "up")
    _ip("-n", namespace, "addr", "add", f"{theirs}/30", "dev", inner)
    _ip("-n", namespace, "link", "set", inner, "up")
    _ip("-n", namespace, "link", "set", "lo", "up")
    # tbf's bucket must hold at least what the rate brings in a timer tick (tc-tbf(8));
    # 10 ms of the rate, and never under 64 KiB, covers any HZ.
    burst_kb = max(64, math.ceil(mbit * 1000 / 8 / 100))
    shape = ["qdisc", "add", "dev", "{dev}", "root", "tbf", "rate", f"{mbit:g}mbit",
             "burst", f"{burst_kb}kb", "latency", f"{LATENCY_MS}ms"]
    _run(["tc", *[a.format(dev=outer) for a in shape]])
    _run(["tc", "-n", namespace, *[a.format(dev=inner) for a in shape]])
    return Link(namespace, theirs, mbit)


def _free_network() -> ipaddress.IPv4Network:
    """A /30 in 10.200.0.0/13 that no address of this machine is in."""
    used = [ipaddress.ip_interface(word).network
            for line in _run(["ip", "-o", "-4", "addr", "show"]).splitlines()
            for word in line.split()[3:4]]
    for _ in range(100):
        base = ipaddress.ip_address("10.200.0.0") + 4 * secrets.randbelow(2**19 // 4)
        candidate = ipaddress.ip_network(f"{base}/30")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise LinkError("no free /30 in 10.200.0.0/13 for the bench's link")


def _ip(*args: str) -> None:
    _run(["ip", *args])


def _quietly(*args: str) -> None:
    subprocess.run(["ip", *args], capture_output=True, check=False)


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LinkError(f"{' '.join(argv)} failed: {done.stderr.strip()[-300:]}")
    return done.stdout
