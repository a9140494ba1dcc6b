"""Oracle values of the aggregation spec, section 6 (matrix X, float64)."""

from __future__ import annotations

import pytest
import torch

from fednode.aggregators import attacks, build
from fednode.aggregators.nnm import nearest_neighbour_mixing

TOL = {"rtol": 1e-8, "atol": 1e-9}
HONEST_MEAN = [1.14, 2.0, 3.0, 4.0, 5.0]


def assert_vector(actual: torch.Tensor, expected: list[float], **tol: float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), **(tol or TOL))


# --- 6.1: ByzFL 0.0.11 values where ByzFL agrees with the textbook ------------------------------


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("mean", {}, [1.528571429, 1.0, 3.142857143, 2.571428571, 4.142857143]),
        ("median", {}, [1.1, 2.0, 3.0, 4.0, 5.0]),
        ("trimmed_mean", {"f": 2}, [1.1, 2.0, 3.0, 4.0, 5.0]),
        ("krum", {"f": 2}, [1.0, 2.0, 3.0, 4.0, 5.0]),
        ("multi_krum", {"f": 2}, HONEST_MEAN),
        ("geometric_median", {"nu": 1e-8}, [1.046808253, 2.004257684, 3.002754996, 3.978248192, 4.9937655]),
        ("centered_clipping", {"tau": 100.0}, [1.528571429, 1.0, 3.142857143, 2.571428571, 4.142857143]),
        (
            "centered_clipping",
            {"tau": 1.0},
            [0.1206046949, 0.2018401658, 0.3201967457, 0.404416798, 0.4802171732],
        ),
        (
            "centered_clipping",
            {"tau": 1.0, "iters": 3},
            [0.3546862539, 0.5930448463, 0.938543233, 1.189431952, 1.423359653],
        ),
        ("nnm", {"f": 2, "base": "trimmed_mean"}, HONEST_MEAN),
    ],
)
def test_byzfl_oracle(oracle_matrix: torch.Tensor, name: str, params: dict, expected: list[float]) -> None:
    # The oracle table prints about 10 significant digits.
    assert_vector(build(name, **params)(oracle_matrix).aggregate, expected, rtol=2e-9, atol=2e-9)


def test_centered_clipping_second_call_uses_previous_aggregate_as_centre(oracle_matrix: torch.Tensor) -> None:
    rule = build("centered_clipping", tau=1.0)
    first = rule(oracle_matrix)
    second = rule(oracle_matrix, center=first.aggregate)
    assert_vector(
        second.aggregate,
        [0.2388309415, 0.3995487921, 0.6330910597, 0.8009238259, 0.9545543303],
        rtol=2e-9,
        atol=2e-9,
    )
    # The rule keeps no state: the same call without a centre repeats the first result.
    torch.testing.assert_close(rule(oracle_matrix).aggregate, first.aggregate, rtol=0, atol=0)


def test_nnm_mixed_rows(oracle_matrix: torch.Tensor) -> None:
    mixed = nearest_neighbour_mixing(oracle_matrix, f=2)
    for row in range(5):
        assert_vector(mixed[row], HONEST_MEAN)
    assert_vector(mixed[5], [2.92, -0.42, 4.44, 1.18, 5.96])
    assert_vector(mixed[6], [-0.1, 3.02, 1.76, 4.84, 2.82])


def test_attack_oracles(oracle_matrix: torch.Tensor) -> None:
    honest = oracle_matrix[:5]
    assert_vector(attacks.build("sign_flip")(honest), [-1.14, -2.0, -3.0, -4.0, -5.0])
    assert_vector(attacks.build("ipm", eps=2.0)(honest), [-2.28, -4.0, -6.0, -8.0, -10.0])
    # ByzFL's ALittleIsEnough returns mu + 1.5 sigma (ddof=1); the textbook ALIE is mu - z sigma.
    byzfl_plus = torch.tensor(
        [1.485325933, 2.237170825, 3.237170825, 4.237170825, 5.237170825], dtype=torch.float64
    )
    expected = 2 * torch.tensor(HONEST_MEAN, dtype=torch.float64) - byzfl_plus
    torch.testing.assert_close(attacks.build("alie", z=1.5)(honest), expected, rtol=1e-8, atol=1e-9)


# --- 6.2: textbook definitions ------------------------------------------------------------------


def test_textbook_krum_scores(oracle_matrix: torch.Tensor) -> None:
    result = build("krum", f=2)(oracle_matrix)
    assert result.selected == (0,)
    assert_vector(result.scores, [0.33, 1.17, 0.51, 0.69, 0.74, 1467.32, 704.26])


def test_textbook_bulyan(oracle_matrix: torch.Tensor) -> None:
    result = build("bulyan", f=1)(oracle_matrix)
    assert_vector(result.aggregate, [1.1, 2.0, 3.0, 4.0, 5.0])
    assert result.selected == (0, 1, 2, 3, 4)


def test_gas_median_one_part(oracle_matrix: torch.Tensor) -> None:
    result = build("gas", f=2, base="median", p=1)(oracle_matrix)
    assert result.selected == (0, 1, 2, 3, 4)
    assert_vector(result.aggregate, HONEST_MEAN)
    assert_vector(
        result.scores, [0.1, 0.538516, 0.331662, 0.316228, 0.331662, 22.2083, 15.3366], rtol=2e-5, atol=2e-6
    )


def test_gas_median_one_coordinate_per_part(oracle_matrix: torch.Tensor) -> None:
    # p = d: the permutation is irrelevant, so no seed is needed.
    result = build("gas", f=2, base="median", p=5)(oracle_matrix)
    assert result.selected == (0, 1, 2, 3, 4)
    assert_vector(result.scores, [0.1, 1.1, 0.7, 0.6, 0.7, 46.9, 32.1])


@pytest.mark.parametrize("base", ["median", "trimmed_mean", "krum"])
@pytest.mark.parametrize("p", [1, 5])
def test_gas_bases_select_the_honest_rows(oracle_matrix: torch.Tensor, base: str, p: int) -> None:
    assert build("gas", f=2, base=base, p=p)(oracle_matrix).selected == (0, 1, 2, 3, 4)


# --- 6.3: Flag Aggregator, Gram form ------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"r": 1}, [0.916059159, 1.24534575, 2.19374996, 2.62353081, 3.58243432]),
        ({"r": 2}, [0.398017159, 0.703576532, 1.05397816, 1.40437051, 1.73688942]),
        ({"r": 2, "iters": 20}, [0.369408264, 0.701037909, 1.05659131, 1.39180952, 1.75149853]),
        ({"r": 2, "lam": 1.0}, [0.39786697, 0.703552727, 1.05356156, 1.40429067, 1.7372213]),
    ],
)
def test_flag_oracle(oracle_matrix: torch.Tensor, params: dict, expected: list[float]) -> None:
    assert_vector(build("flag", **params)(oracle_matrix).aggregate, expected, rtol=5e-9, atol=5e-9)


def test_flag_scores_flag_the_outliers(oracle_matrix: torch.Tensor) -> None:
    scores = build("flag", r=1)(oracle_matrix).scores
    assert scores is not None
    assert float(scores[:5].max()) < 0.01 < 0.9 < float(scores[5:].min())


def test_flag_norm_scale(oracle_matrix: torch.Tensor) -> None:
    reference = build("flag", r=2)(oracle_matrix).aggregate
    rescaled = build("flag", r=2, scale="norm")(oracle_matrix).aggregate
    norms = oracle_matrix.norm(dim=1).sort().values
    torch.testing.assert_close(rescaled, reference * float(norms[3]) * 2 / 7, rtol=1e-12, atol=0)


# --- float32 inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params"),
    [("median", {}), ("krum", {"f": 2}), ("multi_krum", {"f": 2}), ("bulyan", {"f": 1}), ("flag", {"r": 2})],
)
def test_float32_input_keeps_dtype_and_matches_float64(
    oracle_matrix: torch.Tensor, name: str, params: dict
) -> None:
    rule = build(name, **params)
    single = rule(oracle_matrix.float()).aggregate
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), rule(oracle_matrix).aggregate, rtol=1e-6, atol=1e-6)
