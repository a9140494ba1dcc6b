"""The multi-host life of a federation, on three emulated hosts with addresses of their own.

Daemons start as docs/admin.md says (`fednode start --state-dir DIR`: the fixed default port, no
mesh.bootstrap), are driven with the federation CLI, and are judged by what the CLI, their JSON
logs and their audit logs say. Nothing is mocked.

1. A creates a federation with a budget (40 rounds, or 0.90 test accuracy) whose rounds need all
   three; B and C join with invites; all three train on the default task until they report
   `finished` at >= 0.90.
2. They leave it, and A creates a second one (no budget); B and C join. Once it trains, SIGTERM
   all three and start them again in reverse order, C and B on new ports (A, started last, where
   it was: if every member moves while all are down nobody knows where anybody went, see
   docs/admin.md): they find each other and continue from their checkpoints.
3. kill -9 A (the issuer) mid-round: B and C continue. A comes back on a new port; the others
   learn its new address and remember it next to the old one (peers.json).
4. B leaves: A and C continue. B joins again with a new invite.
5. A revokes C: A and B refuse C's messages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from netlab import Host, LabProcess, NetLab

from fednode.node.logs import read_json_log
from fednode.node.membership import read_audit_log

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(1500)]

FEDNODE = [sys.executable, "-m", "fednode.cli.app"]
DEFAULT_PORT = 7461


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FEDNODE_")}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, on_fail: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s\n{on_fail()}")
        time.sleep(0.5)


class Site:
    """One host of the lab and the daemon of its state dir (started, stopped, restarted)."""

    def __init__(self, lab: NetLab, host: Host, workdir: Path) -> None:
        self.lab, self.host, self.name = lab, host, host.name
        self.state_dir = workdir / host.name
        self.log_path = workdir / f"{host.name}.log"
        self.proc: LabProcess | None = None
        self.peer_id = ""

    # -------------------------------------------------------------------- the daemon
    def start(self, port: int = DEFAULT_PORT, *, ready: bool = True) -> None:
        """Start the daemon; return once it is ready, or (ready=False) once its admin API answers."""
        argv = [*FEDNODE, "start", "--state-dir", str(self.state_dir), "--log-format", "json"]
        if port != DEFAULT_PORT:  # a port of its own, as an operator moving the daemon would set
            argv += ["--set", f'mesh.listen=["/ip4/0.0.0.0/tcp/{port}"]']
        self.proc = self.lab.spawn(self.host, argv, log_path=self.log_path, env=_env())
        if ready:
            self.peer_id = self.cli("status", "--wait", "--timeout", "300")["peer_id"]
        else:
            self.peer_id = wait_for(lambda: self.answers(), 120, f"{self.name}'s admin API", self.tail)["peer_id"]

    def answers(self) -> dict[str, Any] | None:
        done = subprocess.run([*FEDNODE, "status", "--state-dir", str(self.state_dir), "--format", "json"],
                              capture_output=True, text=True, env=_env(), timeout=60)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def stop(self, signum: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.process.send_signal(signum)
        code = self.proc.process.wait(timeout=90)
        self.proc = None
        return code

    # -------------------------------------------------------------------- observing it
    def cli(self, *args: str, timeout: float = 180) -> Any:
        done = subprocess.run([*FEDNODE, *args, "--state-dir", str(self.state_dir), "--format", "json"],
                              capture_output=True, text=True, env=_env(), timeout=timeout)
        assert done.returncode == 0, f"{self.name}: fednode {' '.join(args)}: {done.stderr}\n{self.tail()}"
        return json.loads(done.stdout)

    def records(self) -> list[dict[str, Any]]:
        return read_json_log(self.log_path.read_text(errors="replace")) if self.log_path.exists() else []

    def rounds(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == "round"]

    def last_round(self) -> int:
        return max([r["round"] for r in self.records() if r.get("event") in ("round", "synced_round")], default=0)

    def connected(self) -> set[str]:
        """Peers connected now, by the daemon's own `peer_connection` log records (the last one of
        each peer since the daemon last started)."""
        started = max((i for i, r in enumerate(self.records()) if str(r.get("msg", "")).startswith(("loaded identity",
                                                                                                     "created identity"))),
                      default=0)
        kinds: dict[str, str] = {}
        for record in self.records()[started:]:
            if record.get("event") == "peer_connection":
                kinds[record["peer"]] = record["connection"]
        return {peer for peer, kind in kinds.items() if kind != "none"}

    def refused(self, reason: str) -> int:
        path = self.state_dir / "audit.jsonl"
        return sum(1 for r in read_audit_log(path) if r.get("status") == "rejected"
                   and (r.get("reason") or (r.get("event") or {}).get("reason")) == reason) if path.exists() else 0

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.name}:\n" + (self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else "")


def everyone(sites: list[Site]) -> Callable[[], str]:
    return lambda: "\n".join(site.tail() for site in sites)


def invite_and_join(owner: Site, joiners: list[Site], federation: str) -> None:
    """One single-use invite per joiner; the joins run at the same time."""
    tokens = [owner.cli("federation", "invite", federation)["token"] for _ in joiners]
    joins = [subprocess.Popen([*FEDNODE, "federation", "join", token, "--name", joiner.name, "--state-dir",
                               str(joiner.state_dir), "--format", "json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env())
             for token, joiner in zip(tokens, joiners, strict=True)]
    for joiner, join in zip(joiners, joins, strict=True):
        out, err = join.communicate(timeout=300)
        assert join.returncode == 0, f"{joiner.name}: join: {err}\n{joiner.tail()}"
        assert json.loads(out)["descriptor"]["name"] == federation


def marks(sites: list[Site]) -> dict[str, int]:
    """How many round records each site has logged so far (later rounds are counted from here)."""
    return {site.name: len(site.rounds()) for site in sites}


def rounds_with(sites: list[Site], members: set[str], since: dict[str, int], count: int) -> bool:
    """Every site closed `count` rounds since `since` with as many participants as `members`."""
    return all(len([r for r in site.rounds()[since[site.name]:] if r["participants"] == len(members)]) >= count
               for site in sites)


def participants_are(sites: list[Site], members: set[str]) -> None:
    """Each site names exactly `members` as its rounds' participants (`federation show`)."""
    for site in sites:
        wait_for(lambda s=site: set(s.cli("federation", "show", "followup")["participants"]) == members, 60,
                 f"{site.name}'s participants", site.tail)


def test_start_join_finish_restart_in_any_order_leave_and_revoke(lab: NetLab, tmp_path: Path) -> None:
    a, b, c = (Site(lab, lab.public_host(name), tmp_path) for name in ("a", "b", "c"))
    sites = [a, b, c]
    for site in sites:
        site.start()
    ids = {site.name: site.peer_id for site in sites}
    assert all(site.cli("status")["state"] == "idle" for site in sites)

    # 1. A federation with a budget: all three finish at >= 0.90 on the default task.
    # Rounds need all three (the target is easy: 2 members alone reach it in 2 rounds).
    created = a.cli("federation", "create", "study", "--rounds", "40", "--target-accuracy", "0.90",
                    "--min-participants", "3")
    assert created["budget"] == {"max_rounds": 40, "target_accuracy": 0.9, "until_unix_ms": 0}
    invite_and_join(a, [b, c], "study")
    for site in sites:
        status = wait_for(lambda s=site: (st := s.cli("status"))["state"] == "finished" and st, 600,
                          f"{site.name} finished", everyone(sites))
        assert status["accuracy"] >= 0.90 and status["round"] <= 40, (site.name, status)
        shown = site.cli("federation", "show", "study")
        assert shown["finished"] and shown["finished_reason"] in ("target_accuracy", "rounds"), shown
    for site in sites:
        site.cli("federation", "leave", "study")

    # 2. A second federation; restart all three in reverse order, C and B on new ports.
    a.cli("federation", "create", "followup", "--min-participants", "2", "--rule", "mean")
    invite_and_join(a, [b, c], "followup")
    all_ids = set(ids.values())
    start = marks(sites)
    wait_for(lambda: rounds_with(sites, all_ids, start, 3), 300, "3 rounds with all three", everyone(sites))
    participants_are(sites, all_ids)
    for site in sites:
        assert site.stop() == 0, site.tail()
    before = {site.name: json.loads((site.state_dir / "summary.json").read_text())["rounds"] for site in sites}
    restarted = marks(sites)
    c.start(port=7470, ready=False)  # in reverse order; each is up before the next one starts
    b.start(port=7470, ready=False)
    a.start(ready=False)
    for site in sites:
        wait_for(lambda s=site: all_ids - {s.peer_id} <= s.connected(), 240, f"{site.name} reconnected",
                 everyone(sites))
    wait_for(lambda: rounds_with(sites, all_ids, restarted, 2), 300, "rounds after the restart", everyone(sites))
    participants_are(sites, all_ids)
    for site in sites:
        resumed = [r for r in site.records() if str(r.get("msg", "")).startswith("resumed from checkpoint")]
        assert resumed and f"round {before[site.name]}," in resumed[-1]["msg"], (site.name, resumed, before)
        assert not any("mesh.bootstrap" in arg for arg in site.proc.argv)

    # 3. kill -9 A (the issuer) mid-round: B and C go on; A comes back on a new port.
    wait_for(lambda: a.last_round() > before["a"] + 2, 120, "A training")
    round_seen = a.last_round()
    wait_for(lambda: a.last_round() > round_seen, 60, "A's next round")  # right after a round: mid-round
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    killed_at = marks(sites)
    wait_for(lambda: rounds_with([b, c], {ids["b"], ids["c"]}, killed_at, 3), 300, "B and C without A",
             everyone(sites))
    participants_are([b, c], {ids["b"], ids["c"]})
    a.start(port=7471)
    wait_for(lambda: {ids["b"], ids["c"]} <= a.connected(), 240, "A reconnected", everyone(sites))
    back = marks(sites)
    wait_for(lambda: rounds_with(sites, all_ids, back, 2), 300, "A training again", everyone(sites))
    # B remembers where A was and where it is now (peers.json keeps several addresses per member).
    fid = a.cli("federation", "show", "followup")["descriptor"]["federation_id"]
    remembered = json.loads((b.state_dir / "membership" / fid / "peers.json").read_text())["members"]
    a_addresses = next(m["addresses"] for m in remembered if m["peer_id"] == ids["a"])
    assert any("/tcp/7471/" in addr for addr in a_addresses) and any("/tcp/7461/" in addr for addr in a_addresses), \
        a_addresses

    # 4. B leaves: A and C go on. B comes back with a new invite.
    b.cli("federation", "leave", "followup")
    left = marks(sites)
    wait_for(lambda: rounds_with([a, c], {ids["a"], ids["c"]}, left, 3), 300, "A and C without B", everyone(sites))
    participants_are([a, c], {ids["a"], ids["c"]})
    invite_and_join(a, [b], "followup")
    rejoined = marks(sites)
    wait_for(lambda: rounds_with(sites, all_ids, rejoined, 2), 300, "B back in rounds", everyone(sites))

    # 5. A revokes C: A and B refuse C from then on.
    revoked = a.cli("federation", "revoke", "followup", ids["c"], "--reason", "acceptance test")
    assert revoked["revocation"]["reason"] == "acceptance test"
    for site in (a, b):
        wait_for(lambda s=site: s.refused("revoked") > 0, 120, f"{site.name} refusing the revoked member",
                 everyone(sites))
    after_revocation = marks(sites)
    wait_for(lambda: rounds_with([a, b], {ids["a"], ids["b"]}, after_revocation, 2), 300, "A and B without C",
             everyone(sites))
    participants_are([a, b], {ids["a"], ids["b"]})
    for site in sites:
        assert site.stop() == 0, site.tail()
