"""Byzantine attacks for simulations and tests (spec section 4).

Update attacks take the honest rows of a round (n_honest x d) and return the one d-vector every
Byzantine peer sends (same dtype as the input). Data attacks change what the Byzantine peer
trains on; it then sends its honestly computed update.

    from fednode.aggregators import attacks
    attack = attacks.build("alie", n=10, f=3)      # z_max for n=10, f=3
    byzantine_row = attack(honest_rows)
    attacks.build("label_flip", num_classes=10).transform_labels(y)

mu and sigma below are the coordinate-wise mean and sample standard deviation (ddof=1) of the
honest rows, computed in float64.

The adaptive attacks need the rule they attack: name it (`rule`, `f`, `rule_params`), or bind
the rule object in use with `attack.for_rule(aggregator, copies)` (the daemon does this).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from .base import Aggregator
from .errors import AggregationError
from .numerics import WORK_DTYPE, gram, squared_distances


class AttackError(ValueError):
    """Invalid attack parameters or input."""


def _checked_honest(name: str, honest: object, minimum: int = 1) -> torch.Tensor:
    if not isinstance(honest, torch.Tensor) or honest.dim() != 2 or not honest.is_floating_point():
        raise AttackError(f"attack {name!r}: honest rows must be a 2-D floating tensor (n_honest x d)")
    if honest.shape[0] < minimum or honest.shape[1] == 0:
        raise AttackError(
            f"attack {name!r} needs at least {minimum} honest row(s), got shape {tuple(honest.shape)}"
        )
    return honest.detach()


def honest_mean(honest: torch.Tensor) -> torch.Tensor:
    return honest.to(WORK_DTYPE).mean(dim=0)


def honest_std(honest: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise sample standard deviation (ddof=1); zeros for a single row."""
    if honest.shape[0] < 2:
        return torch.zeros(honest.shape[1], dtype=WORK_DTYPE, device=honest.device)
    return honest.to(WORK_DTYPE).std(dim=0, correction=1)


class UpdateAttack(ABC):
    """Computes the Byzantine update from the honest updates of the round."""

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str] = "update"

    def __call__(self, honest: torch.Tensor) -> torch.Tensor:
        rows = _checked_honest(self.name, honest, self.minimum_honest())
        return self.byzantine_vector(rows).to(rows.dtype)

    def minimum_honest(self) -> int:
        return 1

    def for_rule(self, aggregator: Aggregator, copies: int) -> UpdateAttack:
        """This attack against `aggregator`, sent by `copies` Byzantine peers: adaptive attacks
        bind the rule (unless one was named); the others ignore it."""
        return self

    @abstractmethod
    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        """The Byzantine d-vector (any float dtype; cast to the input dtype by __call__)."""


class DataAttack(ABC):
    """Changes the Byzantine peer's training data; its update is then computed honestly."""

    name: ClassVar[str]
    description: ClassVar[str]
    kind: ClassVar[str] = "data"

    @abstractmethod
    def transform_labels(self, labels: torch.Tensor) -> torch.Tensor: ...


def alie_z_max(n: int, f: int) -> float:
    """Largest z for which ALIE's vector still looks like a majority (Baruch et al. 2019):
    s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n)."""
    if not (0 < f < n):
        raise AttackError(f"ALIE z_max needs 0 < f < n, got n={n}, f={f}")
    supporters = math.floor(n / 2 + 1) - f
    quantile = (n - supporters) / n
    if not 0.0 < quantile < 1.0:
        raise AttackError(f"ALIE z_max undefined for n={n}, f={f}")
    return statistics.NormalDist().inv_cdf(quantile)


@dataclass(frozen=True)
class ALittleIsEnough(UpdateAttack):
    """ALIE: mu - z * sigma. Give z, or give n and f to use z_max(n, f)."""

    name = "alie"
    description = "A Little Is Enough: mu - z*sigma (sample std); z fixed, or z_max from n and f."

    z: float | None = None
    n: int | None = None
    f: int | None = None

    def __post_init__(self) -> None:
        if self.z is None and (self.n is None or self.f is None):
            raise AttackError("attack 'alie' needs z, or n and f to compute z_max")

    @property
    def z_value(self) -> float:
        if self.z is not None:
            return float(self.z)
        assert self.n is not None and self.f is not None
        return alie_z_max(self.n, self.f)

    def minimum_honest(self) -> int:
        return 2

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        return honest_mean(honest) - self.z_value * honest_std(honest)


@dataclass(frozen=True)
class InnerProductManipulation(UpdateAttack):
    """IPM (Xie, Koyejo, Gupta 2019): -eps * mu."""

    name = "ipm"
    description = "Inner product manipulation: -eps * mu (small eps defeats Krum, large eps flips the mean)."

    eps: float = 0.1

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        return -float(self.eps) * honest_mean(honest)


@dataclass(frozen=True)
class SignFlip(UpdateAttack):
    """-mu (the ByzFL form of sign flipping)."""

    name = "sign_flip"
    description = "Sign flip: -mu."

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        return -honest_mean(honest)


@dataclass(frozen=True)
class ScaledNegativeMean(UpdateAttack):
    """-k * mu ("reverse" of the Flag Aggregator repository, applied to the mean)."""

    name = "negative_mean"
    description = "Scaled negative mean: -k * mu (k=10 reverses and amplifies the honest direction)."

    k: float = 10.0

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        return -float(self.k) * honest_mean(honest)


@dataclass(frozen=True)
class Gaussian(UpdateAttack):
    """N(mu_0, sigma^2 I) noise from the attack's own generator (a fresh draw per call)."""

    name = "gaussian"
    description = "Gaussian noise N(mean, sigma^2 I) from a dedicated generator seeded with seed."

    mean: float = 0.0
    sigma: float = 1.0
    seed: int = 0
    generator: torch.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(self.seed)
        object.__setattr__(self, "generator", generator)

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(honest.shape[1], generator=self.generator, dtype=WORK_DTYPE)
        return (float(self.mean) + float(self.sigma) * noise).to(honest.device)


@dataclass(frozen=True)
class Mimic(UpdateAttack):
    """Copy honest row `index` (Karimireddy et al. 2022)."""

    name = "mimic"
    description = "Mimic: copy the honest row at position index."

    index: int = 0

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        if not 0 <= self.index < honest.shape[0]:
            raise AttackError(f"attack 'mimic': index {self.index} outside 0..{honest.shape[0] - 1}")
        return honest[self.index].clone()


@dataclass(frozen=True)
class NaNVector(UpdateAttack):
    """All-NaN vector: exercises input sanitation."""

    name = "nan"
    description = "All-NaN vector (tests rejection of non-finite rows)."

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        return torch.full((honest.shape[1],), math.nan, dtype=honest.dtype, device=honest.device)


@dataclass(frozen=True)
class InfVector(UpdateAttack):
    """All +inf vector: exercises input sanitation."""

    name = "inf"
    description = "All +inf vector (tests rejection of non-finite rows)."

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        return torch.full((honest.shape[1],), math.inf, dtype=honest.dtype, device=honest.device)


Perturbation = Literal["unit", "sign", "std"]


def perturbation_direction(honest: torch.Tensor, kind: Perturbation) -> torch.Tensor:
    """p in {-mu/||mu||, -sign(mu), -sigma} (Shejwalkar & Houmansadr 2021)."""
    mu = honest_mean(honest)
    if kind == "unit":
        norm = float(torch.linalg.vector_norm(mu))
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if kind == "sign":
        return -torch.sign(mu)
    if kind == "std":
        return -honest_std(honest)
    raise AttackError(f"unknown perturbation {kind!r}; use 'unit', 'sign' or 'std'")


def largest_gamma(accepts: Any, gamma_init: float, tol: float, max_steps: int = 200) -> float:
    """Halving search of the largest gamma accepted (spec section 4): starts at gamma_init, steps
    of gamma_init/2, /4, ...; converges to 0 when nothing is accepted."""
    gamma, step, succeeded = gamma_init, gamma_init, 0.0
    for _ in range(max_steps):
        if abs(succeeded - gamma) <= tol:
            break
        if accepts(gamma):
            succeeded = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return succeeded


@dataclass(frozen=True)
class _OptimisedPerturbation(UpdateAttack):
    """mu + gamma * p with the largest gamma (halving search) meeting a distance budget."""

    perturbation: Perturbation = "std"
    gamma_init: float = 10.0
    tol: float = 1e-5

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        mu = honest_mean(honest)
        direction = perturbation_direction(honest, self.perturbation)
        offsets = honest.to(WORK_DTYPE) - mu  # x_i - mu
        base = (offsets * offsets).sum(dim=1)  # ||mu - x_i||^2
        cross = -(offsets * direction).sum(dim=1)  # <p, mu - x_i>
        direction_sq = float((direction * direction).sum())
        honest_distances = squared_distances(gram(honest, centered=True))

        def squared_distances_to_attack(gamma: float) -> torch.Tensor:
            return base + 2.0 * gamma * cross + gamma * gamma * direction_sq

        gamma = largest_gamma(
            lambda g: self.within_budget(squared_distances_to_attack(g), honest_distances),
            self.gamma_init,
            self.tol,
        )
        return mu + gamma * direction

    @abstractmethod
    def within_budget(self, attack_distances: torch.Tensor, honest_distances: torch.Tensor) -> bool: ...


@dataclass(frozen=True)
class MinMax(_OptimisedPerturbation):
    """Largest gamma with max_i ||b - x_i|| <= max_{i,j} ||x_i - x_j||."""

    name = "min_max"
    description = "Min-Max: mu + gamma*p, largest gamma keeping b's farthest honest distance within the honest diameter."

    def within_budget(self, attack_distances: torch.Tensor, honest_distances: torch.Tensor) -> bool:
        return bool(attack_distances.max() <= honest_distances.max())


@dataclass(frozen=True)
class MinSum(_OptimisedPerturbation):
    """Largest gamma with sum_i ||b - x_i||^2 <= max_i sum_j ||x_i - x_j||^2."""

    name = "min_sum"
    description = (
        "Min-Sum: mu + gamma*p, largest gamma keeping b's summed squared distance within the honest maximum."
    )

    def within_budget(self, attack_distances: torch.Tensor, honest_distances: torch.Tensor) -> bool:
        return bool(attack_distances.sum() <= honest_distances.sum(dim=1).max())


@dataclass(frozen=True)
class _RuleTailored(UpdateAttack):
    """mu + gamma * p with gamma fitted to the rule in use (the AGR-tailored attack of Shejwalkar
    and Houmansadr 2021). The halving search starts at the agnostic attack's gamma (its distance
    budget, `budget`) and so explores [0, 2 gamma_budget): a gamma is kept when the rule, run on
    the honest rows and `copies` copies of the vector, is still fooled by it, i.e. it selects the
    vector (rules that report a selection) and its output lies further from mu than with the
    last gamma kept. Against a rule that does not filter the vector this ends near the top of
    the range; against one that does, at the largest gamma it still lets through."""

    perturbation: Perturbation = "std"
    tol: float = 1e-3
    copies: int = 1
    rule: str = ""  # "" = bound by for_rule (the daemon binds the federation's rule)
    f: int = 0
    rule_params: Mapping[str, Any] | None = None
    aggregator: Aggregator | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.copies, bool) or not isinstance(self.copies, int) or self.copies < 1:
            raise AttackError(f"attack {self.name!r}: copies must be a positive int, got {self.copies!r}")
        if self.rule:
            from .registry import build as build_rule

            try:
                rule = build_rule(self.rule, f=self.f, **dict(self.rule_params or {}))
            except AggregationError as exc:
                raise AttackError(f"attack {self.name!r}: {exc}") from exc
            object.__setattr__(self, "aggregator", rule)

    @abstractmethod
    def budget(self) -> _OptimisedPerturbation: ...

    def for_rule(self, aggregator: Aggregator, copies: int) -> UpdateAttack:
        if self.aggregator is not None and self.rule:
            return self  # a rule named in the parameters wins
        bound = dataclasses.replace(self, copies=copies)
        object.__setattr__(bound, "aggregator", aggregator)
        return bound

    def byzantine_vector(self, honest: torch.Tensor) -> torch.Tensor:
        if self.aggregator is None:
            raise AttackError(f"attack {self.name!r} needs the rule it attacks: rule=<name>, or for_rule()")
        rule = self.aggregator
        rows = honest.to(WORK_DTYPE)
        mu = honest_mean(honest)
        direction = perturbation_direction(honest, self.perturbation)
        n_honest = rows.shape[0]
        start = max(float(_gamma(self.budget(), honest)), 10 * self.tol)
        kept = {"deviation": -1.0}

        def fooled(gamma: float) -> bool:
            vector = mu + gamma * direction
            try:
                result = rule(torch.cat([rows, vector.expand(self.copies, -1)]), seed=0)
            except AggregationError:
                return False
            if result.selected is not None and not any(index >= n_honest for index in result.selected):
                return False
            deviation = float(torch.linalg.vector_norm(result.aggregate.to(WORK_DTYPE) - mu))
            if deviation <= kept["deviation"]:
                return False
            kept["deviation"] = deviation
            return True

        return mu + largest_gamma(fooled, start, self.tol * start) * direction


def _gamma(search: _OptimisedPerturbation, honest: torch.Tensor) -> float:
    """The gamma the agnostic attack `search` picks for these honest rows."""
    vector = search.byzantine_vector(honest.detach())
    direction = perturbation_direction(honest, search.perturbation)
    scale = float((direction * direction).sum())
    if scale == 0.0:
        return 0.0
    return float(((vector - honest_mean(honest)) * direction).sum()) / scale


@dataclass(frozen=True)
class AdaptiveMinMax(_RuleTailored):
    """Min-Max's vector with gamma fitted to the rule in use (see _RuleTailored)."""

    name = "adaptive_min_max"
    description = ("Min-Max tailored to the rule in use: mu + gamma*p, gamma in [0, 2 x Min-Max's) kept while the "
                   "rule still selects the vector and moves further from mu.")

    def budget(self) -> _OptimisedPerturbation:
        return MinMax(perturbation=self.perturbation)


@dataclass(frozen=True)
class AdaptiveMinSum(_RuleTailored):
    """Min-Sum's vector with gamma fitted to the rule in use (see _RuleTailored)."""

    name = "adaptive_min_sum"
    description = ("Min-Sum tailored to the rule in use: mu + gamma*p, gamma in [0, 2 x Min-Sum's) kept while the "
                   "rule still selects the vector and moves further from mu.")

    def budget(self) -> _OptimisedPerturbation:
        return MinSum(perturbation=self.perturbation)


@dataclass(frozen=True)
class LabelFlip(DataAttack):
    """Train on y' = C - 1 - y."""

    name = "label_flip"
    description = "Label flip (data side): the Byzantine peer trains honestly on labels C-1-y."

    num_classes: int = 10

    def transform_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return flip_labels(labels, self.num_classes)


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Map every label y to num_classes - 1 - y."""
    if bool(((labels < 0) | (labels >= num_classes)).any()):
        raise AttackError(f"labels must lie in [0, {num_classes})")
    return num_classes - 1 - labels


Attack = UpdateAttack | DataAttack

ATTACKS: Mapping[str, type[UpdateAttack] | type[DataAttack]] = {
    attack.name: attack
    for attack in (
        ALittleIsEnough,
        InnerProductManipulation,
        SignFlip,
        ScaledNegativeMean,
        Gaussian,
        LabelFlip,
        MinMax,
        MinSum,
        AdaptiveMinMax,
        AdaptiveMinSum,
        Mimic,
        NaNVector,
        InfVector,
    )
}


@dataclass(frozen=True)
class AttackInfo:
    name: str
    description: str
    kind: str  # "update" or "data"
    parameters: Mapping[str, Any]


def _parameters(attack: type) -> dict[str, Any]:
    return {
        item.name: item.default
        for item in dataclasses.fields(attack)
        if item.init and item.default is not dataclasses.MISSING
    }


def available() -> list[AttackInfo]:
    """Every attack with its kind, parameters and defaults."""
    return [
        AttackInfo(
            name=name, description=attack.description, kind=attack.kind, parameters=_parameters(attack)
        )
        for name, attack in ATTACKS.items()
    ]


def build(name: str, **params: Any) -> UpdateAttack | DataAttack:
    """Instantiate attack `name`; unknown names or parameters raise AttackError."""
    attack = ATTACKS.get(name)
    if attack is None:
        raise AttackError(f"unknown attack {name!r}; available: {', '.join(ATTACKS)}")
    unknown = sorted(set(params) - set(_parameters(attack)))
    if unknown:
        raise AttackError(
            f"attack {name!r} does not accept {', '.join(unknown)}; accepted: {', '.join(_parameters(attack))}"
        )
    return attack(**params)
