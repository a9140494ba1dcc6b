"""`fednode report` and the report `fednode launch` writes: real PNGs with the run's data, one
self-contained HTML page, from a run directory or from one node's state dir."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from fednode.node.membership import AuditLog
from fednode.node.report import load_run, write_report
from fednode.node.report.render import PLOTS
from fednode.node.rotation import JsonLinesLog

PNG = b"\x89PNG\r\n\x1a\n"


def fake_state_dir(path: Path, peer: str, rounds: int, rejected: int, max_bytes: int = 10_000) -> None:
    """What a daemon leaves: summary.json, history.jsonl (rotated), audit.jsonl."""
    path.mkdir(parents=True)
    history = JsonLinesLog(path / "history.jsonl", max_bytes=max_bytes)
    start = time.time() - 100
    for index in range(1, rounds + 1):
        history.append({"peer_id": peer, "run_started_unix": start, "round": index, "model_version": index,
                        "accuracy": 0.5 + index / (3 * rounds), "loss": 2.0 / index, "train_loss": 1.5 / index,
                        "seconds": 0.1, "round_seconds": 0.5, "participants": 3, "finished_at": start + index,
                        "bytes_sent": 1000 * index, "bytes_received": 1200 * index})
    history.close()
    with AuditLog(path / "audit.jsonl") as audit:
        for index in range(rejected):
            audit.record_update(federation_id="f", sender_peer_id="bad", payload_sha256="00" * 32, accepted=False,
                                reason="non_finite", round=index + 1)
        audit.record_update(federation_id="f", sender_peer_id="good", payload_sha256="11" * 32, accepted=True, round=1)
    (path / "summary.json").write_text(json.dumps({"peer_id": peer, "rounds": rounds, "accuracy": 0.8,
                                                   "bytes_sent": 1000 * rounds, "device": "cpu",
                                                   "stop_reason": "rounds", "history": []}))


def check_report(out: Path, members: int) -> str:
    for name in PLOTS:
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG), name
        import matplotlib.image

        image = matplotlib.image.imread(out / f"{name}.png")
        assert image.shape[0] > 300 and image.shape[1] > 1000, (name, image.shape)
        assert image.std() > 0.01, f"{name}.png is blank"
    page = (out / "index.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(PLOTS)
    # Self-contained: nothing fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert page.count("<tr>") >= members + 1
    return page


def test_report_of_a_state_dir_with_rotated_history_and_rejections(tmp_path: Path, cli) -> None:
    fake_state_dir(tmp_path / "node", "12D3KooWfirst", rounds=30, rejected=4, max_bytes=2000)
    assert len(list((tmp_path / "node").glob("history.jsonl.*"))) >= 2
    run = load_run(tmp_path / "node")
    assert run.kind == "node" and [r["round"] for r in run.members[0].rounds] == list(range(1, 31))
    assert [r["reason"] for r in run.members[0].rejections] == ["non_finite"] * 4
    result = cli("report", str(tmp_path / "node"), "--format", "json")
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)
    assert written["rounds"] == 30 and set(written["plots"]) == set(PLOTS)
    page = check_report(tmp_path / "node" / "report", 1)
    assert "12D3KooWfirst" in page and "non_finite" not in page  # reasons are in the plot, counts in the table
    assert "<td>4</td>" in page


def test_report_of_nothing_says_what_it_needs(tmp_path: Path, cli) -> None:
    result = cli("report", str(tmp_path))
    assert result.returncode == 2 and "summary.json" in result.stderr and "state dir" in result.stderr
    result = cli("report", str(tmp_path / "missing"))
    assert result.returncode == 2 and "not a directory" in result.stderr


def test_plots_carry_one_line_per_member(tmp_path: Path) -> None:
    """The accuracy plot of a 3-member run holds three lines with the members' values."""
    rows = []
    for index in range(3):
        fake_state_dir(tmp_path / f"node-{index}", f"12D3KooWpeer{index}", rounds=5 + index, rejected=index)
        rows.append({"node": index, "byzantine": index == 2, "state_dir": str(tmp_path / f"node-{index}")})
    (tmp_path / "summary.json").write_text(json.dumps({"federation_id": "demo", "nodes": rows,
                                                       "plan": {"nodes": 3, "rule": "mean", "schedule": "sync"}}))
    run = load_run(tmp_path)
    assert run.kind == "launch" and [m.byzantine for m in run.members] == [False, False, True]
    import matplotlib

    matplotlib.use("Agg")
    from fednode.node.report.render import _colors, _over_rounds_and_time, _pyplot, _start_time

    plt = _pyplot()
    captured = {}
    original_save = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["lines"] = [(line.get_label(), list(line.get_ydata())) for line in fig.axes[0].get_lines()]
        return original_save(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        _over_rounds_and_time(plt, run, [("accuracy", "-o", "")], "acc", "accuracy", tmp_path / "a.png",
                              _colors(plt, run), _start_time(run))
    finally:
        plt.Figure.savefig = original_save
    lines = captured["lines"]
    assert [label.split(" ")[0] for label, _ in lines] == ["node-0", "node-1", "node-2"]
    assert "[byzantine]" in lines[2][0]
    assert [len(values) for _, values in lines] == [5, 6, 7]
    assert lines[0][1][-1] == pytest.approx(0.5 + 5 / 15)
    check_report(write_report(run, tmp_path / "report").html.parent, 3)
