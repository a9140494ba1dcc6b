"""Benchmark of the update codecs (issue 4), side by side in one run.

    python bench/compression.py            # full run (a few minutes on 2 cores)
    python bench/compression.py --quick    # short run: fewer rounds, a 1M-parameter model

(a) digits: 4 simulated peers, FedAvg, everything in memory and seeded. scikit-learn's digits,
    80/20 stratified split (random_state=0), standardized, MLP 64-256-256-10, non-IID Dirichlet
    split over the peers. Every round each peer trains a few SGD steps from the global model and
    sends its delta through its own UpdateCompressor; the global model adds the mean of the
    decoded deltas. Reported per codec: bytes per peer per round, ratio vs fp32, final test
    accuracy and its difference to uncompressed fp32 in points. The batches are the same for every
    codec, so only the codec differs.
(b) a ~10M-parameter update with a realistic structure (layers of a small transformer, per-layer
    magnitudes spanning two decades, heavy tails): bytes per round, encode and decode MB/s
    (MB = 10^6 bytes of float32 input; medians over repetitions), and what zstd does for each codec.
(c) with --robust: robust rules (median, trimmed mean, Multi-Krum; f = 1, 5 honest peers) over
    decoded compressed updates, the interaction docs/compression.md discusses.

Timings include everything a node does: compress (with error feedback) + SerializeToString, and
FromString + decode (with all validation). Figures only; nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from fednode.aggregators import build as build_aggregator
from fednode.node.compression import DecodeLimits, UpdateCompressor, build_codec, decode, derive_seed
from fednode.proto.v1 import tensor_pb2 as pb

FP32_BYTES = 4


@dataclass(frozen=True)
class Config:
    """One row of the comparison: a codec and the compressor options around it."""

    label: str
    codec: str
    params: dict[str, object] = field(default_factory=dict)
    error_feedback: bool = True
    momentum: float = 0.0
    warmup_steps: int = 0
    warmup_start_density: float = 0.25

    def compressor(self) -> UpdateCompressor:
        return UpdateCompressor(
            build_codec(self.codec, **self.params),
            error_feedback=self.error_feedback,
            momentum=self.momentum,
            warmup_steps=self.warmup_steps,
            warmup_start_density=self.warmup_start_density,
        )


# The candidates for ">= 100x at <= 1 point": top-k with int8 values, error feedback, zstd and a
# short DGC warm-up (5 rounds from 5% density). Tuning notes in docs/compression.md.
WINNER = Config(
    "topk_int8 1% EF+zstd warm-up",
    "topk_int8",
    {"fraction": 0.01, "zstd": "on"},
    warmup_steps=5,
    warmup_start_density=0.05,
)
AGGRESSIVE = Config(
    "topk_int8 0.5% EF+zstd warm-up",
    "topk_int8",
    {"fraction": 0.005, "zstd": "on"},
    warmup_steps=5,
    warmup_start_density=0.05,
)

DIGITS_CONFIGS: list[Config] = [
    Config("none (fp32)", "none"),
    Config("fp16", "fp16"),
    Config("bf16", "bf16"),
    Config("int8", "int8"),
    Config("int4", "int4"),
    Config("topk 1% EF", "topk", {"fraction": 0.01}),
    Config("topk 1% no EF", "topk", {"fraction": 0.01}, error_feedback=False),
    Config("topk_int8 1% EF, zstd off", "topk_int8", {"fraction": 0.01, "zstd": "off"}),
    WINNER,
    AGGRESSIVE,
    Config(
        "topk_int8 0.5% EF+zstd DGC m=0.5",
        "topk_int8",
        {"fraction": 0.005, "zstd": "on"},
        momentum=0.5,
        warmup_steps=5,
        warmup_start_density=0.05,
    ),
    Config("randk 1% EF", "randk", {"fraction": 0.01}),
    Config("powersgd rank 2 EF", "powersgd", {"rank": 2}),
]

BIG_CONFIGS: list[Config] = [
    Config("none (fp32)", "none"),
    Config("fp16", "fp16"),
    Config("bf16", "bf16"),
    Config("int8", "int8"),
    Config("int4", "int4"),
    Config("topk 1%", "topk", {"fraction": 0.01}),
    Config("topk_int8 1%", "topk_int8", {"fraction": 0.01}),
    Config("topk_int8 0.5%", "topk_int8", {"fraction": 0.005}),
    Config("randk 1%", "randk", {"fraction": 0.01}),
    Config("powersgd rank 4", "powersgd", {"rank": 4}),
]


# ============================================================================ (a) digits


@dataclass
class DigitsTask:
    """The digits data split over peers, and the model shape every peer trains."""

    x_train: list[torch.Tensor]
    y_train: list[torch.Tensor]
    x_test: torch.Tensor
    y_test: torch.Tensor

    @classmethod
    def load(cls, peers: int, alpha: float, seed: int) -> DigitsTask:
        data = load_digits()
        x_tr, x_te, y_tr, y_te = train_test_split(
            data.data, data.target, test_size=0.2, stratify=data.target, random_state=0
        )
        scaler = StandardScaler().fit(x_tr)
        x_tr, x_te = scaler.transform(x_tr), scaler.transform(x_te)
        shards = dirichlet_split(y_tr, peers, alpha, seed)
        return cls(
            x_train=[torch.tensor(x_tr[s], dtype=torch.float32) for s in shards],
            y_train=[torch.tensor(y_tr[s], dtype=torch.long) for s in shards],
            x_test=torch.tensor(x_te, dtype=torch.float32),
            y_test=torch.tensor(y_te, dtype=torch.long),
        )


def dirichlet_split(labels: np.ndarray, peers: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Non-IID shards: each class is divided among peers in Dirichlet(alpha) proportions."""
    rng = np.random.default_rng(seed)
    shards: list[list[int]] = [[] for _ in range(peers)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cuts = (np.cumsum(rng.dirichlet([alpha] * peers)) * len(members)).astype(int)[:-1]
        for peer, part in enumerate(np.split(members, cuts)):
            shards[peer].extend(part.tolist())
    return [np.array(sorted(shard)) for shard in shards]


def make_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


@dataclass
class DigitsResult:
    label: str
    bytes_per_round: float
    accuracy: float
    fp32_bytes: int


def run_digits(
    config: Config,
    task: DigitsTask,
    rounds: int,
    local_steps: int,
    lr: float,
    batch: int,
    rule: str = "mean",
    shared_positions: bool = False,
) -> DigitsResult:
    """Federated training with `config` on every link; returns bytes and final accuracy.

    rule: "mean" is FedAvg (plain mean of the decoded deltas); any other name is a robust rule
        from fednode.aggregators with f = 1, run on the decoded dense deltas.
    shared_positions: randk seeds derived without the sender, so all peers send the same
        coordinates in a round (the mode coordinate-wise rules need).
    """
    model = make_mlp(seed=0)
    global_vector = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    n = global_vector.numel()
    peers = len(task.x_train)
    compressors = [config.compressor() for _ in range(peers)]
    limits = DecodeLimits(max_numel=n)
    loss_fn = nn.CrossEntropyLoss()
    aggregator = None if rule == "mean" else build_aggregator(rule, f=1)
    sent = 0
    for round_number in range(rounds):
        decoded = []
        for peer in range(peers):
            nn.utils.vector_to_parameters(global_vector.clone(), model.parameters())
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            generator = torch.Generator().manual_seed(1000 * round_number + peer)
            x, y = task.x_train[peer], task.y_train[peer]
            for _ in range(local_steps):
                pick = torch.randint(len(y), (batch,), generator=generator)
                optimizer.zero_grad()
                loss_fn(model(x[pick]), y[pick]).backward()
                optimizer.step()
            delta = nn.utils.parameters_to_vector(model.parameters()).detach() - global_vector
            sender = "" if shared_positions else f"peer-{peer}"
            seed = derive_seed("bench-federation", sender, round_number=round_number)
            blob = compressors[peer].compress(delta, seed=seed, step=round_number).SerializeToString()
            sent += len(blob)
            decoded.append(decode(pb.TensorPayload.FromString(blob), limits=limits, expected_numel=n))
        rows = torch.stack(decoded)
        if aggregator is None:
            global_vector += rows.mean(0)
        else:
            global_vector += aggregator(rows, seed=round_number).aggregate.to(torch.float32)
    nn.utils.vector_to_parameters(global_vector, model.parameters())
    with torch.no_grad():
        accuracy = (model(task.x_test).argmax(1) == task.y_test).float().mean().item()
    return DigitsResult(config.label, sent / (rounds * peers), accuracy, FP32_BYTES * n)


# ============================================================================ (b) ~10M parameters


def transformer_like_shapes(target: int) -> list[tuple[int, ...]]:
    """Parameter shapes of a small transformer (embeddings, blocks of attention + MLP + norms)."""
    width = 512 if target >= 5_000_000 else 128
    vocab = max(1, min(8000, target // (4 * width)))
    shapes: list[tuple[int, ...]] = [(vocab, width)]
    block = [
        (3 * width, width),
        (3 * width,),
        (width, width),
        (width,),
        (width,),
        (width,),
        (4 * width, width),
        (4 * width,),
        (width, 4 * width),
        (width,),
        (width,),
        (width,),
    ]
    while sum(int(np.prod(s)) for s in shapes) + sum(int(np.prod(s)) for s in block) <= target:
        shapes.extend(block)
    shapes.append((target - sum(int(np.prod(s)) for s in shapes), 1))  # output head takes the remainder
    return [s for s in shapes if int(np.prod(s)) > 0]


def synthetic_update(numel: int, seed: int) -> torch.Tensor:
    """A flattened update with per-layer scales over two decades and Student-t (heavy) tails."""
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for shape in transformer_like_shapes(numel):
        size = int(np.prod(shape))
        scale = 10 ** (-4 + 2 * torch.rand((), generator=generator).item())
        if len(shape) == 1:
            scale *= 0.1  # biases and norm gains move less
        normal = torch.randn(size, generator=generator)
        chi = torch.randn(size, 3, generator=generator).pow(2).sum(1).div(3).sqrt()
        parts.append(normal / chi * scale)  # Student-t with 3 degrees of freedom
    return torch.cat(parts)


def timings(fn: Callable[[], object], reps: int) -> list[float]:
    """Wall-clock seconds of `reps` calls (time.perf_counter)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


@dataclass
class BigResult:
    label: str
    zstd: str
    bytes_per_round: int
    encode_s: list[float]
    decode_s: list[float]
    bytes_zstd_off: int
    bytes_zstd_on: int
    zstd_encode_extra_s: float


def run_big(config: Config, update: torch.Tensor, reps: int) -> BigResult:
    """Steady-state encode/decode timings of one ~10M-element update (after any warm-up)."""
    n = update.numel()
    compressor = config.compressor()
    step = 1000  # past any warm-up
    seed = derive_seed("bench-federation", "peer-0", round_number=step)
    limits = DecodeLimits(max_numel=n)
    compressor.compress(update, seed=seed, step=step)  # first call allocates the residual
    blob = b""

    def encode() -> None:
        nonlocal blob
        blob = compressor.compress(update, seed=seed, step=step).SerializeToString()

    encode_s = timings(encode, reps)
    decode_s = timings(
        lambda: decode(pb.TensorPayload.FromString(blob), limits=limits, expected_numel=n), reps
    )
    sizes, extra = {}, 0.0
    for mode in ("off", "on"):
        variant = Config(config.label, config.codec, {**config.params, "zstd": mode}).compressor()
        variant.compress(update, seed=seed, step=step)
        sizes[mode] = len(variant.compress(update, seed=seed, step=step).SerializeToString())
        seconds = statistics.median(
            timings(lambda v=variant: v.compress(update, seed=seed, step=step), max(1, reps // 2))
        )
        extra += seconds if mode == "on" else -seconds
    return BigResult(
        config.label, compressor.codec.zstd, len(blob), encode_s, decode_s, sizes["off"], sizes["on"], extra
    )


# ============================================================================ report


def print_digits(results: list[DigitsResult], rounds: int, local_steps: int) -> None:
    base = results[0]
    print(
        f"\n(a) digits, 4 peers, FedAvg, {rounds} rounds x {local_steps} local SGD steps, fp32 update = "
        f"{base.fp32_bytes:,} bytes"
    )
    print(f"{'codec':36s} {'bytes/peer/round':>16s} {'vs fp32':>9s} {'accuracy':>9s} {'vs fp32':>9s}")
    for r in results:
        ratio = base.bytes_per_round / r.bytes_per_round
        points = 100 * (r.accuracy - base.accuracy)
        print(
            f"{r.label:36s} {r.bytes_per_round:16,.0f} {ratio:8.1f}x {100 * r.accuracy:8.2f}% {points:+8.2f}pt"
        )


ROBUST_RULES = ("median", "trimmed_mean", "multi_krum")
ROBUST_CONFIGS: list[tuple[Config, bool]] = [
    (Config("none (fp32)", "none"), False),
    (Config("int8", "int8"), False),
    (WINNER, False),
    (Config("randk 5% EF, per-peer seed", "randk", {"fraction": 0.05}), False),
    (Config("randk 5% EF, shared seed", "randk", {"fraction": 0.05}), True),
]


def run_robust(task: DigitsTask, rounds: int, local_steps: int, lr: float, batch: int) -> None:
    """(c) robust rules over decoded compressed updates, 5 honest peers, f = 1 (docs/compression.md)."""
    print(f"\n(c) robust rules on decoded updates: 5 honest peers, f=1, {rounds} rounds; test accuracy")
    reference = run_digits(Config("none (fp32)", "none"), task, rounds, local_steps, lr, batch)
    print(f"{'codec':36s} {'vs fp32':>8s} " + " ".join(f"{rule:>13s}" for rule in ROBUST_RULES))
    print(f"{'none (fp32), mean':36s} {1.0:7.1f}x {100 * reference.accuracy:12.2f}%")
    for config, shared in ROBUST_CONFIGS:
        cells, ratio = [], 0.0
        for rule in ROBUST_RULES:
            result = run_digits(
                config, task, rounds, local_steps, lr, batch, rule=rule, shared_positions=shared
            )
            ratio = result.fp32_bytes / result.bytes_per_round
            cells.append(f"{100 * result.accuracy:12.2f}%")
        print(f"{config.label:36s} {ratio:7.1f}x " + " ".join(cells), flush=True)


def print_big(results: list[BigResult], n: int) -> None:
    mb = FP32_BYTES * n / 1e6
    print(
        f"\n(b) {n:,}-parameter update ({mb:.0f} MB fp32); MB/s of float32 input, medians "
        f"(best run in brackets)"
    )
    print(
        f"{'codec':16s} {'zstd':>4s} {'bytes/round':>11s} {'vs fp32':>8s} {'enc MB/s':>9s} {'dec MB/s':>9s} "
        f"{'enc+dec MB/s':>14s} {'zstd on/off':>11s} {'zstd +ms':>9s}"
    )
    for r in results:
        enc, dec = statistics.median(r.encode_s), statistics.median(r.decode_s)
        best = mb / (min(r.encode_s) + min(r.decode_s))
        round_trip = f"{mb / (enc + dec):.0f} ({best:.0f})"
        print(
            f"{r.label:16s} {r.zstd:>4s} {r.bytes_per_round:11,d} {FP32_BYTES * n / r.bytes_per_round:7.1f}x "
            f"{mb / enc:9.0f} {mb / dec:9.0f} {round_trip:>14s} {r.bytes_zstd_on / r.bytes_zstd_off:11.3f} "
            f"{1e3 * r.zstd_encode_extra_s:+9.1f}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="short run: 40 rounds, 1M-parameter model, 3 reps"
    )
    parser.add_argument("--rounds", type=int, help="digits rounds (default 150, quick 40)")
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet concentration of the non-IID split"
    )
    parser.add_argument("--numel", type=int, help="parameters of model (b) (default 10M, quick 1M)")
    parser.add_argument("--reps", type=int, help="timing repetitions (default 7, quick 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the daemon)")
    parser.add_argument("--only", choices=("digits", "big"), help="run one part")
    parser.add_argument(
        "--robust", action="store_true", help="also run (c): robust rules on compressed updates (slow)"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (40 if args.quick else 150)
    numel = args.numel or (1_000_000 if args.quick else 10_000_000)
    reps = args.reps or (3 if args.quick else 7)
    torch.manual_seed(0)
    # One thread, as the daemon runs (training.torch_threads = 1): on a shared 2-core machine a
    # second OpenMP thread makes every parallel op wait for a descheduled peer (measured: int8
    # round trips of 20-90 MB/s with 2 threads at load 5-7, against 200-300 with 1).
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )

    if args.only in (None, "digits"):
        task = DigitsTask.load(peers=4, alpha=args.alpha, seed=0)
        sizes = [len(y) for y in task.y_train]
        print(f"digits shards (non-IID, Dirichlet alpha={args.alpha}): {sizes} training examples")
        results = []
        for config in DIGITS_CONFIGS:
            start = time.perf_counter()
            results.append(run_digits(config, task, rounds, args.local_steps, args.lr, args.batch))
            print(f"  {config.label}: {time.perf_counter() - start:.1f} s", flush=True)
        print_digits(results, rounds, args.local_steps)
        if args.robust:
            five = DigitsTask.load(peers=5, alpha=args.alpha, seed=0)
            run_robust(five, rounds, args.local_steps, args.lr, args.batch)

    if args.only in (None, "big"):
        update = synthetic_update(numel, seed=1)
        big = []
        for config in BIG_CONFIGS:
            big.append(run_big(config, update, reps))
            print(f"  {config.label}: done", flush=True)
        print_big(big, numel)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs, shared machine)")


if __name__ == "__main__":
    main()
