"""UpdateCompressor: error-feedback accounting, DGC momentum and warm-up, checkpoint round trips."""

from __future__ import annotations

import io

import pytest
import torch

from fednode.node.compression import DecodeLimits, UpdateCompressor, available, build_codec, decode
from fednode.node.compression.sampling import derive_seed

LIMITS = DecodeLimits(max_numel=1 << 22)
N = 4_099
PARAMS = {"topk": {"fraction": 0.02}, "topk_int8": {"fraction": 0.02}, "randk": {"fraction": 0.02}}
LOSSY = [name for name in available() if name != "none"]


def compressor(name: str, **options: object) -> UpdateCompressor:
    return UpdateCompressor(build_codec(name, **PARAMS.get(name, {})), **options)  # type: ignore[arg-type]


def deltas(steps: int, n: int = N, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * (0.1 + t) for t in range(steps)]


def seed_for(step: int) -> int:
    return derive_seed("federation", "me", round_number=step)


def run(c: UpdateCompressor, inputs: list[torch.Tensor], first_step: int = 0) -> list[bytes]:
    return [
        c.compress(d, seed=seed_for(first_step + i), step=first_step + i).SerializeToString()
        for i, d in enumerate(inputs)
    ]


def zeros() -> torch.Tensor:
    return torch.zeros(N)


# ------------------------------------------------------------------ error feedback accounting


@pytest.mark.parametrize("name", LOSSY)
def test_sent_plus_new_residual_equals_input_plus_old_residual(name: str) -> None:
    c = compressor(name)
    old = zeros()
    for step, delta in enumerate(deltas(6)):
        decoded = decode(c.compress(delta, seed=seed_for(step), step=step), limits=LIMITS)
        new = c.residual
        assert new is not None
        # exact in float32, by construction: residual = (old + delta) - decoded
        accumulated = old + delta
        assert torch.equal(new, accumulated - decoded)
        # and in exact (float64) arithmetic up to the two float32 roundings involved
        lhs = decoded.double() + new.double()
        rhs = old.double() + delta.double()
        bound = 2.0**-24 * (accumulated.double().abs() + new.double().abs())
        assert bool(((lhs - rhs).abs() <= bound).all())
        old = new


@pytest.mark.parametrize("name", ["topk", "randk"])
def test_sparse_exact_codecs_account_exactly_over_many_steps(name: str) -> None:
    """For codecs that send exact float32 values, nothing is ever rounded: exact in float64 too."""
    c = compressor(name)
    inputs = [d.double().float() for d in deltas(10)]
    received = torch.zeros(N, dtype=torch.float64)
    fed = torch.zeros(N, dtype=torch.float64)
    for step, delta in enumerate(inputs):
        received += decode(c.compress(delta, seed=seed_for(step), step=step), limits=LIMITS).double()
        fed += delta.double()
        residual = c.residual
        assert residual is not None
        # each coordinate is either sent in full (residual 0) or entirely kept (decoded 0)
        assert torch.allclose(received + residual.double(), fed, rtol=0, atol=1e-5 * fed.abs().max().item())


def test_without_error_feedback_nothing_is_kept() -> None:
    c = compressor("topk", error_feedback=False)
    run(c, deltas(3))
    assert c.residual is None
    assert set(c.state_dict()) == {"version", "codec", "numel"}


def test_lossless_codec_keeps_no_residual() -> None:
    c = compressor("none")
    run(c, deltas(2))
    assert c.residual is None


def test_momentum_correction_accounting_and_masking() -> None:
    m = 0.5
    c = compressor("topk", momentum=m)
    velocity, residual = zeros(), zeros()
    for step, delta in enumerate(deltas(5)):
        payload = c.compress(delta, seed=None, step=step)
        decoded = decode(payload, limits=LIMITS)
        velocity = delta + m * velocity if step else delta.clone()
        accumulated = residual + velocity
        assert torch.equal(decoded[decoded != 0], accumulated[decoded != 0])
        residual = accumulated - decoded
        velocity[decoded != 0] = 0.0  # momentum factor masking
        state = c.state_dict()
        assert torch.equal(state["residual"], residual)  # type: ignore[arg-type]
        assert torch.equal(state["velocity"], velocity)  # type: ignore[arg-type]


def test_momentum_needs_a_sparse_codec_with_error_feedback() -> None:
    with pytest.raises(ValueError):
        compressor("int8", momentum=0.9)
    with pytest.raises(ValueError):
        compressor("topk", momentum=0.9, error_feedback=False)
    with pytest.raises(ValueError):
        compressor("topk", momentum=1.0)


def test_warmup_density_decays_geometrically_to_the_target() -> None:
    c = compressor("topk", warmup_steps=4, warmup_start_density=0.5)
    n = 10_000
    kept = [c.kept_for(step, n) for step in range(6)]
    assert kept == [5000, 2236, 1000, 447, 200, 200]
    payload_k = [c.compress(torch.randn(n), step=step).params.k for step in range(6)]
    assert payload_k == kept
    with pytest.raises(ValueError):
        compressor("int8", warmup_steps=3)


# ------------------------------------------------------------------ state_dict / restart


def through_checkpoint(state: dict[str, torch.Tensor | int]) -> dict[str, object]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("name", LOSSY)
def test_restart_from_state_dict_continues_identically(name: str) -> None:
    options = {"momentum": 0.3, "warmup_steps": 3} if name in PARAMS else {}
    inputs = deltas(8, seed=1)
    uninterrupted = compressor(name, **options)
    expected = run(uninterrupted, inputs)

    before_crash = compressor(name, **options)
    run(before_crash, inputs[:4])
    saved = through_checkpoint(before_crash.state_dict())
    del before_crash
    restarted = compressor(name, **options)
    restarted.load_state_dict(saved)
    assert run(restarted, inputs[4:], first_step=4) == expected[4:]


def test_state_dict_holds_only_tensors_and_ints_and_is_a_copy() -> None:
    c = compressor("powersgd")
    run(c, deltas(2))
    state = c.state_dict()
    assert all(isinstance(v, (torch.Tensor, int)) for v in state.values())
    assert {"residual", "aux.q"} <= set(state)
    state["residual"].zero_()  # type: ignore[union-attr]
    assert c.residual is not None and bool(c.residual.abs().sum() > 0)


def test_fresh_state_round_trips() -> None:
    c = compressor("topk")
    saved = through_checkpoint(c.state_dict())
    other = compressor("topk")
    other.load_state_dict(saved)
    assert other.numel == 0


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.update(version=2),
        lambda s: s.update(codec=1),
        lambda s: s.update(numel=-1),
        lambda s: s.update(numel=N + 1),
        lambda s: s.update(residual=torch.full((N,), float("nan"))),
        lambda s: s.update(residual=torch.zeros(N, dtype=torch.float64)),
        lambda s: s.update(residual=torch.zeros(N - 1)),
        lambda s: s.pop("residual"),
        lambda s: s.update(velocity=torch.zeros(N)),
        lambda s: s.update(surprise=1),
    ],
)
def test_bad_state_is_refused_and_changes_nothing(corrupt) -> None:  # type: ignore[no-untyped-def]
    c = compressor("topk")
    run(c, deltas(2))
    before = c.state_dict()
    bad = dict(before)
    corrupt(bad)
    with pytest.raises(ValueError):
        c.load_state_dict(bad)
    after = c.state_dict()
    assert before.keys() == after.keys()
    assert all(
        torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k] for k, v in before.items()
    )


def test_bad_input_is_refused_and_changes_nothing() -> None:
    c = compressor("randk")
    inputs = deltas(3)
    run(c, inputs[:2])
    before = c.state_dict()
    nan = inputs[2].clone()
    nan[7] = float("nan")
    for bad, seed in [
        (nan, seed_for(2)),
        (torch.zeros(N + 1), seed_for(2)),
        (inputs[2].double(), seed_for(2)),
        (inputs[2], None),  # randk without its seed
    ]:
        with pytest.raises(ValueError):
            c.compress(bad, seed=seed, step=2)
    after = c.state_dict()
    assert all(
        torch.equal(v, after[k]) if isinstance(v, torch.Tensor) else v == after[k] for k, v in before.items()
    )
    # and the compressor carries on exactly as one that never saw the bad calls
    clean = compressor("randk")
    run(clean, inputs[:2])
    assert run(c, inputs[2:], first_step=2) == run(clean, inputs[2:], first_step=2)


def test_reset_forgets_everything() -> None:
    c = compressor("topk", momentum=0.5)
    run(c, deltas(2))
    c.reset()
    assert c.numel == 0 and c.residual is None
    c.compress(torch.randn(10), step=0)  # a different size is fine after a reset
