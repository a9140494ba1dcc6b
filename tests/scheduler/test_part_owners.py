"""Owner assignment of the butterfly exchange's parts: deterministic, balanced, r distinct
owners per part, independent of the input order, different from round to round."""

from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.node.scheduler.owners import assign_owners, owners_seed

PEERS = [f"12D3KooPeer{i:03d}" for i in range(64)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    parts=st.integers(1, 90),
    data=st.data(),
    round_number=st.integers(0, 2**64 - 1),
)
def test_every_part_has_r_distinct_owners_and_the_load_is_balanced(
    n: int, parts: int, data: st.DataObject, round_number: int
) -> None:
    peers = PEERS[:n]
    replicas = data.draw(st.integers(1, n))
    assignment = assign_owners(peers, parts, replicas=replicas, federation_id="fed", round_number=round_number)
    assert assignment.parts == parts
    load: collections.Counter[str] = collections.Counter()
    for owners in assignment.owners:
        assert len(owners) == replicas and len(set(owners)) == replicas
        assert set(owners) <= set(peers)
        load.update(owners)
    counts = [load[peer] for peer in peers]
    assert sum(counts) == parts * replicas
    assert max(counts) - min(counts) <= 1  # floor or ceil of m r / n each
    for peer in peers:
        assert assignment.parts_of(peer) == tuple(j for j, o in enumerate(assignment.owners) if peer in o)
    shuffled = data.draw(st.permutations(peers))
    again = assign_owners(shuffled, parts, replicas=replicas, federation_id="fed", round_number=round_number)
    assert again == assignment


def test_the_assignment_changes_with_the_round_and_the_federation() -> None:
    def primaries(federation: str, round_number: int) -> tuple[str, ...]:
        assignment = assign_owners(PEERS[:16], 16, replicas=2, federation_id=federation, round_number=round_number)
        return tuple(owners[0] for owners in assignment.owners)

    assert primaries("fed", 7) == primaries("fed", 7)
    assert len({primaries("fed", r) for r in range(10)}) == 10
    assert primaries("fed", 7) != primaries("other", 7)
    # m = n with r = f + 1 = 2 (the default r): every member owns exactly two parts.
    assignment = assign_owners(PEERS[:16], 16, f=1, federation_id="fed", round_number=3)
    assert all(len(owners) == 2 for owners in assignment.owners)
    assert all(len(assignment.parts_of(peer)) == 2 for peer in PEERS[:16])


def test_seed_is_domain_separated_and_length_prefixed() -> None:
    assert owners_seed("ab", 1) != owners_seed("a", 1)
    assert owners_seed("fed", 1, b"g") != owners_seed("fed", 1)
    assert len(owners_seed("fed", 2**64 - 1)) == 32
    with pytest.raises(ValueError, match="uint64"):
        owners_seed("fed", -1)


@pytest.mark.parametrize(
    ("peers", "parts", "replicas", "message"),
    [
        ([], 1, 1, "at least one member"),
        (["a", "a"], 1, 1, "distinct"),
        (["a", "b"], 0, 1, "parts must be a positive int"),
        (["a", "b"], 2, 3, r"replicas must be in \[1, 2\]"),
        (["a", "b"], 2, 0, "replicas"),
        (["a", "b"], 2, None, r"replicas must be in \[1, 2\].*got 3"),  # f = 2 -> r = 3 > n
    ],
)
def test_bad_arguments_raise_one_line_errors(
    peers: list[str], parts: int, replicas: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        assign_owners(peers, parts, f=2, replicas=replicas, federation_id="fed", round_number=1)
    with pytest.raises(ValueError, match="f must be"):
        assign_owners(["a"], 1, f=-1, federation_id="fed", round_number=1)
