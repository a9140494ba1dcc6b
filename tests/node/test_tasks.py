"""Task plug-ins: the digits default task, Dirichlet shards and the file loader for user data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fednode.node.errors import TaskError
from fednode.node.model import assign_parameters, flatten_parameters, model_layout
from fednode.node.tasks import TaskContext, dirichlet_shards, load_task
from fednode.node.trainer import LocalTrainer

DIGITS = "fednode.node.tasks.digits:build_task"
FILES = "fednode.node.tasks.files:build_task"


def test_dirichlet_shards_are_disjoint_complete_and_reproducible() -> None:
    labels = np.repeat(np.arange(10), 50)
    shards = dirichlet_shards(labels, 4, alpha=0.5, seed=3)
    again = dirichlet_shards(labels, 4, alpha=0.5, seed=3)
    other = dirichlet_shards(labels, 4, alpha=0.5, seed=4)
    joined = np.concatenate(shards)
    assert len(joined) == len(labels) == len(np.unique(joined))
    assert all((a == b).all() for a, b in zip(shards, again, strict=True))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(shards, other, strict=True))
    # Non-IID: with alpha = 0.1 shards have very different class mixes.
    skewed = dirichlet_shards(labels, 4, alpha=0.1, seed=0)
    histograms = np.stack([np.bincount(labels[s], minlength=10) / len(s) for s in skewed])
    assert histograms.max(axis=1).mean() > 0.3


def test_digits_shards_partition_the_training_set_and_share_the_initial_model() -> None:
    tasks = [load_task(DIGITS, TaskContext(i, 3, seed=1), {}) for i in range(3)]
    assert sum(len(t.train_data) for t in tasks) == 1437  # 80 % of 1797
    assert all(len(t.test_data) == 360 for t in tasks)
    models = [t.model_factory() for t in tasks]
    assert all(torch.equal(flatten_parameters(models[0]), flatten_parameters(m)) for m in models)
    assert model_layout(models[0]).numel == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    different_seed = load_task(DIGITS, TaskContext(0, 3, seed=2), {}).model_factory()
    assert not torch.equal(flatten_parameters(models[0]), flatten_parameters(different_seed))


def test_flatten_and_assign_round_trip() -> None:
    task = load_task(DIGITS, TaskContext(), {"hidden": [16]})
    model = task.model_factory()
    vector = torch.randn(model_layout(model).numel)
    assign_parameters(model, vector)
    assert torch.equal(flatten_parameters(model), vector)
    with pytest.raises(ValueError, match="parameters"):
        assign_parameters(model, vector[:-1])


def _write_csv(path: Path, features: np.ndarray, labels: np.ndarray) -> None:
    header = ",".join([f"f{i}" for i in range(features.shape[1])] + ["label"])
    rows = np.column_stack([features, labels])
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.6f")


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.array([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    return centres[labels] + rng.normal(size=(n, 4)), labels


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_file_task_reads_user_data_and_trains(tmp_path: Path, suffix: str) -> None:
    paths = {}
    for split, (n, seed) in {"train": (600, 0), "test": (200, 1)}.items():
        features, labels = _blobs(n, seed)
        path = tmp_path / f"{split}{suffix}"
        if suffix == ".csv":
            _write_csv(path, features, labels)
        else:
            np.savez(path, x=features, y=labels)
        paths[split] = str(path)
    task = load_task(FILES, TaskContext(), {**paths, "hidden": [16]})
    assert len(task.train_data) == 600 and len(task.test_data) == 200
    trainer = LocalTrainer(task, torch.device("cpu"), batch_size=32, lr=0.1, momentum=0.9)
    model = task.model_factory()
    for _ in range(10):
        trainer.train_round(model, 20)
    assert trainer.evaluate(model).accuracy > 0.9


def test_file_task_can_split_one_file_across_shards(tmp_path: Path) -> None:
    features, labels = _blobs(300, 0)
    _write_csv(tmp_path / "all.csv", features, labels)
    params = {"train": str(tmp_path / "all.csv"), "test": str(tmp_path / "all.csv"), "split": "iid"}
    sizes = [len(load_task(FILES, TaskContext(i, 3), params).train_data) for i in range(3)]
    assert sizes == [100, 100, 100]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a,b\n1,2\n", "no column 'label'"),
        ("a,label\n1,x\n", "non-numeric"),
        ("a,label\nnan,1\n", "NaN"),
        ("a,label\n1,0.5\n", "non-negative integers"),
    ],
)
def test_bad_user_files_give_clear_task_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(TaskError, match=message):
        load_task(FILES, TaskContext(), {"train": str(path), "test": str(path)})


def test_missing_file_and_bad_params_are_task_errors(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="does not exist"):
        load_task(FILES, TaskContext(), {"train": str(tmp_path / "x.csv"), "test": str(tmp_path / "x.csv")})
    with pytest.raises(TaskError, match="does not accept"):
        load_task(DIGITS, TaskContext(), {"nonsense": 1})
    with pytest.raises(TaskError, match="no function"):
        load_task("fednode.node.tasks.digits:nope", TaskContext(), {})


def test_npz_with_objects_is_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises((TaskError, ValueError)):
        load_task(FILES, TaskContext(), {"train": str(path), "test": str(path)})


def test_digits_split_is_scikit_learns_computed_once_out_of_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default task's data equals scikit-learn's stratified split (spec section 8), is
    computed in a child interpreter and cached; a damaged cache is computed again."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from fednode.node.tasks import digits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    arrays = digits.load_digits_arrays()
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    expected = (((x_train - mean) / std).astype(np.float32), y_train, ((x_test - mean) / std).astype(np.float32), y_test)
    for got, want in zip(arrays, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [a.dtype for a in arrays] == [np.float32, np.int64, np.float32, np.int64]
    cache = digits._split_cache(0.2)
    assert cache.parent == tmp_path / "fednode" and cache.exists()
    cache.write_bytes(b"not an npz file")
    again = digits.load_digits_arrays()
    for got, want in zip(again, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # no temporary left behind


def test_digits_split_without_a_writable_cache_is_computed_anyway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fednode.node.tasks import digits

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the cache directory should go")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    x_train, y_train, x_test, y_test = digits.load_digits_arrays()
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert sorted(set(y_train.tolist())) == sorted(set(y_test.tolist())) == list(range(10))


SYNTHETIC = "fednode.node.tasks.synthetic:build_task"


def test_synthetic_task_is_the_same_data_everywhere_split_non_iid_and_learnable() -> None:
    shards = [load_task(SYNTHETIC, TaskContext(i, 4, 0), {}) for i in range(4)]
    tests = {bytes(t.test_data.features.numpy().tobytes()) for t in shards}  # type: ignore[attr-defined]
    assert len(tests) == 1  # one test set for every member
    sizes = [len(t.train_data) for t in shards]  # type: ignore[arg-type]
    assert sum(sizes) == 4000 and len(set(sizes)) > 1
    first = [flatten_parameters(t.model_factory()) for t in shards]
    assert all(torch.equal(first[0], p) for p in first[1:])
    trainer = LocalTrainer(load_task(SYNTHETIC, TaskContext(0, 1, 0), {}), torch.device("cpu"),
                           batch_size=32, lr=0.05, momentum=0.9)
    model = shards[0].model_factory()
    before = trainer.evaluate(model).accuracy
    trainer.train_round(model, 300)
    after = trainer.evaluate(model).accuracy
    # Ten classes: chance is 0.1; the label noise and the overlap keep it well below 1.
    assert before < 0.3 and 0.55 < after < 0.9, (before, after)


def test_synthetic_task_rejects_bad_parameters() -> None:
    with pytest.raises(TaskError, match="informative"):
        load_task(SYNTHETIC, TaskContext(), {"informative": 50})
    with pytest.raises(TaskError, match="label_noise"):
        load_task(SYNTHETIC, TaskContext(), {"label_noise": 1.5})
