"""Shared fixtures: a federation with its key, node identities, a fixed clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fednode.node.identity import Identity
from fednode.node.membership import Issuer, create_federation
from fednode.proto.v1 import membership_pb2

#: A fixed "now" (2023-11-14) so validity windows are exact; tests pass it explicitly.
NOW = 1_700_000_000_000
HOUR = 3600 * 1000
DAY = 24 * HOUR


@dataclass
class Federation:
    issuer: Issuer
    descriptor: membership_pb2.FederationDescriptor

    @property
    def id(self) -> str:
        return self.issuer.federation_id


@pytest.fixture
def federation() -> Federation:
    issuer, descriptor = create_federation("test federation", task="fednode.node.tasks.digits:task",
                                           aggregator="multi_krum", aggregator_params_json='{"f": 1}',
                                           now_unix_ms=NOW)
    return Federation(issuer, descriptor)


@pytest.fixture
def other_federation() -> Federation:
    issuer, descriptor = create_federation("other federation", now_unix_ms=NOW)
    return Federation(issuer, descriptor)


@pytest.fixture
def member() -> Identity:
    return Identity.generate()
