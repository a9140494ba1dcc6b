"""The local trainer: its SGD, and the heterogeneity emulation behind `training.slowdown` /
`fednode launch --slowdowns`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch

from fednode.node.tasks import TaskContext, load_task
from fednode.node.trainer import LocalTrainer, MomentumSGD, SlowdownEmulator


def test_a_slowdown_multiplies_the_uncontended_step_not_the_waiting() -> None:
    emulator = SlowdownEmulator(8.0)
    assert emulator.pause_after(0.010) == pytest.approx(0.070)  # 7 x the step: 8 x in total
    # A step that took 5x longer because co-located daemons held the CPU: the pause stays 7 x the
    # machine's own step time, as a separate slower machine would not wait for them.
    assert emulator.pause_after(0.050) == pytest.approx(0.070)
    assert emulator.pause_after(0.004) == pytest.approx(0.028)  # a faster step lowers the estimate
    assert emulator.fastest_step == pytest.approx(0.004)


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_no_slowdown_means_no_pause(factor: float) -> None:
    emulator = SlowdownEmulator(factor)
    assert emulator.pause_after(0.010) == 0.0
    assert emulator.fastest_step is None


def test_a_nominal_step_pads_every_step_to_its_budget_without_calibration() -> None:
    """`training.emulated_step_ms`: a device whose step takes nominal x factor, factor 1 too;
    the pause is what is left of that budget, none when the step overran it."""
    emulator = SlowdownEmulator(4.0, nominal_step=0.003)
    assert not emulator.needs_calibration
    assert emulator.pause_after(0.001) == pytest.approx(0.011)
    assert emulator.pause_after(0.020) == 0.0
    assert emulator.fastest_step is None
    assert SlowdownEmulator(1.0, nominal_step=0.003).pause_after(0.001) == pytest.approx(0.002)
    assert SlowdownEmulator(1.0).pause_after(0.001) == 0.0


def test_a_slowed_trainer_is_calibrated_before_its_first_round_without_touching_training() -> None:
    """The first round's pauses must scale a warm step, not the cold first steps; calibrating
    must not consume the training generator or the global RNG (runs stay reproducible)."""
    task = load_task("fednode.node.tasks.digits:build_task", TaskContext(0, 4, 0), {"hidden": [32]})

    def trainer(slowdown: float) -> LocalTrainer:
        return LocalTrainer(task, torch.device("cpu"), batch_size=16, lr=0.1, momentum=0.9, seed=5, slowdown=slowdown)

    torch.manual_seed(11)
    plain = trainer(1.0)
    global_state = torch.random.get_rng_state()
    torch.manual_seed(11)
    slowed = trainer(4.0)
    assert torch.equal(torch.random.get_rng_state(), global_state)
    assert plain._slowdown.fastest_step is None
    assert slowed._slowdown.fastest_step is not None and slowed._slowdown.fastest_step > 0.0
    assert torch.equal(plain.generator_state(), slowed.generator_state())
    assert LocalTrainer(task, torch.device("cpu"), batch_size=16, lr=0.1, momentum=0.9, seed=5, slowdown=4.0,
                        emulated_step_seconds=0.003)._slowdown.fastest_step is None  # nothing to calibrate
    # Same data order and same model: the slowed trainer only takes longer.
    models = [task.model_factory(), task.model_factory()]
    results = [t.train_round(m, 3) for t, m in zip((plain, slowed), models, strict=True)]
    assert results[0].mean_loss == results[1].mean_loss
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True))


class _TorchOptimTrainer(LocalTrainer):
    """The trainer with torch.optim.SGD in place of MomentumSGD (the reference it must match)."""

    foreach = True

    def _optimizer(self, model: torch.nn.Module) -> Any:
        return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay, foreach=self.foreach)


class _PerParameterTrainer(_TorchOptimTrainer):
    foreach = False


@pytest.mark.parametrize("reference", [_TorchOptimTrainer, _PerParameterTrainer], ids=["foreach", "per_parameter"])
def test_the_trainers_sgd_trains_exactly_like_torch_optim_sgd(reference: type[LocalTrainer]) -> None:
    """MomentumSGD (torch's SGD update without torch.optim.SGD's compiler-stack wrapper) must
    leave bit-identical parameters after several rounds, momentum and weight decay included,
    so the saving changes no result."""
    task = load_task("fednode.node.tasks.digits:build_task", TaskContext(0, 4, 0), {"hidden": [64, 32]})
    finals = []
    for trainer_class in (LocalTrainer, reference):
        torch.manual_seed(3)
        model = task.model_factory()
        trainer = trainer_class(task, torch.device("cpu"), batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                seed=5)
        for _ in range(3):
            trainer.train_round(model, steps=10)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert not torch.equal(finals[0], torch.cat([p.detach().flatten() for p in task.model_factory().parameters()]))
    assert torch.equal(finals[0], finals[1])


def test_a_parameter_without_a_gradient_keeps_its_value_and_momentum() -> None:
    """As torch.optim.SGD: a parameter that got no gradient in a step is not moved, and its
    momentum buffer is neither created nor decayed."""
    used, unused = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    optimizer = MomentumSGD([used, unused], lr=0.5, momentum=0.9, weight_decay=0.1)
    (used * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    optimizer.step()
    # weight decay adds 0.1 x 1 to each gradient; the first momentum buffer is that gradient
    torch.testing.assert_close(used.detach(), torch.tensor([1 - 0.5 * 1.1, 1 - 0.5 * 2.1, 1 - 0.5 * 3.1]))
    assert torch.equal(unused.detach(), torch.ones(2))
    assert optimizer.momentum_buffers[1] is None
    optimizer.zero_grad()
    assert used.grad is None


def test_training_aggregating_and_coding_never_load_torchs_compiler_stack() -> None:
    """torch.optim's optimizers import torch._dynamo (+71 MB resident, seconds of start-up) on
    their first step; a daemon's training, evaluation, codecs and every aggregation rule must
    not. Run in a fresh interpreter: this test process may have loaded it already."""
    script = textwrap.dedent('''
        import sys, torch
        from fednode.aggregators import available as available_rules, build as build_aggregator
        from fednode.node.compression import DecodeLimits, UpdateCompressor, build_codec, decode
        from fednode.node.compression import available as available_codecs
        from fednode.node.tasks import TaskContext, load_task
        from fednode.node.trainer import LocalTrainer
        task = load_task("fednode.node.tasks.digits:build_task", TaskContext(0, 4, 0), {})
        trainer = LocalTrainer(task, torch.device("cpu"), batch_size=16, lr=0.1, momentum=0.9, seed=1, slowdown=2.0)
        model = task.model_factory()
        assert trainer.train_round(model, 5).steps == 5
        trainer.evaluate(model)
        rows = torch.randn(7, 300, dtype=torch.float64)
        for rule in available_rules():
            build_aggregator(rule.name, f=1)(rows, seed=7)
        for codec in available_codecs():
            params = {"fraction": 0.1} if "top" in codec or "rand" in codec else {}
            compressor = UpdateCompressor(build_codec(codec, **params), error_feedback=True)
            payload = compressor.compress(rows[0].float(), seed=1, step=1)
            decode(payload, limits=DecodeLimits(max_numel=300), expected_numel=300)
        loaded = sorted(m for m in sys.modules if m.startswith(("torch._dynamo", "torch._inductor", "sympy")))
        print("LOADED", loaded)
        assert not loaded, loaded
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "LOADED []" in done.stdout
