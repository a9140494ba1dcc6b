"""Local training and evaluation on the node's own data.

Pure compute: no networking, no files. The daemon calls `train_round` in a worker thread; it
checks `stop` between steps so a shutdown never waits for a whole round.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.adam import adam as adam_update
from torch.optim.sgd import sgd as sgd_update

from fednode.node.tasks import Task


def device_problem(setting: str, device_count: int, cuda_build: str | None) -> str | None:
    """Why `setting` ("cpu", "cuda", "cuda:N") cannot be used with `device_count` visible CUDA
    devices and this torch build (`torch.version.cuda`, None for a CPU build); None when it can."""
    if not setting.startswith("cuda"):
        return None
    index = int(setting[5:]) if setting.startswith("cuda:") else 0
    if cuda_build is None:
        return (f'device "{setting}": this torch ({torch.__version__}) is a CPU-only build; install the CUDA build '
                f'(docs/deploy.md, "GPUs") or use "auto" or "cpu"')
    if device_count == 0:
        return (f'device "{setting}": torch (CUDA {cuda_build}) sees no CUDA device (driver missing, '
                f'CUDA_VISIBLE_DEVICES empty, or a container without --gpus); use "auto" or "cpu"')
    if index >= device_count:
        return (f'device "{setting}" does not exist: torch sees {device_count} CUDA device(s), '
                f'cuda:0 to cuda:{device_count - 1}')
    return None


def resolve_device(setting: str) -> torch.device:
    """"auto" picks CUDA when present; an explicit "cuda" or "cuda:N" that this machine cannot
    provide is an error that says why."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count = torch.cuda.device_count() if torch.version.cuda is not None else 0
    problem = device_problem(setting, count, torch.version.cuda)
    if problem:
        raise ValueError(problem)
    return torch.device(setting)


INNER_OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class InnerOptimizer:
    """The local optimizer of a round: momentum SGD (the default) or AdamW."""

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9  # sgd
    weight_decay: float = 0.0  # sgd: L2 added to the gradient; adamw: decoupled
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    eps: float = 1e-8  # adamw


def resolve_inner_optimizer(setting: str, task: Task, *, lr: float, momentum: float, weight_decay: float) -> InnerOptimizer:
    """training.optimizer ("sgd", "adamw", or "task": what the task declares in
    `Task.inner_optimizer`, momentum SGD with the training values when it declares nothing).
    ValueError naming the problem for a bad declaration."""
    if setting == "adamw":
        return InnerOptimizer("adamw", lr=lr, weight_decay=weight_decay)
    if setting != "task" or not task.inner_optimizer:
        return InnerOptimizer("sgd", lr=lr, momentum=momentum, weight_decay=weight_decay)
    declared = dict(task.inner_optimizer)
    name = str(declared.pop("name", "sgd"))
    if name not in INNER_OPTIMIZERS:
        raise ValueError(f"task {task.name!r} declares inner optimizer {name!r}; known: {', '.join(INNER_OPTIMIZERS)}")
    try:
        chosen = InnerOptimizer(name, lr=float(declared.pop("lr", lr)),
                                momentum=float(declared.pop("momentum", momentum)),
                                weight_decay=float(declared.pop("weight_decay", weight_decay)),
                                betas=tuple(float(b) for b in declared.pop("betas", (0.9, 0.999))),  # type: ignore[arg-type]
                                eps=float(declared.pop("eps", 1e-8)))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"task {task.name!r} declares an unusable inner optimizer: {exc}") from exc
    if declared:
        raise ValueError(f"task {task.name!r}: unknown inner optimizer keys {sorted(declared)}")
    if not (chosen.lr > 0 and chosen.weight_decay >= 0 and len(chosen.betas) == 2
            and all(0 <= b < 1 for b in chosen.betas) and 0 <= chosen.momentum < 1 and chosen.eps > 0):
        raise ValueError(f"task {task.name!r} declares inner optimizer values out of range: {chosen}")
    return chosen


@dataclass(frozen=True)
class TrainResult:
    steps: int
    num_samples: int
    mean_loss: float
    seconds: float

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / max(self.steps, 1)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float
    num_samples: int


class LocalTrainer:
    """SGD on this node's shard, batches drawn with replacement from a seeded generator.

    The optimizer is recreated every round (as FedCompass's clients do): after aggregation the
    model moved, so stale momentum from the previous local round would point the wrong way.
    """

    def __init__(
        self,
        task: Task,
        device: torch.device,
        *,
        batch_size: int,
        lr: float,
        momentum: float,
        weight_decay: float = 0.0,
        seed: int = 0,
        slowdown: float = 1.0,
        emulated_step_seconds: float = 0.0,
        optimizer: InnerOptimizer | None = None,
    ) -> None:
        self.task = task
        self.device = device
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.inner = optimizer or InnerOptimizer("sgd", lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.slowdown = slowdown
        self._slowdown = SlowdownEmulator(slowdown, emulated_step_seconds)
        self._generator = torch.Generator().manual_seed(seed)
        # Positions of each step's batch this process computes (a data-parallel job); None: all.
        self.share: torch.Tensor | None = None
        features, labels = _materialise(task.train_data)
        self._train_x, self._train_y = features.to(device), labels.to(device)
        test_x, test_y = _materialise(task.test_data)
        self._test_x, self._test_y = test_x.to(device), test_y.to(device)
        if self._slowdown.needs_calibration:
            self._calibrate_slowdown()

    def _calibrate_slowdown(self, steps: int = 8) -> None:
        """Time a few steps on a throwaway model before the first round. The emulated pause is a
        multiple of the fastest step seen; without this, the first round's pauses scale the cold
        first steps (allocator, kernel selection: several times a warm step), and a slowed peer's
        first speed estimate, which FedCompass schedules from, came out 3-5x too slow. Uses its
        own generator and a forked global RNG: training (data order, checkpointed) is untouched."""
        with torch.random.fork_rng(devices=[]):  # dropout and the like draw from the global RNG
            model = self.task.model_factory().to(self.device)
            optimizer = self._optimizer(model)
            generator = torch.Generator().manual_seed(0)
            for _ in range(steps):
                started = time.perf_counter()
                self._step(model, optimizer, generator)
                self._slowdown.observe(time.perf_counter() - started)

    def _optimizer(self, model: nn.Module) -> MomentumSGD | InnerAdamW:
        """A fresh optimizer for a round (momentum or moments restart with every round's new
        base model)."""
        inner = self.inner
        if inner.name == "adamw":
            return InnerAdamW(model.parameters(), lr=inner.lr, betas=inner.betas, eps=inner.eps,
                              weight_decay=inner.weight_decay)
        return MomentumSGD(model.parameters(), lr=inner.lr, momentum=inner.momentum, weight_decay=inner.weight_decay)

    def _step(self, model: nn.Module, optimizer: MomentumSGD | InnerAdamW, generator: torch.Generator,
              forward: nn.Module | None = None) -> float:
        """One SGD step on a random mini-batch; returns the loss. With a `share` (one process of a
        data-parallel job), the batch is drawn whole, as one process would, and this process
        computes on its positions of it through `forward` (the DDP wrapper, which averages the
        gradients of all processes: the mean over the whole batch, for a mean loss)."""
        index = torch.randint(0, self.num_train_samples, (self.batch_size,), generator=generator)
        if self.share is not None:
            index = index[self.share]
        index = index.to(self.device)
        optimizer.zero_grad()
        loss = self.task.loss_fn((forward or model)(self._train_x[index]), self._train_y[index])
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    @property
    def num_train_samples(self) -> int:
        return len(self._train_y)

    def generator_state(self) -> torch.Tensor:
        return self._generator.get_state()

    def set_generator_state(self, state: torch.Tensor) -> None:
        self._generator.set_state(state)

    def train_round(self, model: nn.Module, steps: int, stop: threading.Event | None = None, *,
                    forward: nn.Module | None = None, keep_going: Callable[[], bool] | None = None) -> TrainResult:
        """`steps` steps on `model` (through `forward` when given), unless `stop` is set, or
        `keep_going()` (which replaces `stop`: the processes of a job decide together) says no."""
        model.train()
        optimizer = self._optimizer(model)
        started = time.perf_counter()
        total_loss, done = 0.0, 0
        for _ in range(steps):
            if keep_going is not None:
                if not keep_going():
                    break
            elif stop is not None and stop.is_set():
                break
            step_started = time.perf_counter()
            total_loss += self._step(model, optimizer, self._generator, forward)
            done += 1
            pause = self._slowdown.pause_after(time.perf_counter() - step_started)
            if pause > 0.0:
                time.sleep(pause)
        return TrainResult(
            steps=done,
            num_samples=done * self.batch_size,
            mean_loss=total_loss / done if done else math.nan,
            seconds=time.perf_counter() - started,
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> EvalResult:
        model.eval()
        correct, loss_sum = 0, 0.0
        for start in range(0, len(self._test_y), 1024):
            x = self._test_x[start : start + 1024]
            y = self._test_y[start : start + 1024]
            logits = model(x)
            loss_sum += float(self.task.loss_fn(logits, y)) * len(y)
            correct += int((logits.argmax(dim=1) == y).sum())
        count = len(self._test_y)
        return EvalResult(accuracy=correct / count, loss=loss_sum / count, num_samples=count)


class MomentumSGD:
    """SGD with momentum and weight decay: torch.optim.SGD's update, without torch.optim.SGD.

    Why not torch.optim.SGD itself: its step() and zero_grad() are wrapped in
    torch._disable_dynamo, whose first call imports torch's compiler stack (torch._dynamo, sympy,
    ...) for a model that is never compiled: +71 MB resident in every daemon and 3-8 s of CPU at
    start-up on a busy 2-core host, plus the wrapper's cost on every step. This calls the same
    update function SGD.step calls (torch.optim.sgd.sgd), with the multi-tensor (foreach)
    implementation, which torch only picks by default for CUDA: on CPU it gives bit-identical
    parameters and shorter steps for small models, which are dominated by per-op overhead
    (tests compare it with torch.optim.SGD, foreach and per-parameter). fused=True would be
    faster still but does not round like the loop.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], *, lr: float, momentum: float,
                 weight_decay: float = 0.0) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        # Created on a parameter's first step, as torch.optim.SGD does (the first buffer is the
        # gradient itself, not momentum x 0 + gradient).
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.parameters)

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        # Parameters without a gradient this step are skipped, momentum included (as SGD.step).
        stepped = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        if not stepped:
            return
        buffers = [self.momentum_buffers[i] for i in stepped]
        sgd_update(
            [self.parameters[i] for i in stepped],
            [self.parameters[i].grad for i in stepped],  # type: ignore[misc]
            buffers,
            foreach=True,
            weight_decay=self.weight_decay,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        for i, buffer in zip(stepped, buffers, strict=True):  # sgd_update fills new buffers in
            self.momentum_buffers[i] = buffer


class InnerAdamW:
    """AdamW (decoupled weight decay): torch.optim.AdamW's update without torch.optim.AdamW, for
    the reason MomentumSGD gives (the optimizer class's step loads torch's compiler stack). Calls
    the update function AdamW.step calls (torch.optim.adam.adam, decoupled weight decay,
    multi-tensor); tests compare it with torch.optim.AdamW."""

    def __init__(self, parameters: Iterable[nn.Parameter], *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.exp_avgs = [torch.zeros_like(p) for p in self.parameters]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.parameters]
        self.steps = [torch.tensor(0.0) for _ in self.parameters]

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def step(self) -> None:
        stepped = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        if not stepped:
            return
        adam_update(
            [self.parameters[i] for i in stepped],
            [self.parameters[i].grad for i in stepped],  # type: ignore[misc]
            [self.exp_avgs[i] for i in stepped],
            [self.exp_avg_sqs[i] for i in stepped],
            [],
            [self.steps[i] for i in stepped],
            foreach=True,
            decoupled_weight_decay=True,
            amsgrad=False,
            beta1=self.betas[0],
            beta2=self.betas[1],
            lr=self.lr,
            weight_decay=self.weight_decay,
            eps=self.eps,
            maximize=False,
        )


class SlowdownEmulator:
    """Heterogeneity emulation (`training.slowdown`, `training.emulated_step_ms`).

    Without a nominal step, each local step takes `factor` times as long as it does on this
    machine, as a machine `factor` times slower would. The pause after a step is (factor - 1) x
    the fastest step seen so far, not x the step just timed. In a local federation several
    daemons share the CPU, and a step's time includes waiting for the others' training; a
    separate slower machine would not wait for them, and multiplying that wait by the factor
    exaggerated the spread (slowdowns 1,2,4,8 measured as 1 : 12 in a 4-daemon run on 2 cores).
    The fastest step is the best estimate of the uncontended compute.

    With a nominal step (`nominal_step` seconds), every step is padded to nominal_step x factor:
    the node behaves like a device whose step takes that long, factor 1 included. Co-located
    daemons then use a fraction of a core each instead of contending for the shared cores, so a
    local federation shows the schedule's effect rather than the host's CPU count (what separate
    machines would see). A step that took longer than its budget gets no pause.
    """

    def __init__(self, factor: float, nominal_step: float = 0.0) -> None:
        self.factor = factor
        self.nominal_step = nominal_step
        self.fastest_step: float | None = None

    @property
    def needs_calibration(self) -> bool:
        """True when pauses scale this machine's step (no nominal step and a factor > 1)."""
        return self.nominal_step <= 0.0 and self.factor > 1.0

    def observe(self, step_seconds: float) -> None:
        """A step took `step_seconds` (only tracked when pauses scale the machine's step)."""
        if self.needs_calibration and (self.fastest_step is None or step_seconds < self.fastest_step):
            self.fastest_step = max(step_seconds, 0.0)

    def pause_after(self, step_seconds: float) -> float:
        """Seconds to sleep after a step that took `step_seconds` (0 when nothing is emulated)."""
        if self.nominal_step > 0.0:
            return max(0.0, self.nominal_step * max(self.factor, 1.0) - step_seconds)
        self.observe(step_seconds)
        if self.fastest_step is None:
            return 0.0
        return self.fastest_step * (self.factor - 1.0)


def _materialise(dataset: torch.utils.data.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack a map-style dataset into two tensors (tasks here fit in memory)."""
    features = getattr(dataset, "features", None)
    labels = getattr(dataset, "labels", None)
    if isinstance(features, torch.Tensor) and isinstance(labels, torch.Tensor):
        return features, labels
    rows = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([r[0] for r in rows]), torch.stack([torch.as_tensor(r[1]) for r in rows])
