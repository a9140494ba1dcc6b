"""The partwise protocol pieces: the part layout, many column blocks per part, the spec's oracle
matrix over parts, the wire form of partials, session errors, and checking owners' claims."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from fednode.aggregators import AggregationError, PreconditionError, build
from fednode.aggregators.numerics import COLUMN_BLOCK
from fednode.aggregators.partwise import (
    GramOf,
    PartInput,
    PartLayout,
    Scan,
    Session,
    aggregate_by_parts,
    apply_decision,
    compute_partial,
    decode_partial,
    encode_partial,
)
from fednode.aggregators.partwise.verify import check_aggregated_part, check_partial

ALL_RULES: list[tuple[str, dict[str, Any]]] = [
    ("mean", {}),
    ("median", {"f": 2}),
    ("trimmed_mean", {"f": 2}),
    ("krum", {"f": 2}),
    ("multi_krum", {"f": 2}),
    ("bulyan", {"f": 1}),
    ("geometric_median", {"f": 2}),
    ("centered_clipping", {"tau": 5.0, "iters": 3}),
    ("nnm", {"f": 2, "base": "trimmed_mean"}),
    ("nnm", {"f": 2, "base": "krum"}),
    ("nnm", {"f": 1, "base": "centered_clipping"}),
    ("flag", {"iters": 3}),
    ("flag", {"r": 3, "lam": 1.0, "iters": 2}),
    ("gas", {"f": 2, "base": "krum", "p": 40}),
    ("gas", {"f": 1, "base": "bulyan", "p": 9}),
]


def built(name: str, params: dict[str, Any], m: int) -> Any:
    """The rule; GAS with its splits inside the m parts (what partwise GAS runs)."""
    return build(name, **params, **({"within_parts": m} if name == "gas" else {}))


def layout_bounds(d: int, m: int) -> list[tuple[int, int]]:
    return [(b.start, b.stop) for b in PartLayout(d, m).bounds]


def test_layout_is_contiguous_balanced_and_block_aligned_when_parts_are_large() -> None:
    assert layout_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert layout_bounds(5, 5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    for d, m in [(1, 1), (7, 7), (1000, 7), (8 * COLUMN_BLOCK * 3 - 1, 3), (10**6, 4), (10**8, 64)]:
        layout = PartLayout(d, m)
        bounds = layout.bounds
        assert bounds[0].start == 0 and bounds[-1].stop == d
        assert all(a.stop == b.start for a, b in itertools.pairwise(bounds))
        widths = [b.stop - b.start for b in bounds]
        assert min(widths) >= 1
        if layout.aligned:
            assert all(b.start % COLUMN_BLOCK == 0 for b in bounds)
            assert max(widths) - min(widths) <= COLUMN_BLOCK
        else:
            assert max(widths) - min(widths) <= 1
    assert PartLayout(10**6, 4).aligned and not PartLayout(10**6, 16).aligned
    with pytest.raises(AggregationError, match="at most 3 parts"):
        PartLayout(3, 4)
    with pytest.raises(AggregationError, match="positive int"):
        PartLayout(10, 0)


@pytest.mark.parametrize(("name", "params"), ALL_RULES, ids=lambda v: str(v))
def test_many_blocks_per_part_block_aligned(name: str, params: dict[str, Any]) -> None:
    """Parts of several column blocks (aligned): the mixed rows of NNM and every block's Gram
    contribution are then the all-to-all call's own; only the order of adding them differs."""
    d, m = 8 * COLUMN_BLOCK * 3 + 777, 3
    assert PartLayout(d, m).aligned
    generator = torch.Generator().manual_seed(11)
    rows = (torch.randn(9, d, generator=generator) + torch.randn(d, generator=generator)).to(torch.float32)
    rows[:2] = rows[:2] * 4.0 + 1.0
    rows[5] = rows[6]  # an exact duplicate
    rows[3, 70_000] = float("nan")  # rejected: its non-finite entry is in part 1 only
    rule = built(name, params, m)
    call: dict[str, Any] = {"seed": 7}
    if rule.uses_center:
        call["center"] = rows[4] * 0.5
    expected, got = rule(rows, **call), aggregate_by_parts(rule, rows, m, **call)
    assert got.rejected == expected.rejected == (3,)
    assert got.selected == expected.selected
    if name in ("mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "gas") or (
        name == "nnm" and params["base"] == "trimmed_mean"
    ):
        assert torch.equal(got.aggregate, expected.aggregate)
    else:
        torch.testing.assert_close(got.aggregate, expected.aggregate, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("m", [2, 3, 5])
def test_spec_oracle_matrix_over_parts(oracle_matrix: torch.Tensor, m: int) -> None:
    """Spec section 6 values, computed with every coordinate group owned by another part."""
    honest_mean = [1.14, 2.0, 3.0, 4.0, 5.0]
    cases = [
        ("median", {}, [1.1, 2.0, 3.0, 4.0, 5.0]),
        ("trimmed_mean", {"f": 2}, [1.1, 2.0, 3.0, 4.0, 5.0]),
        ("krum", {"f": 2}, [1.0, 2.0, 3.0, 4.0, 5.0]),
        ("multi_krum", {"f": 2}, honest_mean),
        ("bulyan", {"f": 1}, [1.1, 2.0, 3.0, 4.0, 5.0]),
        ("geometric_median", {"nu": 1e-8}, [1.046808253, 2.004257684, 3.002754996, 3.978248192, 4.9937655]),
        ("centered_clipping", {"tau": 1.0, "iters": 3}, [0.3546862539, 0.5930448463, 0.938543233, 1.189431952, 1.423359653]),
        ("nnm", {"f": 2, "base": "trimmed_mean"}, honest_mean),
        ("flag", {"r": 2, "iters": 20}, [0.369408264, 0.701037909, 1.05659131, 1.39180952, 1.75149853]),
        ("flag", {"r": 2, "lam": 1.0}, [0.39786697, 0.703552727, 1.05356156, 1.40429067, 1.7372213]),
        ("gas", {"f": 2, "base": "median", "p": 5, "within_parts": m}, honest_mean),
    ]  # fmt: skip
    for name, params, values in cases:
        result = aggregate_by_parts(build(name, **params), oracle_matrix, m)
        torch.testing.assert_close(result.aggregate, torch.tensor(values, dtype=torch.float64), rtol=2e-9, atol=2e-9)
    krum = aggregate_by_parts(build("krum", f=2), oracle_matrix, m)
    assert krum.selected == (0,)
    torch.testing.assert_close(
        krum.scores, torch.tensor([0.33, 1.17, 0.51, 0.69, 0.74, 1467.32, 704.26], dtype=torch.float64)
    )
    gas = aggregate_by_parts(build("gas", f=2, base="median", p=5, within_parts=m), oracle_matrix, m)
    assert gas.selected == (0, 1, 2, 3, 4)
    torch.testing.assert_close(gas.scores, torch.tensor([0.1, 1.1, 0.7, 0.6, 0.7, 46.9, 32.1], dtype=torch.float64))


def test_rejection_decomposes_over_parts() -> None:
    """Non-finite entries are flagged by the part that holds them; an overflowing squared norm
    (finite entries) and an absurd norm are summed over parts and rejected as too large."""
    generator = torch.Generator().manual_seed(3)
    rows = torch.randn(8, 40, generator=generator, dtype=torch.float64)
    rows[1, 39] = float("-inf")  # last part
    rows[2, :] = 1e200  # every part finite, squared norm overflows
    rows[4, 0] = 1e13  # absurd: over the 1e12 cap
    rows[6, 17] = float("nan")
    for m in (1, 4, 40):
        result = aggregate_by_parts(build("median", f=1), rows, m)
        assert result.rejected == (1, 2, 4, 6)
        assert torch.equal(result.aggregate, build("median", f=1)(rows).aggregate)
    with pytest.raises(PreconditionError, match="4 row"):
        aggregate_by_parts(build("krum", f=1), rows, 4)  # 4 rows left, Krum needs 5


def test_partials_round_trip_their_canonical_bytes() -> None:
    rows = torch.randn(6, 50, dtype=torch.float64)
    rows[2, 3] = float("nan")
    layout = PartLayout(50, 3)
    part = PartInput.cut(rows, layout, 1)
    rule = build("krum", f=1)
    session = Session(rule, layout, 6, dtype=rows.dtype)
    partial = compute_partial(session.request, PartInput.cut(rows, layout, 0))
    data = encode_partial(partial)
    decoded = decode_partial(data, session.expected_shapes(0))
    assert encode_partial(decoded) == data
    assert torch.equal(decoded.non_finite, partial.non_finite)
    assert torch.equal(decoded.squared_norms.isnan(), partial.squared_norms.isnan())
    assert partial.nbytes == len(data) == 5 + 2 * (2 + 4) + (2 + 8) + 6 * 8 + 6 + 36 * 8
    with pytest.raises(AggregationError, match="trailing"):
        decode_partial(data + b"\0", session.expected_shapes(0))
    with pytest.raises(AggregationError, match="truncated"):
        decode_partial(data[:-1], session.expected_shapes(0))
    with pytest.raises(AggregationError, match="bad tag"):
        decode_partial(b"XXXXX" + data[5:], session.expected_shapes(0))
    gram_only = compute_partial(GramOf(session_source := part_source(6), centered=True), part)
    with pytest.raises(AggregationError, match="squared_norms"):
        decode_partial(encode_partial(gram_only), session.expected_shapes(0))
    assert session_source.count == 6


def part_source(n: int) -> Any:
    from fednode.aggregators.partwise import Source

    return Source(tuple(range(n)))


def test_session_checks_the_form_of_what_it_receives() -> None:
    rows = torch.randn(7, 30)
    layout = PartLayout(30, 3)
    parts = [PartInput.cut(rows, layout, j) for j in range(3)]
    session = Session(build("krum", f=1), layout, 7, dtype=rows.dtype)
    assert isinstance(session.request, Scan)
    with pytest.raises(AggregationError, match="still waits"):
        _ = session.outcome
    partials = [compute_partial(session.request, part) for part in parts]
    with pytest.raises(AggregationError, match="expected 3 partials"):
        session.receive(partials[:2])
    with pytest.raises(AggregationError, match="part 2's partial field 'squared_norms'"):
        bad = compute_partial(session.request, PartInput.cut(rows[:6], PartLayout(30, 3), 2))
        session.receive([*partials[:2], bad])
    session.receive(partials)
    assert session.request is None and session.rounds == 1  # the scan's Gram matrix was enough
    with pytest.raises(AggregationError, match="no pending request"):
        session.receive(partials)
    aggregated = [apply_decision(session.outcome.decision, part) for part in parts]
    with pytest.raises(AggregationError, match="aggregated part 1"):
        session.assemble([aggregated[0], aggregated[1][:-1], aggregated[2]])
    assert torch.equal(session.assemble(aggregated).aggregate, build("krum", f=1)(rows).aggregate)
    with pytest.raises(AggregationError, match="does not use per-row weights"):
        Session(build("krum", f=1), layout, 7, weights=[1, 2, 3, 4, 5, 6, 7])
    with pytest.raises(AggregationError, match="seed must be"):
        Session(build("gas", f=1, base="krum", within_parts=3), layout, 7, seed=-1)


def test_gas_over_parts_draws_its_splits_inside_the_parts() -> None:
    rows = torch.randn(9, 400, dtype=torch.float64)
    rule = build("gas", f=2, base="krum", p=20)
    with pytest.raises(AggregationError, match="within_parts=4"):
        aggregate_by_parts(rule, rows, 4)
    inside = build("gas", f=2, base="krum", p=20, within_parts=4)
    with pytest.raises(AggregationError, match="pass seed"):
        aggregate_by_parts(inside, rows, 4)
    result = aggregate_by_parts(inside, rows, 4, seed=5)
    assert result.diagnostics == {"parts": 20.0}
    assert torch.equal(result.aggregate, inside(rows, seed=5).aggregate)
    # Every split lies inside one part: the owner of that part scores it alone.
    layout = PartLayout(400, 4)
    for split in inside.splits(400, 5):
        (home,) = [b for b in layout.bounds if b.start <= int(split.min()) < b.stop]
        assert home.start <= int(split.min()) and int(split.max()) < home.stop


@pytest.mark.parametrize(("name", "params"), ALL_RULES, ids=lambda v: str(v))
def test_an_honest_claim_passes_and_a_lie_is_caught(name: str, params: dict[str, Any]) -> None:
    """What an honest member does when owners disagree: recompute the part from the n inputs
    and compare with each owner's signed claim."""
    generator = torch.Generator().manual_seed(21)
    rows = torch.randn(9, 301, generator=generator)
    rows[0] = rows[0] * 3.0
    rows[4, 250] = float("inf")
    rule = built(name, params, 4)
    layout = PartLayout(301, 4)
    center = rows[5] * 0.5 if rule.uses_center else None
    parts = [PartInput.cut(rows, layout, j, center) for j in range(4)]
    session = Session(rule, layout, 9, dtype=rows.dtype, seed=3)
    while session.request is not None:
        partials = [compute_partial(session.request, part) for part in parts]
        for part, partial in zip(parts, partials, strict=True):
            honest = check_partial(session.request, part, partial, exact=True)
            assert honest.ok and honest.deviation == 0.0
            assert check_partial(session.request, part, partial).ok
            caught = check_partial(session.request, part, lied(partial, 1e-4))
            assert not caught.ok and caught.deviation > 1.0, caught.detail
            assert not check_partial(session.request, part, lied(partial, 1e-12), exact=True).ok
        session.receive(partials)
    decision = session.outcome.decision
    for part in parts:
        aggregated = apply_decision(decision, part)
        assert check_aggregated_part(decision, part, aggregated, exact=True).ok
        assert check_aggregated_part(decision, part, aggregated).ok
        tampered = aggregated.clone()
        tampered[len(tampered) // 2] += 1e-3 * (1.0 + float(tampered.abs().max()))
        assert not check_aggregated_part(decision, part, tampered).ok
        assert not check_aggregated_part(decision, part, tampered, exact=True).ok


def lied(partial: Any, relative: float) -> Any:
    """The partial with one value moved by `relative` (or a flipped flag). The tolerant check
    accepts moves within the rounding an honest owner on another CPU could produce: with NNM's
    float32-stored mixed rows, up to a few 1e-7 of a Gram entry."""
    from dataclasses import replace

    for name in ("gram", "distances", "squared_norms"):
        value = getattr(partial, name)
        if value is not None and bool(torch.isfinite(value).all()):
            changed = value.clone()
            index = (0,) * changed.dim()
            changed[index] = changed[index] * (1 + relative) + relative
            return replace(partial, **{name: changed})
    flags = partial.non_finite.clone()
    flags[0] = ~flags[0]
    return replace(partial, non_finite=flags)


@pytest.mark.parametrize(
    ("name", "params", "rounds"),
    [
        ("krum", {"f": 1}, 2),  # the scan, then the kept rows' Gram matrix
        ("gas", {"f": 1, "base": "krum", "p": 12, "within_parts": 3}, 2),  # the scan, the split scores
        ("nnm", {"f": 1, "base": "krum"}, 3),  # the scan, the kept rows' Gram, the mixed rows' Gram
    ],
)
def test_a_session_fed_with_decoded_bytes_returns_the_call_result(
    name: str, params: dict[str, Any], rounds: int
) -> None:
    """Every partial through its canonical bytes, as over the wire: the result is the call's."""
    generator = torch.Generator().manual_seed(8)
    rows = torch.randn(8, 90, generator=generator)
    rows[6, 40] = float("nan")  # a rejected row: Krum then asks for the kept rows' Gram matrix
    rule = build(name, **params)
    layout = PartLayout(90, 3)
    parts = [PartInput.cut(rows, layout, j) for j in range(3)]
    session = Session(rule, layout, 8, dtype=rows.dtype, seed=4)
    while session.request is not None:
        wire = [encode_partial(compute_partial(session.request, part)) for part in parts]
        session.receive([decode_partial(data, session.expected_shapes(j)) for j, data in enumerate(wire)])
    expected = rule(rows, seed=4)
    result = session.assemble([apply_decision(session.outcome.decision, part) for part in parts])
    assert result.rejected == expected.rejected == (6,)
    assert result.selected == expected.selected
    # NNM's mixed rows on parts that are not block-aligned: one float32 rounding apart at most.
    tolerance = 4 * torch.finfo(torch.float32).eps if name == "nnm" else 0.0
    torch.testing.assert_close(result.aggregate, expected.aggregate, rtol=tolerance, atol=tolerance)
    assert session.rounds == rounds
