"""Fixtures for tests that need network namespaces: a fresh :class:`NetLab` per test.

Skipped, with the reason, when the machine cannot build one (no root / CAP_NET_ADMIN, no
``ip``/``iptables``, netns or NAT unsupported). Torn down in teardown even when the test fails:
every spawned process (whole process groups) is killed and every namespace deleted, which also
removes its interfaces and iptables rules; the test then fails if anything is left.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # netlab, fedlab, blobbench: plain modules, also scripts

from netlab import NetLab, netns_unavailable_reason, remove_stale_labs

_REASON: list[str | None] = []


def _unavailable() -> str | None:
    if not _REASON:
        _REASON.append(netns_unavailable_reason())
    return _REASON[0]


@pytest.fixture
def lab() -> Iterator[NetLab]:
    reason = _unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces unavailable: {reason}")
    remove_stale_labs()  # what a killed earlier run left behind (never a live run's)
    net = NetLab()
    try:
        yield net
    finally:
        net.close()
    leftovers = net.leftovers()
    assert not leftovers, f"namespaces left behind: {leftovers}"
