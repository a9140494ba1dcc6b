"""DHT records on real meshes (127.0.0.1): validated on put, on storage by others and on read.

Namespace "test-sets": a valid value starts with b"set:", and the longer value is the better one
(like revocation lists, where the record with more entries wins). Rogue nodes register a
permissive validator for the same namespace, so they store and put anything.
"""

from __future__ import annotations

import pytest

from fednode.node.mesh import RecordValidator

from .conftest import LoopRunner, config, started, wait_until

pytestmark = pytest.mark.timeout(180)

NAMESPACE = "test-sets"


def strict_validate(key: str, value: bytes) -> None:
    if not key.startswith(f"/{NAMESPACE}/") or not value.startswith(b"set:"):
        raise ValueError("not a set record")


def longest(key: str, values: list[bytes]) -> int:
    return max(range(len(values)), key=lambda i: (len(values[i]), values[i]))


HONEST = {NAMESPACE: RecordValidator(strict_validate, longest)}
PERMISSIVE = {NAMESPACE: RecordValidator(lambda key, value: None, lambda key, values: 0)}


def test_records_are_found_through_the_network_and_bad_ones_never_stored(runner: LoopRunner) -> None:
    async def scenario() -> None:
        async with started(config(record_validators=HONEST, max_record_size=1024)) as (a,):
            boot = tuple(a.listen_multiaddrs())
            async with started(config(bootstrap_multiaddrs=boot, record_validators=HONEST)) as (b,):
                await wait_until(lambda: any(p.peer_id == a.peer_id for p in b.peers()), 20, "B connected to A")
                # Refused locally, before anything is sent: unregistered namespace, invalid, oversized.
                for key, value in (("/other/x", b"set:1"), ("/test-sets/x", b"garbage"),
                                   ("/test-sets/x", b"set:" + b"1" * 200_000)):
                    with pytest.raises(ValueError):
                        await b.put_record(key, value)
                await b.put_record("/test-sets/good", b"set:abc")
                assert await b.get_records("/test-sets/good") == [b"set:abc"]

                # Rogues put garbage under a fresh key and a worse value under the good one.
                rogue_cfg = config(bootstrap_multiaddrs=boot, record_validators=PERMISSIVE)
                async with started(rogue_cfg) as (rogue,):
                    await wait_until(lambda: any(p.peer_id == a.peer_id for p in rogue.peers()), 20, "rogue up")
                    await rogue.put_record("/test-sets/junk", b"garbage")
                    await rogue.put_record("/test-sets/good", b"set:a")
                    assert b"garbage" in await rogue.get_records("/test-sets/junk")

                # A fresh honest reader (empty local store) finds the good record through the
                # network; a fresh permissive reader shows what the honest holders kept: only the
                # good value, no garbage, not the worse value.
                async with started(config(bootstrap_multiaddrs=boot, record_validators=HONEST)) as (c,):
                    await wait_until(lambda: any(p.peer_id == a.peer_id for p in c.peers()), 20, "C up")
                    assert await c.get_records("/test-sets/good") == [b"set:abc"]
                    assert await c.get_records("/test-sets/junk") == []
                async with started(config(bootstrap_multiaddrs=boot, record_validators=PERMISSIVE)) as (spy,):
                    await wait_until(lambda: any(p.peer_id == a.peer_id for p in spy.peers()), 20, "spy up")
                    assert await spy.get_records("/test-sets/junk") == []
                    assert await spy.get_records("/test-sets/good") == [b"set:abc"]

    runner.run(scenario(), timeout=150)


def test_a_mesh_without_record_namespaces_refuses_every_record(runner: LoopRunner) -> None:
    async def scenario() -> None:
        async with started(config()) as (mesh,):
            with pytest.raises(ValueError):
                await mesh.put_record("/test-sets/x", b"set:1")
            with pytest.raises(ValueError):
                await mesh.put_record("no-namespace", b"set:1")

    runner.run(scenario())


def test_record_namespaces_are_checked_in_the_config() -> None:
    for bad in ("", "a/b", "pk", "ipns"):
        with pytest.raises(ValueError, match="namespace"):
            config(record_validators={bad: HONEST[NAMESPACE]})
