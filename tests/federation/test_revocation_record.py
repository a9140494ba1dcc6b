"""The federation's revocation record on real meshes (127.0.0.1, real libp2p DHT).

Members that missed the gossip read the record; writers merge (revocations only accumulate); DHT
holders refuse forged lists and lists shorter than the one they hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from fednode.node.federation.revocation_record import RevocationRecord
from fednode.node.identity import Identity
from fednode.node.membership import (
    TrustPolicy,
    create_federation,
    encode_revocation_list,
    revocation_record_key,
    revoke,
)
from fednode.node.membership.revocations import (
    REVOCATION_RECORD_NAMESPACE,
    select_revocation_record,
    validate_revocation_record,
)
from fednode.node.mesh import Mesh, MeshConfig, RecordValidator

pytestmark = pytest.mark.timeout(180)

RULES = {REVOCATION_RECORD_NAMESPACE: RecordValidator(validate_revocation_record, select_revocation_record)}


@contextlib.asynccontextmanager
async def mesh_node(bootstrap: tuple[str, ...] = (), rules: dict = RULES) -> AsyncIterator[Mesh]:
    mesh = Mesh(MeshConfig(identity_key=os.urandom(32), listen_multiaddrs=("/ip4/127.0.0.1/tcp/0",),
                           bootstrap_multiaddrs=bootstrap, record_validators=rules, fast_path=False,
                           io_timeout_s=5.0))
    await mesh.start()
    try:
        deadline = time.monotonic() + 20
        while bootstrap and not mesh.peers() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        yield mesh
    finally:
        await mesh.stop()


class Member:
    """What a daemon gives the record keeper: its trust policy, learning like from gossip."""

    def __init__(self, mesh: Mesh, federation_id: str) -> None:
        self.policy = TrustPolicy()
        self.record = RevocationRecord(mesh, federation_id, known=lambda: self.policy.revocations(federation_id),
                                       learn=lambda r: self.policy.add_revocation(federation_id, r))
        self.federation_id = federation_id

    def knows(self) -> set[bytes]:
        return {bytes(r.member_public_key) for r in self.policy.revocations(self.federation_id)}


def test_members_offline_during_gossip_learn_revocations_from_the_record() -> None:
    issuer, _ = create_federation("lab")
    fid = issuer.federation_id
    revoked = [Identity.generate().public_key for _ in range(3)]
    first, second, third = (revoke(issuer, member_public_key=key, reason="test") for key in revoked)

    async def scenario() -> None:
        async with mesh_node() as boot:
            addrs = tuple(boot.listen_multiaddrs())
            async with mesh_node(addrs) as mesh_a, mesh_node(addrs) as mesh_b:
                a, b = Member(mesh_a, fid), Member(mesh_b, fid)
                a.policy.add_revocation(fid, first)
                b.policy.add_revocation(fid, second)
                # A stores what it knows; B (knowing another revocation) learns A's and stores the union.
                done = await a.record.sync()
                assert done.stored and done.learned == 0
                done = await b.record.sync()
                assert done.learned == 1 and done.stored
                assert b.knows() == {revoked[0], revoked[1]}
                # Nothing new: no write.
                again = await b.record.sync()
                assert again.learned == 0 and not again.stored and again.records >= 1
                # A member that was offline (fresh node, empty DHT store) reads without writing.
                async with mesh_node(addrs) as mesh_c:
                    c = Member(mesh_c, fid)
                    done = await c.record.sync(store=False)
                    assert done.learned == 2 and not done.stored
                    assert c.knows() == {revoked[0], revoked[1]}

                # A holder refuses a list shorter than the one it holds (a stale or censoring
                # writer cannot un-revoke); a permissive rogue writes one anyway.
                permissive = {REVOCATION_RECORD_NAMESPACE: RecordValidator(lambda k, v: None, lambda k, vs: 0)}
                async with mesh_node(addrs, rules=permissive) as rogue:
                    await rogue.put_record(revocation_record_key(fid), encode_revocation_list(fid, [third]))
                    await rogue.put_record(revocation_record_key(fid), b"forged")
                async with mesh_node(addrs) as mesh_d:
                    d = Member(mesh_d, fid)
                    await d.record.sync(store=False)
                    assert d.knows() == {revoked[0], revoked[1]}, "holders kept the longer list only"

    asyncio.run(scenario())
