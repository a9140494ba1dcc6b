"""The heterogeneity emulation behind `training.slowdown` / `fednode launch --slowdowns`."""

from __future__ import annotations

import pytest
import torch

from fednode.node.tasks import TaskContext, load_task
from fednode.node.trainer import LocalTrainer, SlowdownEmulator


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


def test_the_multi_tensor_sgd_trains_exactly_like_the_per_parameter_loop() -> None:
    """The trainer's optimizer uses torch's multi-tensor update (faster on CPU for small models);
    the parameters after several rounds must be bit-identical to the per-parameter loop, so the
    speed-up changes no result."""
    task = load_task("fednode.node.tasks.digits:build_task", TaskContext(0, 4, 0), {"hidden": [64, 32]})

    class PerParameterTrainer(LocalTrainer):
        def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
            return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay, foreach=False)

    finals = []
    for trainer_class in (LocalTrainer, PerParameterTrainer):
        torch.manual_seed(3)
        model = task.model_factory()
        trainer = trainer_class(task, torch.device("cpu"), batch_size=16, lr=0.1, momentum=0.9, weight_decay=1e-4,
                                seed=5)
        for _ in range(3):
            trainer.train_round(model, steps=10)
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(finals[0], finals[1])
    assert trainer._optimizer(model).defaults["foreach"] is False
    assert LocalTrainer._optimizer(trainer, model).defaults["foreach"] is True
