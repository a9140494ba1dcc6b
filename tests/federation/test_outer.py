"""The outer optimizers (node/federation/outer.py): each step against a reference implementation
on fixed inputs, determinism, the ordered sequence FedCompass uses, and the state's encodings."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
import torch

from fednode.node.federation.outer import (
    OPTIMIZERS,
    OuterConfig,
    OuterSequence,
    OuterStateError,
    apply_outer,
    initial_state,
    outer_step,
    state_from_dict,
    state_from_proto,
    state_to_dict,
    state_to_proto,
)

NUMEL = 257  # odd: vectorised kernels' tails are exercised


def _aggregates(steps: int, seed: int = 0, numel: int = NUMEL) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    # Mixed magnitudes and exact zeros, as real deltas have (e.g. never-updated embeddings).
    rows = []
    for _ in range(steps):
        row = torch.randn(numel, generator=generator, dtype=torch.float64) * torch.logspace(-4, 0, numel, dtype=torch.float64)
        row[::17] = 0.0
        rows.append(row)
    return rows


def _ours(config: OuterConfig, parameters: torch.Tensor, aggregates: list[torch.Tensor]) -> torch.Tensor:
    state = initial_state(config, parameters.numel())
    for aggregate in aggregates:
        update, state = outer_step(config, state, -aggregate)
        parameters = parameters + update
    return parameters


def _torch_reference(config: OuterConfig, parameters: torch.Tensor, aggregates: list[torch.Tensor]) -> torch.Tensor:
    """torch.optim on the negated pseudo-gradient: the server optimizers of Reddi et al. as torch
    implements them (foreach off: the plain per-tensor loop)."""
    parameter = torch.nn.Parameter(parameters.clone())
    if config.name in ("sgd", "momentum", "nesterov"):
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            [parameter], lr=config.lr, momentum=0.0 if config.name == "sgd" else config.momentum,
            nesterov=config.name == "nesterov", foreach=False)
    elif config.name == "adam":
        optimizer = torch.optim.Adam([parameter], lr=config.lr, betas=(config.beta1, config.beta2),
                                     eps=config.epsilon, foreach=False)
    elif config.name == "adagrad":
        optimizer = torch.optim.Adagrad([parameter], lr=config.lr, eps=config.epsilon, foreach=False)
    else:
        raise AssertionError(config.name)
    for aggregate in aggregates:
        optimizer.zero_grad()
        parameter.grad = -aggregate.clone()
        optimizer.step()
    return parameter.detach()


def _yogi_reference(config: OuterConfig, parameters: np.ndarray, aggregates: list[torch.Tensor]) -> np.ndarray:
    """Yogi (Zaheer et al. 2018; Reddi et al. 2021 as FedYogi), element by element in plain
    Python floats, with Adam's bias correction as documented."""
    x = [float(v) for v in parameters]
    m = [0.0] * len(x)
    v = [0.0] * len(x)
    b1, b2, eps, lr = config.beta1, config.beta2, config.epsilon, config.lr
    for t, aggregate in enumerate(aggregates, start=1):
        for i, delta in enumerate(aggregate.tolist()):
            g = -delta
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = v[i] - (1 - b2) * g * g * float(np.sign(v[i] - g * g))
            m_hat = m[i] / (1 - b1**t)
            v_hat = v[i] / (1 - b2**t)
            x[i] = x[i] - lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(x)


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "adam", "adagrad"])
@pytest.mark.parametrize("lr", [0.0, 0.37])
def test_each_step_matches_torch_optim_on_the_negated_pseudo_gradient(name: str, lr: float) -> None:
    config = OuterConfig.build(name, lr=lr, momentum=0.8, betas=(0.85, 0.95), epsilon=1e-4)
    start = torch.linspace(-1, 1, NUMEL, dtype=torch.float64)
    aggregates = _aggregates(12)
    ours = _ours(config, start, aggregates)
    reference = _torch_reference(config, start, aggregates)
    assert not torch.equal(ours, start)
    # Same formulas; torch fuses some operations (lerp, addcmul, addcdiv), so the last bits differ.
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-14)


def test_yogi_matches_the_papers_update_rule() -> None:
    config = OuterConfig.build("yogi", lr=0.05, betas=(0.9, 0.99), epsilon=1e-3)
    start = torch.linspace(-1, 1, NUMEL, dtype=torch.float64)
    aggregates = _aggregates(10, seed=3)
    ours = _ours(config, start, aggregates)
    reference = _yogi_reference(config, start.numpy(), aggregates)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-12, atol=1e-14)
    # ... and it is not Adam (the second moment differs once gradients shrink).
    adam = _ours(OuterConfig.build("adam", lr=0.05, betas=(0.9, 0.99), epsilon=1e-3), start, aggregates)
    assert not torch.allclose(ours, adam, rtol=1e-9, atol=0.0)


def test_plain_fedavg_adds_the_aggregate_exactly_as_before_and_keeps_no_state() -> None:
    config = OuterConfig.build("sgd")
    assert config.is_identity and config.digest() == "" and not config.stateful
    parameters = torch.randn(NUMEL)
    aggregate = torch.randn(NUMEL) * 1e-3
    state = initial_state(config, NUMEL)
    moved, after = apply_outer(config, state, parameters, aggregate)
    assert torch.equal(moved, parameters + aggregate) and moved.dtype == torch.float32
    assert after is state


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_steps_are_bit_identical_whatever_the_threads_or_the_memory_alignment(name: str) -> None:
    """Every member must get the same bits: element-wise IEEE operations, no fused kernels."""
    config = OuterConfig.build(name, lr=0.1)
    numel = 100_003  # large enough for torch to split the work across threads
    aggregates = [a.to(torch.float32) for a in _aggregates(4, seed=5, numel=numel)]
    threads = torch.get_num_threads()

    def run(count: int, offset: int) -> tuple[torch.Tensor, object]:
        torch.set_num_threads(count)
        # offset 1: the same values one element into their storage (another alignment)
        parameters = torch.empty(numel + offset)[offset:]
        parameters.copy_(torch.linspace(-1, 1, numel))
        state = initial_state(config, numel)
        for aggregate in aggregates:
            shifted = torch.empty(numel + offset)[offset:]
            shifted.copy_(aggregate)
            parameters, state = apply_outer(config, state, parameters, shifted)
        return parameters, state

    try:
        results = [run(1, 0), run(max(2, threads), 0), run(1, 1)]
    finally:
        torch.set_num_threads(threads)
    for (parameters, state), (other, other_state) in itertools.pairwise(results):
        assert torch.equal(parameters, other)
        assert state.steps == other_state.steps and state.beta1_power == other_state.beta1_power  # type: ignore[attr-defined]
        for key in state.buffers:  # type: ignore[attr-defined]
            assert torch.equal(state.buffers[key], other_state.buffers[key])  # type: ignore[attr-defined]


def test_a_step_never_changes_the_state_it_was_given() -> None:
    config = OuterConfig.build("adam")
    state = initial_state(config, NUMEL)
    _, after = outer_step(config, state, torch.ones(NUMEL, dtype=torch.float64))
    assert all(torch.count_nonzero(b) == 0 for b in state.buffers.values()) and state.steps == 0
    assert after.steps == 1 and after.beta1_power == 0.9


def _sum_in_order(config: OuterConfig, items: list[tuple[tuple[int, bytes], torch.Tensor]]) -> tuple[torch.Tensor, object]:
    state = initial_state(config, NUMEL)
    total = torch.zeros(NUMEL, dtype=torch.float64)
    for _, gradient in sorted(items, key=lambda item: item[0]):
        update, state = outer_step(config, state, gradient)
        total = total + update
    return total, state


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adam", "yogi", "adagrad"])
def test_the_sequence_gives_the_canonical_order_whatever_the_arrival_order(name: str) -> None:
    """FedCompass: members hear groups in different orders; replaying keeps them identical."""
    config = OuterConfig.build(name, lr=0.1)
    items = [((version, bytes([i])), -g) for i, (version, g) in enumerate(zip([3, 1, 2, 2, 5, 4], _aggregates(6, 9), strict=True))]
    expected_total, expected_state = _sum_in_order(config, items)
    for seed in range(6):
        order = list(items)
        random.Random(seed).shuffle(order)
        sequence = OuterSequence(config, initial_state(config, NUMEL), window=8)
        total = torch.zeros(NUMEL, dtype=torch.float64)
        for key, gradient in order:
            for change in sequence.change(add=(key, gradient)):
                if change.old is not None:
                    total = total - change.old
                if change.new is not None:
                    total = total + change.new
        assert sequence.keys() == sorted(key for key, _ in items)
        # The sum moves by differences of the same float64 values, so compare closely here; the
        # runner keeps its model in int64 fixed point, where add and subtract are exact.
        torch.testing.assert_close(total, expected_total, rtol=0, atol=1e-15)
        for buffer in expected_state.buffers:  # type: ignore[attr-defined]
            assert torch.equal(sequence.state.buffers[buffer], expected_state.buffers[buffer])  # type: ignore[attr-defined]


def test_the_sequence_replaces_a_step_and_settles_beyond_its_window() -> None:
    config = OuterConfig.build("momentum", lr=0.5)
    gradients = _aggregates(5, 11)
    sequence = OuterSequence(config, initial_state(config, NUMEL), window=3)
    for i in range(4):
        sequence.change(add=((i, b""), gradients[i]))
    assert len(sequence) == 3 and sequence.keys()[0] == (1, b"")
    # A swap (another manifest for a group: other key, other aggregate): the old step goes away.
    changes = sequence.change(remove=(2, b""), add=((2, b"x"), gradients[4]))
    assert [c.key for c in changes] == [(2, b""), (2, b"x"), (3, b"")]
    assert changes[0].new is None and changes[1].old is None and changes[2].old is not None
    _, expected_state = _sum_in_order(config, [((0, b""), gradients[0]), ((1, b""), gradients[1]),
                                               ((2, b"x"), gradients[4]), ((3, b""), gradients[3])])
    assert torch.equal(sequence.state.buffers["momentum"], expected_state.buffers["momentum"])  # type: ignore[attr-defined]
    sequence.reset(initial_state(config, NUMEL))
    assert len(sequence) == 0 and torch.count_nonzero(sequence.state.buffers["momentum"]) == 0


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_round_trips_through_checkpoint_and_wire_encodings(name: str) -> None:
    config = OuterConfig.build(name, lr=0.2)
    state = initial_state(config, NUMEL)
    for aggregate in _aggregates(3, 2):
        _, state = outer_step(config, state, -aggregate)
    for restored in (state_from_dict(config, state_to_dict(config, state), NUMEL),
                     state_from_proto(config, type(state_to_proto(config, state)).FromString(
                         state_to_proto(config, state).SerializeToString()), NUMEL)):
        assert restored.steps == state.steps and restored.beta2_power == state.beta2_power
        assert set(restored.buffers) == set(state.buffers)
        for key in state.buffers:
            assert torch.equal(restored.buffers[key], state.buffers[key])


def test_unusable_states_are_refused_with_a_reason() -> None:
    config = OuterConfig.build("adam")
    state = initial_state(config, NUMEL)
    message = state_to_proto(config, state)
    with pytest.raises(OuterStateError, match="other settings"):
        state_from_proto(OuterConfig.build("adam", lr=0.5), message, NUMEL)
    with pytest.raises(OuterStateError, match="elements"):
        state_from_proto(config, message, NUMEL + 1)
    poisoned = state_to_dict(config, state)
    poisoned["buffers"]["exp_avg"][3] = float("nan")
    with pytest.raises(OuterStateError, match="NaN"):
        state_from_dict(config, poisoned, NUMEL)
    with pytest.raises(OuterStateError, match="buffers"):
        state_from_dict(OuterConfig.build("adagrad"), {**state_to_dict(config, state), "optimizer": "adagrad",
                                                        "digest": OuterConfig.build("adagrad").digest()}, NUMEL)


def test_settings_are_validated_and_digests_tell_them_apart() -> None:
    assert OuterConfig.build("nesterov").lr == 0.7 and OuterConfig.build("NESTEROV ").name == "nesterov"
    for bad, match in ((dict(name="lamb"), "unknown outer optimizer"), (dict(name="adam", lr=-1.0), "outer_lr"),
                       (dict(name="momentum", momentum=1.0), "outer_momentum"),
                       (dict(name="adam", betas=(0.9, 1.5)), "outer_betas"),
                       (dict(name="adam", betas=(0.9,)), "two numbers"),
                       (dict(name="adagrad", epsilon=0.0), "outer_epsilon"),
                       (dict(name="adam", lr=float("nan")), "outer_lr")):
        with pytest.raises(ValueError, match=match):
            OuterConfig.build(**bad)  # type: ignore[arg-type]
    # Parameters an optimizer does not use do not change it.
    assert OuterConfig.build("adam", momentum=0.3) == OuterConfig.build("adam")
    digests = {OuterConfig.build(n).digest() for n in OPTIMIZERS} | {OuterConfig.build("adam", lr=0.02).digest()}
    assert len(digests) == len(OPTIMIZERS) + 1 and "" in digests  # sgd lr 1 is FedAvg: ""
    assert OuterConfig.build("sgd", lr=0.5).digest() != ""
