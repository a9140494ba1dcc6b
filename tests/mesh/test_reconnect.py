"""Members find a member that moved to another port: its remembered address is dead, its signed
address record in the DHT is not (real meshes, real membership files, 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from fednode.node.identity import Identity
from fednode.node.membership import MembershipStore, TrustPolicy, create_federation, issue_certificate
from fednode.node.membership.addresses import (
    ADDRESS_RECORD_NAMESPACE,
    select_address_record,
    validate_address_record,
)
from fednode.node.mesh import RecordValidator
from fednode.node.reconnect import Reconnector

from .conftest import LoopRunner, config, started, wait_until

pytestmark = pytest.mark.timeout(180)

RECORDS = {ADDRESS_RECORD_NAMESPACE: RecordValidator(validate_address_record, select_address_record)}


def _member_store(tmp_path: Path, name: str, descriptor, certificate) -> MembershipStore:
    store = MembershipStore(tmp_path / name)
    store.save_membership(descriptor, certificate)
    return store


def test_a_member_that_moved_is_found_through_its_address_record(runner: LoopRunner, tmp_path: Path) -> None:
    issuer, descriptor = create_federation("moving")
    fid = issuer.federation_id
    a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
    certificates = {m.peer_id: issue_certificate(issuer, m.public_key) for m in (a, b, c)}

    def reconnector(mesh, identity: Identity, store: MembershipStore) -> Reconnector:
        return Reconnector(mesh=mesh, identity=identity, federation_id=fid, certificate=certificates[identity.peer_id],
                           store=store, trust=TrustPolicy())

    async def scenario() -> None:
        async with started(config(identity_key=a.private_seed, record_validators=RECORDS)) as (mesh_a,):
            boot = tuple(mesh_a.listen_multiaddrs())
            # C's first life: B remembers it there (and A).
            async with started(config(identity_key=c.private_seed, record_validators=RECORDS)) as (old_c,):
                old_address = old_c.listen_multiaddrs()[0]
            store_b = _member_store(tmp_path, "b", descriptor, certificates[b.peer_id])
            store_b.save_peer_addresses(fid, [old_address, *boot])
            store_c = _member_store(tmp_path, "c", descriptor, certificates[c.peer_id])
            store_c.save_peer_addresses(fid, list(boot))
            tasks = []
            try:
                # C comes back on another port; it knows A, publishes its record once connected.
                async with started(config(identity_key=c.private_seed, record_validators=RECORDS,
                                          peer_hints=boot)) as (new_c,):
                    assert new_c.listen_multiaddrs()[0] != old_address
                    tasks.append(asyncio.ensure_future(reconnector(new_c, c, store_c).run()))
                    await wait_until(lambda: any(p.peer_id == a.peer_id for p in new_c.peers()), 30, "C with A")
                    async with started(config(identity_key=b.private_seed, record_validators=RECORDS,
                                              peer_hints=boot)) as (mesh_b,):
                        await wait_until(lambda: any(p.peer_id == a.peer_id for p in mesh_b.peers()), 30, "B with A")
                        finder = reconnector(mesh_b, b, store_b)
                        # C's record, stored in the DHT through A and read through the network,
                        # names where C is now (and verifies: C's key, C's certificate).
                        new_addresses = set(new_c.listen_multiaddrs())

                        async def record_names_the_new_address() -> bool:
                            found = await finder.record_addresses(c.peer_id)
                            return bool(set(found) & new_addresses)

                        await wait_until(record_names_the_new_address, 60, "C's address record")
                        # B, remembering only C's dead address (and A), reaches C.
                        tasks.append(asyncio.ensure_future(finder.run()))
                        await wait_until(lambda: any(p.peer_id == c.peer_id for p in mesh_b.peers()), 60, "B with C")
                        assert await finder.reach(c.peer_id, [old_address])
            finally:
                for task in tasks:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    runner.run(scenario(), timeout=170)


def test_blobs_are_served_to_admitted_peers_only(runner: LoopRunner) -> None:
    """A private federation's payloads: a peer the admission hook refuses (a revoked member, a
    stranger) hears "not found", over the fast path and over libp2p streams alike."""
    import hashlib

    from fednode.node.mesh import BlobNotFoundError

    blob = b"model snapshot " * 1000
    content_id = hashlib.sha256(blob).digest()

    async def scenario() -> None:
        for fast_path in (True, False):
            async with started(config(fast_path=fast_path)) as (provider,):
                boot = tuple(provider.listen_multiaddrs())
                async with started(config(bootstrap_multiaddrs=boot, fast_path=fast_path),
                                   config(bootstrap_multiaddrs=boot, fast_path=fast_path)) as (member, stranger):
                    provider.serve_blob(content_id, blob)
                    provider.set_serve_admission(lambda peer, allowed=member.peer_id: peer == allowed)
                    assert bytes(await member.fetch_blob(content_id, [provider.peer_id])) == blob
                    with pytest.raises(BlobNotFoundError):
                        await stranger.fetch_blob(content_id, [provider.peer_id])
                    provider.set_serve_admission(None)  # an open federation serves anyone
                    assert bytes(await stranger.fetch_blob(content_id, [provider.peer_id])) == blob

    runner.run(scenario(), timeout=150)
