"""The relay is no open proxy: admission hook, circuit limits; and the reachability report.

Real meshes on 127.0.0.1 (the NAT behaviour itself is proven in tests/netns); the report's
wording is checked on plain values.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from fednode.node.identity import Identity
from fednode.node.mesh import DialError, FetchError, Reachability, RelayLimits
from fednode.node.mesh.reachability import ReachabilityFacts, describe_reachability

from .conftest import LoopRunner, config, started, wait_until

pytestmark = pytest.mark.timeout(120)


def circuits(mesh) -> list[str]:
    return [a for a in mesh.listen_multiaddrs() if "/p2p-circuit/" in a]


def test_admission_hook_refuses_non_members_reservations_and_circuits(runner: LoopRunner) -> None:
    members: set[str] = set()
    asked: list[str] = []

    def admission(peer_id: str) -> bool:
        asked.append(peer_id)
        return peer_id in members

    async def scenario() -> None:
        async with started(config(relay_hop=True, relay_admission=admission, enable_dcutr=False)) as (relay,):
            boot = tuple(relay.listen_multiaddrs())
            member_cfg = config(bootstrap_multiaddrs=boot, enable_dcutr=False)
            outsider_cfg = config(bootstrap_multiaddrs=boot, enable_dcutr=False)
            members.add(Identity.from_seed(member_cfg.identity_key).peer_id)
            async with started(member_cfg, outsider_cfg, config(enable_dcutr=False)) as (member, outsider, dialer):
                # The member holds a slot; the outsider was refused one and advertises no circuit.
                assert circuits(member), member.listen_multiaddrs()
                assert not circuits(outsider), outsider.listen_multiaddrs()
                assert outsider.peer_id in asked
                # A non-member cannot use the relay to reach a member either.
                with pytest.raises(DialError):
                    await dialer.connect(circuits(member)[0])
                # Admitted later (membership granted at run time): the circuit works.
                members.add(dialer.peer_id)
                assert await dialer.connect(circuits(member)[0]) == member.peer_id
                assert {p.peer_id: p.connection for p in dialer.peers()}[member.peer_id] == "relayed"

    runner.run(scenario())


def test_a_failing_hook_refuses_and_none_opens_the_relay(runner: LoopRunner) -> None:
    def broken(peer_id: str) -> bool:
        raise RuntimeError("membership store unavailable")

    async def scenario() -> None:
        async with started(config(relay_hop=True, relay_admission=broken, enable_dcutr=False)) as (relay,):
            boot = tuple(relay.listen_multiaddrs())
            async with started(config(bootstrap_multiaddrs=boot, enable_dcutr=False)) as (refused,):
                assert not circuits(refused)  # fail closed
            relay.set_relay_admission(None)  # no membership: an open relay (the default)
            async with started(config(bootstrap_multiaddrs=boot, enable_dcutr=False)) as (admitted,):
                assert circuits(admitted)

    runner.run(scenario())


@pytest.mark.parametrize("limit", [None, 1_000_000])
def test_circuit_byte_limit_stops_a_relayed_transfer(runner: LoopRunner, limit: int | None) -> None:
    small = os.urandom(200_000)
    large = os.urandom(3_000_000)
    limits = RelayLimits() if limit is None else RelayLimits(max_circuit_bytes=limit)

    async def scenario() -> None:
        async with started(config(relay_hop=True, relay_limits=limits, enable_dcutr=False)) as (relay,):
            boot = tuple(relay.listen_multiaddrs())
            async with started(config(bootstrap_multiaddrs=boot, enable_dcutr=False, io_timeout_s=3.0),
                               config(enable_dcutr=False, io_timeout_s=3.0)) as (behind, dialer):
                for data in (small, large):
                    behind.serve_blob(hashlib.sha256(data).digest(), data)
                await dialer.connect(circuits(behind)[0])
                assert await dialer.fetch_blob(hashlib.sha256(small).digest(), [behind.peer_id]) == small
                if limit is None:  # the control: the same transfer fits the default 256 MiB
                    assert await dialer.fetch_blob(hashlib.sha256(large).digest(), [behind.peer_id]) == large
                else:
                    with pytest.raises(FetchError):
                        await dialer.fetch_blob(hashlib.sha256(large).digest(), [behind.peer_id])

    runner.run(scenario())


def test_reachability_report_of_a_running_mesh(runner: LoopRunner) -> None:
    async def scenario() -> None:
        async with started(config(relay_hop=True, autonat_confirmations=1)) as (relay,):
            boot = tuple(relay.listen_multiaddrs())
            async with started(config(bootstrap_multiaddrs=boot, autonat_confirmations=1)) as (peer,):
                reachability = await peer.wait_for_reachability(timeout=30)
                # On loopback the relay dials us back: public, and the message says where to dial.
                assert reachability.status == "public"
                text = peer.reachability_report()
                assert text.startswith("reachable (public)") and peer.listen_multiaddrs()[0] in text
                await wait_until(lambda: relay.reachability().status == "public", 30, "the relay's verdict")
                assert "serving as a circuit relay" in relay.reachability_report()

    runner.run(scenario())


ADDR = "/ip4/198.18.0.1/tcp/4001/p2p/12D3KooWRelay000000000000000000000000000000000000000"
CIRCUIT = f"{ADDR}/p2p-circuit"


def facts(status: str, public: int = 0, private: int = 0, relay_addrs: tuple[str, ...] = (),
          bootstrap: bool = True, relay_hop: bool = False) -> ReachabilityFacts:
    return ReachabilityFacts(
        reachability=Reachability(status, public, private, relay_addrs, None),  # type: ignore[arg-type]
        direct_addrs=("/ip4/10.1.0.2/tcp/4001/p2p/12D3KooWMe",), relay_hop=relay_hop,
        bootstrap_configured=bootstrap, relays=("12D3KooWRelay000000000000000000000000000000000000000",) if
        relay_addrs else (), listen_port=4001)


def test_report_wording_is_actionable() -> None:
    public = describe_reachability(facts("public", public=2))
    assert public.startswith("reachable (public): 2 of 2 peer(s)") and "/ip4/10.1.0.2/tcp/4001" in public
    natted = describe_reachability(facts("private", private=1, relay_addrs=(CIRCUIT,)))
    assert natted.startswith("behind NAT (private)") and CIRCUIT in natted and "hole punching" in natted
    assert "forward TCP port 4001" in natted
    stranded = describe_reachability(facts("private", private=1))
    assert "no relay slot" in stranded and "mesh.relay_hop = true" in stranded
    alone = describe_reachability(facts("private", private=1, bootstrap=False))
    assert "mesh.bootstrap is empty" in alone
    waiting = describe_reachability(facts("unknown", relay_addrs=(CIRCUIT,)))
    assert waiting.startswith("reachability unknown yet") and "relay slot" in waiting
