"""`available()` and `build()`: the public contract the node and configuration files use."""

from __future__ import annotations

import torch

from fednode.aggregators import AggregationResult, available, build

EXPECTED_RULES = {
    "mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan", "geometric_median",
    "centered_clipping", "nnm", "flag", "gas",
}  # fmt: skip


def test_available_lists_every_rule_with_defaults() -> None:
    catalogue = {info.name: info for info in available()}
    assert set(catalogue) == EXPECTED_RULES
    for info in catalogue.values():
        assert info.description and info.precondition
        assert {"f", "max_norm", "max_norm_ratio"} <= set(info.parameters)
        assert info.parameters["f"] == 0
    assert catalogue["gas"].parameters == {
        "f": 0, "max_norm": 1e12, "max_norm_ratio": 1e4, "base": "bulyan", "p": 1000, "base_params": {},
        "within_parts": None,
    }  # fmt: skip
    assert catalogue["flag"].parameters["r"] is None
    assert catalogue["flag"].parameters["scale"] == "reference"
    assert catalogue["centered_clipping"].uses_center and catalogue["gas"].uses_seed
    assert catalogue["krum"].precondition == "n >= 2f+3"
    assert catalogue["bulyan"].precondition == "n >= 4f+3"
    assert catalogue["mean"].uses_weights and not catalogue["median"].uses_weights


def test_every_rule_builds_from_its_defaults_and_runs() -> None:
    updates = torch.randn(12, 30, generator=torch.Generator().manual_seed(1))
    for info in available():
        rule = build(info.name)
        result = rule(updates, seed=3)
        assert isinstance(result, AggregationResult)
        assert result.aggregate.shape == (30,) and result.aggregate.dtype == torch.float32
        assert result.rejected == ()


def test_documented_example() -> None:
    updates = torch.randn(10, 2410, generator=torch.Generator().manual_seed(2))
    updates[:2] = -10 * updates[2:].mean(dim=0)
    result = build("gas", f=2, base="krum", p=10)(updates, seed=42)
    assert result.selected is not None and not {0, 1} & set(result.selected)
    assert result.scores is not None and result.scores.shape == (10,)
    nnm = build("nnm", f=2, base="trimmed_mean")(updates)
    assert nnm.aggregate.shape == (2410,)


def test_wrappers_forward_base_parameters() -> None:
    updates = torch.randn(9, 40, generator=torch.Generator().manual_seed(4))
    wrapped = build("nnm", f=1, base="multi_krum", base_params={"m": 3})
    assert wrapped.base_rule == build("multi_krum", f=1, m=3)
    assert wrapped(updates).selected is not None and len(wrapped(updates).selected) == 3
    gas_cc = build("gas", f=1, base="centered_clipping", base_params={"tau": 0.5}, p=4)
    assert gas_cc.uses_center
    gas_cc(updates, seed=1, center=torch.zeros(40))


def test_the_krum_family_carries_its_known_weakness_and_wrappers_report_their_bases() -> None:
    catalogue = {info.name: info for info in available()}
    assert {name for name, info in catalogue.items() if info.caveat} == {"krum", "multi_krum", "bulyan"}
    assert "identical colluding updates" in catalogue["multi_krum"].caveat
    assert build("gas", f=1, base="krum", p=10).caveats() == catalogue["krum"].caveat
    assert build("nnm", f=1, base="multi_krum").caveats() == catalogue["multi_krum"].caveat
    assert build("gas", f=1, base="median").caveats() == "" and build("trimmed_mean", f=1).caveats() == ""
