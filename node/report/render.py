"""Plots (matplotlib, the `report` extra) and the self-contained HTML page of a run."""

from __future__ import annotations

import base64
import html
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fednode.node.durable import atomic_write_bytes
from fednode.node.errors import ExitCode, FednodeError
from fednode.node.report.data import MemberData, RunData

PLOTS = ("accuracy", "loss", "participants", "bytes", "round_time", "rejections")


class ReportError(FednodeError):
    exit_code = ExitCode.CONFIG


@dataclass
class Report:
    html: Path
    plots: dict[str, Path] = field(default_factory=dict)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ReportError("plots need matplotlib: pip install 'fednode[report]' (or pip install matplotlib)") from exc
    matplotlib.use("Agg", force=True)  # files only: never a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(member: MemberData, key: str, t0: float) -> tuple[list[float], list[float], list[float]]:
    """(rounds, seconds since t0, values) of the rounds that have a finite `key`."""
    rounds, times, values = [], [], []
    for record in member.rounds:
        if record.get("synced") and key not in ("accuracy", "loss"):
            continue  # a model a state sync brought: no round of this node's own to time or count
        value = _finite(record.get(key))
        if value is None:
            continue
        rounds.append(float(record.get("round", 0)))
        finished = _finite(record.get("finished_at")) or 0.0
        times.append(finished - t0 if finished else math.nan)
        values.append(value)
    return rounds, times, values


def _start_time(run: RunData) -> float:
    """When the first daemon of the run started (unix seconds); 0 when the rounds carry no times."""
    starts = [_finite(r.get("run_started_unix")) or ((_finite(r.get("finished_at")) or 0.0)
                                                     - (_finite(r.get("round_seconds")) or 0.0))
              for m in run.members for r in m.rounds[:1]]
    starts = [s for s in starts if s > 0]
    return min(starts) if starts else 0.0


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _colors(plt: Any, run: RunData) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {m.name: cmap(i % 10) for i, m in enumerate(run.members)}


def _over_rounds_and_time(plt: Any, run: RunData, keys: list[tuple[str, str, str]], ylabel: str, title: str,
                          path: Path, colors: dict[str, Any], t0: float, ylim: tuple[float, float] | None = None) -> Path:
    fig, (by_round, by_time) = plt.subplots(1, 2, figsize=(12, 4.2))
    for member in run.members:
        for key, style, suffix in keys:
            rounds, times, values = _series(member, key, t0)
            if not values:
                continue
            label = member.label + (f" {suffix}" if suffix else "")
            by_round.plot(rounds, values, style, color=colors[member.name], label=label, linewidth=1.4, markersize=3)
            if t0:
                by_time.plot(times, values, style, color=colors[member.name], label=label, linewidth=1.4, markersize=3)
    by_round.set_xlabel("round")
    by_time.set_xlabel("seconds since the first daemon started")
    for axis in (by_round, by_time):
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if ylim:
            axis.set_ylim(*ylim)
    by_round.set_title(f"{title} per round")
    by_time.set_title(f"{title} over time")
    handles, _labels = by_round.get_legend_handles_labels()
    if handles:
        by_round.legend(fontsize=7, loc="best")
    else:
        for axis in (by_round, by_time):
            axis.text(0.5, 0.5, "no rounds recorded", ha="center", va="center", transform=axis.transAxes)
    return _save(fig, path)


def _participants(plt: Any, run: RunData, path: Path, colors: dict[str, Any], t0: float) -> Path:
    from matplotlib.ticker import MaxNLocator

    fig, axis = plt.subplots(figsize=(12, 3.8))
    most = 1.0
    for index, member in enumerate(run.members):
        rounds, _, values = _series(member, "participants", t0)
        if values:
            # Members often agree exactly: a small vertical offset keeps every line visible.
            offset = 0.04 * (index - (len(run.members) - 1) / 2)
            axis.step(rounds, [v + offset for v in values], where="post", color=colors[member.name],
                      label=member.label, linewidth=1.4, marker="o", markersize=3)
            most = max(most, *values)
    axis.set_ylim(0, most + 1)
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("round")
    axis.set_ylabel("updates aggregated")
    axis.set_title("participants per round (updates each member aggregated, its own included)")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)
    return _save(fig, path)


def _bytes(plt: Any, run: RunData, path: Path, colors: dict[str, Any], t0: float) -> Path:
    fig, (sent, received) = plt.subplots(1, 2, figsize=(12, 4.2))
    drawn = False
    for member in run.members:
        for axis, key in ((sent, "bytes_sent"), (received, "bytes_received")):
            rounds, times, values = _series(member, key, t0)
            if values and max(values) > 0:
                x = times if t0 else rounds
                axis.plot(x, [v / 1e6 for v in values], "-o", color=colors[member.name], label=member.label,
                          linewidth=1.4, markersize=3)
                drawn = True
    for axis, what in ((sent, "sent"), (received, "received")):
        axis.set_xlabel("seconds since the first daemon started" if t0 else "round")
        axis.set_ylabel("MB (cumulative since the daemon started)")
        axis.set_title(f"payload bytes {what} through the mesh")
        axis.grid(alpha=0.3)
    if drawn:
        sent.legend(fontsize=7)
    else:
        for axis in (sent, received):
            axis.text(0.5, 0.5, "no mesh traffic recorded (training alone?)", ha="center", va="center",
                      transform=axis.transAxes)
    return _save(fig, path)


def _round_time(plt: Any, run: RunData, path: Path, colors: dict[str, Any], t0: float) -> Path:
    fig, axis = plt.subplots(figsize=(12, 3.8))
    for member in run.members:
        rounds, _, whole = _series(member, "round_seconds", t0)
        if whole:
            axis.plot(rounds, whole, "-o", color=colors[member.name], label=f"{member.label} round", linewidth=1.4,
                      markersize=3)
        rounds, _, training = _series(member, "seconds", t0)
        if training:
            axis.plot(rounds, training, ":", color=colors[member.name], label=f"{member.label} local training",
                      linewidth=1.2)
    axis.set_xlabel("round")
    axis.set_ylabel("seconds")
    axis.set_title("round time (solid: whole round; dotted: local training)")
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _rejections(plt: Any, run: RunData, path: Path, colors: dict[str, Any]) -> Path:
    fig, (by_reason, by_round) = plt.subplots(1, 2, figsize=(12, 4.2))
    reasons = sorted({r["reason"] for m in run.members for r in m.rejections})
    if not reasons:
        for axis in (by_reason, by_round):
            axis.text(0.5, 0.5, "no rejected updates", ha="center", va="center", transform=axis.transAxes, fontsize=12)
            axis.set_xticks([])
            axis.set_yticks([])
        by_reason.set_title("rejected updates by reason")
        by_round.set_title("rejected updates per round")
        return _save(fig, path)
    width = 0.8 / max(1, len(run.members))
    for index, member in enumerate(run.members):
        counts = Counter(r["reason"] for r in member.rejections)
        positions = [i + index * width for i in range(len(reasons))]
        by_reason.bar(positions, [counts.get(reason, 0) for reason in reasons], width, color=colors[member.name],
                      label=member.label)
        per_round = Counter(int(r["round"] or 0) for r in member.rejections)
        if per_round:
            rounds = sorted(per_round)
            by_round.bar([r + index * width for r in rounds], [per_round[r] for r in rounds], width,
                         color=colors[member.name], label=member.label)
    from matplotlib.ticker import MaxNLocator

    by_reason.set_xticks([i + 0.4 - width / 2 for i in range(len(reasons))], reasons, rotation=20, fontsize=8)
    by_reason.set_ylabel("updates")
    by_reason.set_title("rejected updates by reason, as each member decided")
    by_round.set_xlabel("round")
    by_round.set_ylabel("updates")
    by_round.set_title("rejected updates per round")
    for axis in (by_reason, by_round):
        axis.grid(alpha=0.3, axis="y")
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylim(0, axis.get_ylim()[1] * 1.35)  # room for the legend above the bars
        axis.legend(fontsize=7, loc="upper right")
    if "left_out_by_rule" in reasons:
        fig.text(0.01, 0.01, "left_out_by_rule: accepted, but not used by the aggregation rule", fontsize=7, color="0.3")
    return _save(fig, path)


def draw_plots(run: RunData, out_dir: Path) -> dict[str, Path]:
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    colors, t0 = _colors(plt, run), _start_time(run)
    plots: dict[str, Path] = {}
    try:
        plots["accuracy"] = _over_rounds_and_time(plt, run, [("accuracy", "-o", "")], "test accuracy", "accuracy",
                                                  out_dir / "accuracy.png", colors, t0, (0.0, 1.0))
        plots["loss"] = _over_rounds_and_time(plt, run, [("loss", "-o", "eval"), ("train_loss", "--x", "train")], "loss",
                                              "loss (solid: held-out; dashed: local training)", out_dir / "loss.png",
                                              colors, t0)
        plots["participants"] = _participants(plt, run, out_dir / "participants.png", colors, t0)
        plots["bytes"] = _bytes(plt, run, out_dir / "bytes.png", colors, t0)
        plots["round_time"] = _round_time(plt, run, out_dir / "round_time.png", colors, t0)
        plots["rejections"] = _rejections(plt, run, out_dir / "rejections.png", colors)
    finally:
        plt.close("all")
    return plots


def _human_bytes(count: Any) -> str:
    value = _finite(count) or 0.0
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _cell(value: Any) -> str:
    number = _finite(value)
    if isinstance(value, float) and number is not None:
        return f"{number:.4f}"
    if isinstance(value, float):
        return "-"
    return html.escape(str(value))


def _member_rows(run: RunData) -> list[list[str]]:
    rows = []
    for member in run.members:
        s, last = member.summary, (member.rounds[-1] if member.rounds else {})
        accuracies = [a for a in (_finite(r.get("accuracy")) for r in member.rounds) if a is not None]
        closed = sum(1 for r in member.rounds if not r.get("synced"))
        rows.append([
            html.escape(member.label),
            _cell(s.get("rounds", last.get("round", 0))),
            _cell(closed),
            _cell(float(s.get("accuracy", last.get("accuracy", math.nan)))),
            _cell(max(accuracies) if accuracies else math.nan),
            _human_bytes(s.get("bytes_sent", last.get("bytes_sent", 0))),
            _human_bytes(s.get("bytes_received", last.get("bytes_received", 0))),
            _cell(member.accepted),
            _cell(len(member.rejections)),
            _cell(s.get("stop_reason", "") or "-"),
            _cell(s.get("device", "") or "-"),
        ])
    return rows


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}table{border-collapse:collapse;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}.meta{color:#666;font-size:.85em}code{background:#f4f4f4;padding:0 .2em}"""


def write_html(run: RunData, plots: dict[str, Path], path: Path) -> Path:
    headers = ["member", "rounds", "rounds it closed (others came by state sync)", "accuracy", "best accuracy", "sent", "received", "updates accepted",
               "updates rejected", "stop reason", "device"]
    table = "<table><tr>" + "".join(f"<th>{h}</th>" for h in headers) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in _member_rows(run)) + "</table>"
    plan = run.run_summary.get("plan") if run.kind == "launch" else None
    plan_html = ""
    if isinstance(plan, dict):
        plan_html = "<h2>plan</h2><table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in plan.items()) + "</table>"
    figures = []
    captions = {"accuracy": "Test accuracy", "loss": "Loss", "participants": "Participants", "bytes": "Traffic",
                "round_time": "Round time", "rejections": "Rejected updates"}
    for name in PLOTS:
        if name in plots:
            data = base64.b64encode(plots[name].read_bytes()).decode()
            figures.append(f'<h2>{captions[name]}</h2><img alt="{name}" src="data:image/png;base64,{data}">')
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>fednode report: "
            f"{html.escape(run.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>fednode report: {html.escape(run.title)}</h1>"
            f"<p class=\"meta\">from <code>{html.escape(str(run.source))}</code>, written "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}</p><h2>members</h2>{table}{plan_html}{''.join(figures)}"
            f"</body></html>\n")
    atomic_write_bytes(path, page.encode(), mode=0o644)
    return path


def write_report(run: RunData, out_dir: Path) -> Report:
    """Draw every plot into `out_dir` and write `out_dir/index.html` (plots embedded)."""
    out_dir = Path(out_dir)
    plots = draw_plots(run, out_dir)
    return Report(html=write_html(run, plots, out_dir / "index.html"), plots=plots)
