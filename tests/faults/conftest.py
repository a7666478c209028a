"""Fixtures for fault tests: real federations (see harness.py) and, for
network faults, namespaces and veth pairs made by the test and always removed."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network-namespace tests need root"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"network-namespace tests need `{tool}` on PATH"
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class NetNs:
    """A namespace ``name`` joined to the root namespace by a veth pair.

    host side: ``host_if`` with ``host_ip``; namespace side: ``ns_if`` with ``ns_ip``.
    """

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    table: str

    def throttle(self, rate: str = "1mbit") -> None:
        """Rate-limit both directions (egress of each end) with tbf."""
        for prefix, dev in ((["ip", "netns", "exec", self.name], self.ns_if), ([], self.host_if)):
            sh(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
               "rate", rate, "burst", "16kb", "latency", "400ms")  # fmt: skip

    def unthrottle(self) -> None:
        for prefix, dev in ((["ip", "netns", "exec", self.name], self.ns_if), ([], self.host_if)):
            sh(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)

    def cut(self) -> None:
        """Drop every packet between the namespace and the host (nft, inside the namespace)."""
        ns = ["ip", "netns", "exec", self.name, "nft"]
        sh(*ns, "add", "table", "inet", self.table)
        for hook in ("input", "output"):
            sh(*ns, "add", "chain", "inet", self.table, hook,
               f"{{ type filter hook {hook} priority 0 ; policy drop ; }}")  # fmt: skip

    def restore(self) -> None:
        sh("ip", "netns", "exec", self.name, "nft", "delete", "table", "inet", self.table,
           check=False)  # fmt: skip


@pytest.fixture
def netns() -> Iterator:
    """Factory of namespaces with a veth pair to the root namespace; all removed at teardown."""
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    made: list[NetNs] = []

    def make() -> NetNs:
        tag = uuid.uuid4().hex[:6]
        # 10.<a>.<b>.0/30 from the tag: unique per test, addresses only we created.
        a, b = int(tag[:2], 16) % 200 + 20, int(tag[2:4], 16)
        n = NetNs(
            name=f"shoalt-{tag}",
            host_if=f"sh{tag}h",
            ns_if=f"sh{tag}n",
            host_ip=f"10.{a}.{b}.1",
            ns_ip=f"10.{a}.{b}.2",
            table=f"shoalt{tag}",
        )
        made.append(n)
        sh("ip", "netns", "add", n.name)
        sh("ip", "link", "add", n.host_if, "type", "veth", "peer", "name", n.ns_if)
        sh("ip", "link", "set", n.ns_if, "netns", n.name)
        sh("ip", "addr", "add", f"{n.host_ip}/30", "dev", n.host_if)
        sh("ip", "link", "set", n.host_if, "up")
        ns = ["ip", "netns", "exec", n.name]
        sh(*ns, "ip", "addr", "add", f"{n.ns_ip}/30", "dev", n.ns_if)
        sh(*ns, "ip", "link", "set", n.ns_if, "up")
        sh(*ns, "ip", "link", "set", "lo", "up")
        return n

    yield make
    for n in made:
        # Deleting the namespace kills its end of the veth, which removes the pair.
        sh("ip", "netns", "pids", n.name, check=False)
        sh("ip", "link", "del", n.host_if, check=False)
        sh("ip", "netns", "del", n.name, check=False)
