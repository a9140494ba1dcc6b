"""What a report is drawn from: per-member round histories, summaries and audit rejections."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fednode.node.errors import ExitCode, FednodeError

SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.jsonl"
AUDIT_FILE = "audit.jsonl"


class RunNotFound(FednodeError):
    exit_code = ExitCode.USAGE


@dataclass
class MemberData:
    """One node: its rounds (oldest first), its summary and the updates it rejected."""

    name: str
    state_dir: Path
    peer_id: str = ""
    byzantine: bool = False
    summary: dict[str, Any] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    rejections: list[dict[str, Any]] = field(default_factory=list)  # {unix_ms, round, reason, sender}
    accepted: int = 0

    @property
    def label(self) -> str:
        short = f" ({self.peer_id[-6:]})" if self.peer_id else ""
        return f"{self.name}{short}" + (" [byzantine]" if self.byzantine else "")


@dataclass
class RunData:
    source: Path
    kind: str  # "launch" (a run directory of fednode launch) or "node" (one state directory)
    title: str
    members: list[MemberData]
    run_summary: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            return data
    return {}


def _load_member(name: str, state_dir: Path, *, byzantine: bool = False) -> MemberData:
    from fednode.node.membership.audit import read_audit_files
    from fednode.node.rotation import all_files, read_json_lines

    summary = _read_json(state_dir / SUMMARY_FILE)
    member = MemberData(name=name, state_dir=state_dir, peer_id=str(summary.get("peer_id", "")),
                        byzantine=byzantine, summary=summary)
    if all_files(state_dir / HISTORY_FILE):
        member.rounds = [r for r in read_json_lines(state_dir / HISTORY_FILE) if "round" in r]
        member.peer_id = member.peer_id or str(next((r.get("peer_id") for r in member.rounds if r.get("peer_id")), ""))
    else:  # a state dir written before history.jsonl existed: the summary's rounds
        member.rounds = [r for r in summary.get("history", []) if isinstance(r, dict)]
    if all_files(state_dir / AUDIT_FILE):
        for record in read_audit_files(state_dir / AUDIT_FILE):
            event = record.get("event") or {}
            if event.get("action") != "update":
                continue
            aggregation = record.get("detail") == "aggregation"  # the rule's decision on an accepted update
            if record.get("status") == "rejected":
                reason = "left_out_by_rule" if aggregation else record.get("reason") or "other"
                member.rejections.append({"unix_ms": record.get("unix_ms", 0), "round": event.get("round") or 0,
                                          "reason": reason, "sender": (record.get("actor") or {}).get("id", "")})
            elif record.get("status") == "accepted" and not aggregation:
                member.accepted += 1
    return member


def load_run(path: Path) -> RunData:
    """A `fednode launch` run directory (summary.json with a "nodes" table) or a node's state
    directory (summary.json and/or history.jsonl). RunNotFound says what was expected."""
    path = Path(path)
    if not path.is_dir():
        raise RunNotFound(f"{path} is not a directory; pass a run directory (runs/<time>) or a node's state dir")
    summary = _read_json(path / SUMMARY_FILE)
    if isinstance(summary.get("nodes"), list):
        members: list[MemberData] = []
        for row in summary["nodes"]:
            state_dir = Path(row.get("state_dir") or path / f"node-{row.get('node', len(members))}")
            if not state_dir.is_absolute() and not state_dir.exists():
                state_dir = path / state_dir.name
            members.append(_load_member(f"node-{row.get('node', len(members))}", state_dir,
                                        byzantine=bool(row.get("byzantine"))))
        plan = summary.get("plan", {})
        title = (f"federation {summary.get('federation_id', '?')}: {plan.get('nodes', len(members))} nodes, "
                 f"rule {plan.get('rule', '?')}, schedule {plan.get('schedule', '?')}"
                 + (f", exchange {plan['exchange']}" if plan.get("exchange") else ""))
        return RunData(path, "launch", title, members, summary)
    from fednode.node.rotation import all_files

    if summary or all_files(path / HISTORY_FILE):
        member = _load_member(summary.get("display_name") or path.name, path)
        title = f"node {member.peer_id or path.name}" + (f" in {summary['federation_id']}" if summary.get("federation_id") else "")
        return RunData(path, "node", title, [member], summary)
    raise RunNotFound(f"{path} has neither summary.json nor history.jsonl; pass a run directory of `fednode launch` "
                      f"or a node's state dir (--state-dir of `fednode start`)")
