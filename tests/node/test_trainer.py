"""The heterogeneity emulation behind `training.slowdown` / `fednode launch --slowdowns`."""

from __future__ import annotations

import pytest

from fednode.node.trainer import SlowdownEmulator


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
