"""`fednode task new NAME` (scaffold a task of your own) and `fednode task stats` (federation-wide
normalisation statistics for the CSV/NPZ task)."""

from __future__ import annotations

import json
import keyword
import sys
from pathlib import Path
from typing import Annotated

import typer

from fednode.node.errors import ExitCode

task_app = typer.Typer(help="Write a task of your own; agree on normalisation statistics.", no_args_is_help=True)

_MODULE = '''"""{name}: a fednode task (written by `fednode task new {name}`).

fednode imports this module in every node's training worker (config task.name = "{name}:build_task";
task.path puts this directory on the import path, so no PYTHONPATH is needed) and calls
build_task(context, **[task.params]). Every member of a federation must build the same initial
model (seeded_init) and the same input layout. docs/tasks.md has the contract.

As written it trains on seeded synthetic data, so it runs at once; replace load_arrays() with your
data (one site's files, a database query, ...).
"""

from __future__ import annotations

import numpy as np
import torch

from fednode.node.tasks import Task, TaskContext, seeded_init
from fednode.node.tasks.base import TensorPairDataset, mlp


def load_arrays(context: TaskContext, samples: int, features: int, classes: int) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test) as float32 / int64 arrays. TODO: load your data here.

    The stand-in: Gaussian clusters, one per class, drawn from the shared seed; each node keeps
    its own shard (context.shard_index of context.shard_count) of the training rows and evaluates on
    the common test rows."""
    rng = np.random.default_rng(context.seed)
    centres = rng.normal(0.0, 1.0, size=(classes, features))
    labels = rng.integers(0, classes, size=samples)
    rows = centres[labels] + rng.normal(0.0, 1.5, size=(samples, features))
    split = int(samples * 0.8)
    mine = np.arange(split)[context.shard_index :: context.shard_count]
    return (rows[mine].astype(np.float32), labels[mine].astype(np.int64),
            rows[split:].astype(np.float32), labels[split:].astype(np.int64))


def build_task(context: TaskContext, samples: int = 2000, features: int = 8, classes: int = 3,
               hidden: list[int] | None = None) -> Task:
    x_train, y_train, x_test, y_test = load_arrays(context, samples, features, classes)
    hidden_sizes = [64] if hidden is None else [int(h) for h in hidden]

    def model_factory() -> torch.nn.Module:
        with seeded_init(context.seed):  # the same initial weights on every member
            return mlp(features, hidden_sizes, classes)

    return Task(
        name="{name}",
        model_factory=model_factory,
        train_data=TensorPairDataset(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test_data=TensorPairDataset(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        description=f"{name}: {{len(y_train)}} training rows, {{features}} features, {{classes}} classes",
        preprocessing={{"features": features, "num_classes": classes}},  # exported with the model
    )
'''

_CONFIG = '''# fednode configuration for the task {name} (written by `fednode task new {name}`).
#   fednode start --config {config} --state-dir ./state-{name}
# Every key, with its default: fednode config show --format keys
[task]
name = "{name}:build_task"
path = [{directory}]   # where {name}.py lives: put first on the training worker's import path

[task.params]
samples = 2000
features = 8
classes = 3
hidden = [64]

[training]
local_steps = 20
lr = 0.05
rounds = 20
'''


@task_app.command("new")
def task_new(
    name: Annotated[str, typer.Argument(help="module name of the task (a Python identifier, e.g. my_task)")],
    directory: Annotated[Path | None, typer.Option("--dir", help="where to create NAME/ (default: the current directory)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
    output: Annotated[str, typer.Option("--format", help="human or json")] = "human",
) -> None:
    """Scaffold a task module and its config (task.name and task.path set), ready to run."""
    if not name.isidentifier() or keyword.iskeyword(name) or name in sys.stdlib_module_names or name == "fednode":
        typer.echo(f"error: {name!r} cannot be a module name: use letters, digits and _ (e.g. my_task), "
                   f"not a Python keyword or a standard-library module", err=True)
        raise typer.Exit(int(ExitCode.USAGE))
    folder = ((directory or Path.cwd()) / name).resolve()
    module, config = folder / f"{name}.py", folder / "fednode.toml"
    existing = [str(p) for p in (module, config) if p.exists()]
    if existing and not force:
        typer.echo(f"error: {', '.join(existing)} already exist(s); pass --force to overwrite", err=True)
        raise typer.Exit(int(ExitCode.USAGE))
    from fednode.node.durable import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(module, _MODULE.format(name=name).encode(), mode=0o644)
    atomic_write_bytes(config, _CONFIG.format(name=name, config=config, directory=json.dumps(str(folder))).encode(),
                       mode=0o644)
    info = {"module": str(module), "config": str(config), "task": f"{name}:build_task", "path": str(folder)}
    if output == "json":
        sys.stdout.write(json.dumps(info, indent=2) + "\n")
        return
    typer.echo(f"wrote {module}\n      {config}\n"
               f"try it:  fednode start --config {config} --state-dir ./state-{name}\n"
               f"         fednode launch --nodes 3 --set 'task.name=\"{name}:build_task\"' "
               f"--set 'task.path=[{json.dumps(str(folder))}]' --set 'task.params={{hidden = [64]}}'\n"
               f"then replace load_arrays() in {module.name} with your data (docs/tasks.md)")


@task_app.command("stats")
def task_stats(
    inputs: Annotated[list[Path], typer.Argument(
        help="training files (.csv, .npz) to summarise, and/or statistics files (.json) to merge")],
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: print)")] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="CSV label column")] = "label",
    output: Annotated[str, typer.Option("--format", help="human or json")] = "human",
) -> None:
    """Normalisation statistics (count, mean, M2 per feature) of data files, or the exact merge of
    the sites' statistics files: the `stats` file of normalization = "federation" (docs/tasks.md)."""
    from fednode.cli.admin import fail
    from fednode.node.durable import atomic_write_bytes
    from fednode.node.errors import FednodeError, TaskError
    from fednode.node.tasks.tabular import (
        feature_moments,
        merge_moments,
        read_moments,
        read_tabular,
        standardization,
    )

    try:
        parts = []
        for path in inputs:
            if path.suffix.lower() == ".json":
                parts.append(read_moments(path))
            else:
                features, _labels = read_tabular(path, label_column)
                parts.append(feature_moments(features, source=path.name))
        try:
            merged = merge_moments(parts)
        except ValueError as exc:
            raise TaskError(str(exc)) from None
    except FednodeError as error:
        raise fail(error) from None
    text = json.dumps(merged, indent=2) + "\n"
    if out is not None:
        atomic_write_bytes(out, text.encode(), mode=0o644)
    if output == "json" or out is None:
        sys.stdout.write(text)
    else:
        mean, std = standardization(merged)
        typer.echo(f"wrote {out}: {merged['count']} rows, {merged['features']} features from "
                   f"{len(merged['sources']) or len(parts)} source(s); mean {mean[:3].round(4).tolist()}..., "
                   f"std {std[:3].round(4).tolist()}...")
