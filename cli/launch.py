"""`fednode launch`: a real local federation of N daemons on this machine.

Each node is a separate `fednode start` process on 127.0.0.1 with its own state dir and data
shard; node 0 starts first and serves as bootstrap and relay. Progress is read from the daemons'
JSON log lines. Ctrl-C (or SIGTERM) stops every daemon gracefully, then kills what is left; each
daemon also gets PR_SET_PDEATHSIG, so even a kill -9 of the launcher leaves no orphan.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from fednode.node.errors import ConfigError
from fednode.node.parent_death import die_with_parent

STALL_ROUNDS = 10
FILES_TASK = "fednode.node.tasks.files:build_task"


def node_files(spec: str, nodes: int, option: str, *, shared_allowed: bool) -> list[str]:
    """Each node's file from `--data`-style text: "node-0=a.csv,node-1=b.csv" (or "0=a.csv,..."),
    a pattern with {i} ("site-{i}/train.csv"), a glob matching one file per node ("sites/*.csv",
    in sorted order), or (when `shared_allowed`) one file for every node. Every file must exist."""
    from fednode.node.errors import ConfigError

    text = spec.strip()
    if "=" in text:
        chosen: dict[int, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, path = part.partition("=")
            index_text = name.strip().removeprefix("node-")
            if not sep or not index_text.isdigit() or not path.strip():
                raise ConfigError(f"{option}: {part!r} must look like node-0=path/to/file.csv")
            index = int(index_text)
            if not 0 <= index < nodes or index in chosen:
                raise ConfigError(f"{option}: node-{index} is {'given twice' if index in chosen else 'not one of the nodes'} "
                                  f"(nodes are node-0 to node-{nodes - 1})")
            chosen[index] = path.strip()
        missing = [f"node-{i}" for i in range(nodes) if i not in chosen]
        if missing:
            raise ConfigError(f"{option} gives no file for {', '.join(missing)}; give every node one")
        files = [chosen[i] for i in range(nodes)]
    elif "{i}" in text or "{node}" in text:
        files = [text.replace("{i}", str(i)).replace("{node}", f"node-{i}") for i in range(nodes)]
    elif any(c in text for c in "*?["):
        import glob

        files = sorted(glob.glob(text))
        if len(files) != nodes:
            raise ConfigError(f"{option} {text!r} matches {len(files)} file(s) but there are {nodes} nodes; "
                              f"one file per node, taken in sorted order")
    elif shared_allowed:
        files = [text] * nodes
    else:
        raise ConfigError(f"{option} needs one file per node: node-0=a.csv,node-1=b.csv,... or a pattern such as "
                          f"'site-{{i}}.csv' or 'sites/*.csv' (to split one file, use --set task.params with split)")
    absent = sorted({f for f in files if not Path(f).is_file()})
    if absent:
        raise ConfigError(f"{option}: no such file: {', '.join(absent)}")
    return files


def parse_devices(text: str | None) -> list[str]:
    """"cuda:0,cuda:1" -> ["cuda:0", "cuda:1"], each checked against this machine: a device that
    does not exist is a clear error before any node starts."""
    from fednode.node.config import NodeSection
    from fednode.node.errors import ConfigError

    if not text:
        return []
    devices = [part.strip() for part in text.split(",") if part.strip()]
    for device in devices:
        try:
            NodeSection(device=device)
        except ValueError:
            raise ConfigError(f'--devices entries must be "cpu", "cuda" or "cuda:N", got {device!r}') from None
    if any(d.startswith("cuda") for d in devices):
        import torch

        from fednode.node.trainer import device_problem

        count = torch.cuda.device_count() if torch.version.cuda is not None else 0
        for device in dict.fromkeys(devices):
            problem = device_problem(device, count, torch.version.cuda)
            if problem:
                raise ConfigError(f"--devices: {problem}")
    return devices


@dataclass
class LaunchPlan:
    nodes: int = 4
    rounds: int = 30
    byzantine: int = 0
    attack: str = ""
    attack_params: dict[str, Any] = field(default_factory=dict)
    attack_timing: str = "current"  # attack.timing: "current" or "previous" (node/federation/attacker.py)
    rule: str = "mean"
    f: int = 0
    rule_params: dict[str, Any] = field(default_factory=dict)
    codec: str = "int8"
    codec_params: dict[str, Any] = field(default_factory=dict)
    min_participants: int = 0  # 0 = derived: a majority, and at least what the rule needs
    target_accuracy: float = 0.0
    schedule: str = "sync"  # federation.schedule: "sync" or "fedcompass"
    slowdowns: list[float] = field(default_factory=list)  # per-node training.slowdown, cycled; empty = all 1
    out_dir: Path = Path("runs")
    settings: list[str] = field(default_factory=list)  # extra --set for every node
    config_file: Path | None = None  # --config for every node (else $FEDNODE_CONFIG, inherited)
    node_settings: dict[int, list[str]] = field(default_factory=dict)  # extra --set per node
    devices: list[str] = field(default_factory=list)  # node i trains on devices[i % len]; empty = node.device
    data: list[str] = field(default_factory=list)  # node i's training file (files task); empty = the task's own
    test_data: list[str] = field(default_factory=list)  # node i's test file
    start_timeout: float = 120.0
    stop_timeout: float = 30.0
    # A node still running after others have exited, without a new round for max(stall_floor,
    # STALL_ROUNDS x the slowest node's mean time per round) since, is stopped as stalled: with
    # the members it trained with gone it would wait for new ones forever.
    stall_floor: float = 30.0
    # No node made a round for max(progress_floor, STALL_ROUNDS x the slowest mean time per
    # round) (before the first round: since every node listens, or start_timeout after they were
    # started): the federation is stuck (e.g. too few usable members for its rule); the launch
    # stops every node and fails.
    progress_floor: float = 120.0

    def attack_settings(self) -> dict[str, Any]:
        """The attack parameters the Byzantine nodes get: ALIE without z uses z_max for this
        launch's n and number of attackers."""
        params = dict(self.attack_params)
        if self.attack == "alie" and "z" not in params:
            params.setdefault("n", self.nodes)
            params.setdefault("f", self.byzantine)
        return params

    def task_params(self) -> dict[str, Any]:
        """The task.params table given with --set (the last one wins, as for the daemon)."""
        from fednode.node.config import parse_value

        params: dict[str, Any] = {}
        for item in self.settings:
            key, _, raw = item.partition("=")
            if key.strip() == "task.params":
                value = parse_value(raw.strip())
                params = dict(value) if isinstance(value, dict) else params
        return params

    def exchange(self) -> str:
        """federation.exchange as given with --set (the last one wins), else the default."""
        from fednode.node.config import parse_value

        exchange = "all_to_all"
        for item in self.settings:
            key, _, raw = item.partition("=")
            if key.strip() == "federation.exchange":
                value = parse_value(raw.strip())
                exchange = value if isinstance(value, str) else exchange
        return exchange

    def task_name_set(self) -> bool:
        return any(item.partition("=")[0].strip() == "task.name" for item in self.settings)

    def derived_min_participants(self) -> int:
        if self.min_participants:
            return self.min_participants
        majority = self.nodes // 2 + 1 if self.nodes > 2 else self.nodes
        if self.schedule == "sync":
            # A majority, but never more than the n - f members left when f are faulty: rounds
            # work out what the rule needs themselves (SyncRound.needed), and a higher floor
            # would let f members stall every round.
            return max(1, min(majority, self.nodes - self.f))
        return max(self._rule_minimum(), majority)

    def _rule_minimum(self) -> int:
        from fednode.aggregators import AggregationError, build

        try:
            return build(self.rule, f=self.f, **self.rule_params).minimum_rows()
        except (AggregationError, TypeError, ValueError) as exc:
            raise ConfigError(f"--rule {self.rule} with --f {self.f} and --rule-params {self.rule_params}: {exc}") from None

    def validate(self) -> None:
        """Refuse, before any node starts, a federation that could not train: every problem is a
        ConfigError (exit code 3) that says what to change."""
        if self.byzantine >= self.nodes:
            raise ConfigError(f"--byzantine {self.byzantine} leaves no honest node among --nodes {self.nodes}; "
                              f"use at most {self.nodes - 1}")
        needed = self._rule_minimum()
        if needed > self.nodes:
            raise ConfigError(f"rule {self.rule} with f = {self.f} needs at least {needed} updates per round, but "
                              f"--nodes {self.nodes} gives at most {self.nodes}; start {needed} nodes or lower --f")
        wanted = self.derived_min_participants()
        if wanted > self.nodes:
            raise ConfigError(f"--min-participants {wanted} is more than --nodes {self.nodes}: no round could close")
        if wanted < needed and self.schedule != "sync":  # sync rounds count the silent among the f
            raise ConfigError(f"--min-participants {wanted} is below the {needed} updates rule {self.rule} with "
                              f"f = {self.f} needs; raise it or lower --f")
        if self.attack:
            from fednode.node.federation.attacker import build_attacker

            try:
                build_attacker(self.attack, self.attack_settings(), self.attack_timing)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"--attack {self.attack} --attack-params {self.attack_params}: {exc}") from None
        from fednode.node.compression import build_codec

        try:
            build_codec(self.codec, **self.codec_params)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"--codec {self.codec} --codec-params {self.codec_params}: {exc}") from None


@dataclass
class NodeProcess:
    index: int
    byzantine: bool
    state_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    round: int = 0
    accuracy: float = float("nan")
    participants: int = 0
    multiaddrs: list[str] = field(default_factory=list)
    last_lines: list[str] = field(default_factory=list)
    peer_id: str = ""
    first_round_at: float = 0.0  # monotonic times of its first and latest round records
    last_round_at: float = 0.0
    stalled_at: float = 0.0  # monotonic time it was stopped as stalled; 0 = not stalled
    waiting: str = ""  # the node's last "round cannot close" reason, while it has made no round since
    listening_at: float = 0.0  # monotonic time it started listening (its mesh is up)

    @property
    def stalled(self) -> bool:
        return self.stalled_at > 0.0

    def seconds_per_round(self) -> float:
        """Mean time per round so far (0 before two rounds)."""
        return (self.last_round_at - self.first_round_at) / (self.round - 1) if self.round > 1 else 0.0

    @property
    def name(self) -> str:
        return f"node-{self.index}" + (" (byzantine)" if self.byzantine else "")


class LocalFederation:
    def __init__(self, plan: LaunchPlan, console: Console) -> None:
        self.plan = plan
        self.console = console
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = plan.out_dir
        self.federation_id = f"local-{self.stamp}-{os.getpid()}"
        self.nodes: list[NodeProcess] = []
        self._stopping = False
        self._lock = threading.Lock()
        self.stuck = ""  # why the launch stopped a federation that made no progress

    # ------------------------------------------------------------------------ processes
    def _common_settings(self) -> list[str]:
        plan = self.plan
        settings = {
            "federation.id": json.dumps(self.federation_id),
            "federation.min_participants": str(plan.derived_min_participants()),
            "federation.schedule": json.dumps(plan.schedule),
            "aggregation.rule": json.dumps(plan.rule),
            "aggregation.f": str(plan.f),
            "aggregation.params": _toml_inline(plan.rule_params),
            "compression.codec": json.dumps(plan.codec),
            "compression.params": _toml_inline(plan.codec_params),
            "mesh.listen": '["/ip4/127.0.0.1/tcp/0"]',
        }
        args: list[str] = []
        for key, value in settings.items():
            args += ["--set", f"{key}={value}"]
        for item in plan.settings:
            args += ["--set", item]
        return args

    def _start_node(self, index: int, bootstrap: str | None) -> NodeProcess:
        plan = self.plan
        byzantine = index >= plan.nodes - plan.byzantine
        state_dir = self.run_dir / f"node-{index}"
        log_path = self.run_dir / f"node-{index}.log"
        argv = [
            sys.executable, "-m", "fednode.cli.app", "start",
            "--state-dir", str(state_dir),
            "--shard", f"{index}/{plan.nodes}",
            "--rounds", str(plan.rounds),
            "--log-format", "json",
            *self._common_settings(),
        ]
        if plan.target_accuracy:
            argv += ["--target-accuracy", str(plan.target_accuracy)]
        if bootstrap:
            argv += ["--set", f"mesh.bootstrap=[{json.dumps(bootstrap)}]"]
        else:
            argv += ["--set", "mesh.relay_hop=true"]
        argv += ["--set", f"node.display_name={json.dumps(f'node-{index}')}"]
        if byzantine:
            colluders = [f"node-{other}" for other in range(plan.nodes - plan.byzantine, plan.nodes) if other != index]
            argv += ["--set", f"attack.name={json.dumps(plan.attack)}",
                     "--set", f"attack.params={_toml_inline(plan.attack_settings())}",
                     "--set", f"attack.timing={json.dumps(plan.attack_timing)}",
                     "--set", f"attack.colluders={_toml_inline(colluders)}"]
        if plan.slowdowns:
            argv += ["--set", f"training.slowdown={plan.slowdowns[index % len(plan.slowdowns)]}"]
        if plan.devices:
            argv += ["--device", plan.devices[index % len(plan.devices)]]
        argv += self._data_settings(index)
        for item in plan.node_settings.get(index, []):
            argv += ["--set", item]
        if plan.config_file is not None:
            argv += ["--config", str(plan.config_file)]
        # FEDNODE_CONFIG and FEDNODE_* settings reach every node; what the launch sets per node
        # (state dir, addresses, federation) is on the command line, which overrides them.
        env = dict(os.environ)
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the nodes in order
            preexec_fn=functools.partial(die_with_parent, signal.SIGTERM),  # set in the child, before exec
        )
        node = NodeProcess(index, byzantine, state_dir, log_path, process)
        threading.Thread(target=self._follow, args=(node,), name=f"log-node-{index}", daemon=True).start()
        return node

    def _data_settings(self, index: int) -> list[str]:
        """Node `index`'s own files for the CSV/NPZ task (--data / --test-data), merged into the
        task.params given with --set; with normalization = "federation" and no stats file, the
        statistics of every node's training file, merged exactly (fednode task stats)."""
        plan = self.plan
        if not plan.data:
            return []
        params = dict(plan.task_params())
        params.update(train=str(Path(plan.data[index]).resolve()), test=str(Path(plan.test_data[index]).resolve()),
                      split="none")
        if params.get("normalization") == "federation" and not params.get("stats"):
            params["stats"] = str(self._federation_statistics(params.get("label_column", "label")))
        args = ["--set", f"task.params={_toml_inline(params)}"]
        if not plan.task_name_set():
            args += ["--set", f"task.name={json.dumps(FILES_TASK)}"]
        return args

    def _federation_statistics(self, label_column: str) -> Path:
        path = self.run_dir / "normalization.json"
        if not path.exists():
            from fednode.node.durable import atomic_write_bytes
            from fednode.node.tasks.tabular import feature_moments, merge_moments, read_tabular

            parts = [feature_moments(read_tabular(Path(f), label_column)[0], source=Path(f).name)
                     for f in dict.fromkeys(self.plan.data)]
            atomic_write_bytes(path, json.dumps(merge_moments(parts), indent=2).encode(), mode=0o644)
        return path.resolve()

    def _follow(self, node: NodeProcess) -> None:
        """Copy a node's output to its log file and pick progress out of the JSON records."""
        assert node.process.stdout is not None
        with open(node.log_path, "ab") as sink:
            for raw in node.process.stdout:
                sink.write(raw)
                sink.flush()
                line = raw.decode(errors="replace").rstrip()
                with self._lock:
                    node.last_lines = [*node.last_lines[-14:], line]
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                event = record.get("event")
                if event == "listening":
                    node.multiaddrs = list(record.get("multiaddrs", []))
                    node.listening_at = time.monotonic()
                elif event == "round_waiting":
                    node.waiting = f"round {record.get('round', '?')}: {record.get('reason', '')}"
                elif event in ("round", "synced_round"):  # a state sync can bring the last round
                    node.waiting = ""
                    node.last_round_at = time.monotonic()
                    node.first_round_at = node.first_round_at or node.last_round_at
                    node.round = int(record.get("round", node.round))
                    node.accuracy = float(record.get("accuracy", node.accuracy))
                    node.participants = int(record.get("participants", node.participants))

    def stop_all(self) -> None:
        """Graceful stop for everyone, bounded; then kill what is left."""
        if self._stopping:
            return
        self._stopping = True
        for node in self.nodes:
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.plan.stop_timeout
        for node in self.nodes:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                node.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
        for node in self.nodes:  # anything a node left in its session goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.process.pid, signal.SIGKILL)

    # ------------------------------------------------------------------------ run
    def run(self) -> int:
        plan = self.plan
        self.run_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum: int, _frame: object) -> None:
            self.console.print(f"[yellow]{signal.Signals(signum).name}: stopping every node...[/]")
            raise KeyboardInterrupt

        for signum in previous:
            signal.signal(signum, on_signal)
        interrupted = False
        try:
            bootstrap = self._start_node(0, None)
            self.nodes.append(bootstrap)
            address = self._wait_for_address(bootstrap)
            for index in range(1, plan.nodes):
                self.nodes.append(self._start_node(index, address))
            self._show_progress()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self.stop_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        wall = time.perf_counter() - started
        summary = self._summarize(wall, interrupted)
        self._write_report()
        failed = [n for n in self.nodes if n.process.returncode not in (0, None) or n.stalled]
        if self.stuck:
            self.console.print(f"[red]the federation made no progress: {self.stuck}[/]", highlight=False)
            return 1
        for node in failed:
            what = "was stopped as stalled" if node.stalled else f"exited with code {node.process.returncode}"
            self.console.print(f"[red]{node.name} {what}; last lines of {node.log_path}:[/]")
            for line in node.last_lines[-8:]:
                self.console.print(f"  {line[:300]}", highlight=False, markup=False)
        if interrupted:
            return 130
        return 1 if failed or not summary["nodes"] else 0

    def _write_report(self) -> None:
        """Plots and report/index.html of the run (fednode report); a run without matplotlib
        still ends with its summary, and says how to get the plots."""
        from fednode.node.errors import FednodeError
        from fednode.node.report import load_run, write_report

        try:
            written = write_report(load_run(self.run_dir), self.run_dir / "report")
        except FednodeError as error:
            self.console.print(f"[yellow]no report: {error.message}[/]", highlight=False)
            return
        except Exception as error:  # a plot that fails must not hide the run's own results
            self.console.print(f"[yellow]no report: {type(error).__name__}: {error}[/]", highlight=False)
            return
        self.console.print(f"report: {written.html} ({len(written.plots)} plots)", highlight=False)

    def _wait_for_address(self, node: NodeProcess) -> str:
        deadline = time.monotonic() + self.plan.start_timeout
        with self.console.status("starting the bootstrap node..."):
            while time.monotonic() < deadline:
                if node.multiaddrs:
                    return node.multiaddrs[0]
                if node.process.poll() is not None:
                    raise RuntimeError(f"the bootstrap node exited with code {node.process.returncode}; see {node.log_path}")
                time.sleep(0.1)
        raise RuntimeError(f"the bootstrap node did not start listening within {self.plan.start_timeout:.0f} s")

    def _show_progress(self) -> None:
        plan = self.plan
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rounds  acc {task.fields[accuracy]}  peers {task.fields[peers]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            tasks: dict[int, TaskID] = {
                node.index: progress.add_task(node.name, total=plan.rounds, accuracy="  -  ", peers="-")
                for node in self.nodes
            }
            exited_at: dict[int, float] = {}
            started_at = time.monotonic()
            while any(node.process.poll() is None for node in self.nodes):
                self._refresh(progress, tasks)
                now = time.monotonic()
                for node in self.nodes:
                    if node.process.poll() is not None:
                        exited_at.setdefault(node.index, now)
                self._stop_stalled(exited_at, now)
                if self._no_progress(started_at, now):
                    return
                time.sleep(0.2)
            self._refresh(progress, tasks)

    def _no_progress(self, started_at: float, now: float) -> bool:
        """True (after saying why) when no node has made a round for the progress bound: rounds
        that cannot close (too few usable members for the rule, members that never met) would
        otherwise keep the launch running forever. The caller then stops every node. Progress
        means honest nodes' rounds: an attacker may close rounds of its own."""
        watched = [n for n in self.nodes if not n.byzantine] or self.nodes
        last_round = max((n.last_round_at for n in watched), default=0.0)
        slowest = max((n.seconds_per_round() for n in self.nodes), default=0.0)
        limit = max(self.plan.progress_floor, STALL_ROUNDS * slowest)
        if last_round:
            since = last_round
        elif all(n.listening_at for n in self.nodes):
            since = max(n.listening_at for n in self.nodes)
        else:
            since = started_at + self.plan.start_timeout
        if now - since < limit:
            return False
        waiting = [f"{n.name}: {n.waiting}" for n in watched if n.waiting and n.process.poll() is None]
        self.stuck = (f"no node made a round for {limit:.0f} s" + (" since the last one" if last_round else "")
                      + "; stopping every node")
        self.console.print(f"[red]{self.stuck}[/]")
        for line in waiting[:4]:
            self.console.print(f"  {line}", highlight=False, markup=False)
        if waiting:
            self.stuck += "; " + waiting[0]
        return True

    def _stop_stalled(self, exited_at: dict[int, float], now: float) -> None:
        """Stop (gracefully) the nodes still running after others have exited that made no round
        for the stall limit since. A launch must end: with the members it trained with gone, such
        a node would wait for new ones forever."""
        if not exited_at:
            return
        limit = max(self.plan.stall_floor, STALL_ROUNDS * max(n.seconds_per_round() for n in self.nodes))
        last_exit = max(exited_at.values())
        for node in self.nodes:
            if node.index in exited_at:
                continue
            if node.stalled:
                if now - node.stalled_at > self.plan.stop_timeout:  # the graceful stop is bounded too
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(node.process.pid, signal.SIGKILL)
                continue
            if now - max(node.last_round_at, last_exit) < limit:
                continue
            node.stalled_at = now
            self.console.print(f"[yellow]{node.name} made no round for {limit:.0f} s after other nodes had exited "
                               f"(it is at round {node.round} of {self.plan.rounds}); stopping it[/]")
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signal.SIGTERM)

    def _refresh(self, progress: Progress, tasks: dict[int, TaskID]) -> None:
        for node in self.nodes:
            accuracy = "  -  " if math.isnan(node.accuracy) else f"{node.accuracy:.3f}"
            progress.update(tasks[node.index], completed=node.round, accuracy=accuracy, peers=node.participants or "-")

    # ------------------------------------------------------------------------ results
    def _summarize(self, wall_seconds: float, interrupted: bool) -> dict[str, Any]:
        rows = []
        for node in self.nodes:
            path = node.state_dir / "summary.json"
            data: dict[str, Any] = {}
            if path.exists():
                with contextlib.suppress(ValueError):
                    data = json.loads(path.read_text())
            rows.append({
                "node": node.index,
                "peer_id": data.get("peer_id", ""),
                "byzantine": node.byzantine,
                "exit_code": node.process.returncode,
                "stalled": node.stalled,
                "rounds": data.get("rounds", node.round),
                "accuracy": data.get("accuracy", node.accuracy),
                "bytes_sent": data.get("bytes_sent", 0),
                "bytes_received": data.get("bytes_received", 0),
                "wall_seconds": data.get("wall_seconds", 0.0),
                "syncs": data.get("syncs", 0),
                "direct_deliveries": data.get("direct_deliveries", 0),
                "push_only_messages": data.get("push_only_messages", 0),
                "rejected": data.get("rejected", {}),
                "state_dir": str(node.state_dir),
            })
        honest = [r["accuracy"] for r in rows if not r["byzantine"] and isinstance(r["accuracy"], float)]
        summary = {
            "federation_id": self.federation_id,
            "nodes": rows,
            "plan": {
                "nodes": self.plan.nodes, "rounds": self.plan.rounds, "byzantine": self.plan.byzantine,
                "schedule": self.plan.schedule, "exchange": self.plan.exchange(), "slowdowns": self.plan.slowdowns,
                "attack": self.plan.attack, "rule": self.plan.rule, "f": self.plan.f, "codec": self.plan.codec,
                "min_participants": self.plan.derived_min_participants(),
                "devices": self.plan.devices, "data": self.plan.data, "test_data": self.plan.test_data,
            },
            "honest_mean_accuracy": sum(honest) / len(honest) if honest else float("nan"),
            "honest_min_accuracy": min(honest) if honest else float("nan"),
            "wall_seconds": wall_seconds,
            "interrupted": interrupted,
            "stuck": self.stuck,
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        table = Table(title=f"federation {self.federation_id}: {self.plan.nodes} nodes, rule {self.plan.rule}, "
                            f"schedule {self.plan.schedule}, exchange {self.plan.exchange()}")
        for column in ("node", "role", "rounds", "accuracy", "sent", "received", "wall", "exit"):
            table.add_column(column, justify="right" if column not in ("node", "role") else "left")
        for row in rows:
            accuracy = row["accuracy"]
            table.add_row(
                f"node-{row['node']}",
                f"byzantine ({self.plan.attack})" if row["byzantine"] else "honest",
                str(row["rounds"]),
                "-" if not isinstance(accuracy, float) or math.isnan(accuracy) else f"{accuracy:.4f}",
                _human_bytes(row["bytes_sent"]),
                _human_bytes(row["bytes_received"]),
                f"{row['wall_seconds']:.1f} s",
                str(row["exit_code"]),
            )
        self.console.print(table)
        self.console.print(
            f"honest nodes: mean accuracy {summary['honest_mean_accuracy']:.4f}, "
            f"min {summary['honest_min_accuracy']:.4f}; wall time {wall_seconds:.1f} s; "
            f"summary: {self.run_dir / 'summary.json'}",
            highlight=False,
        )
        return summary


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _toml_inline(value: Any) -> str:
    """A value in TOML inline syntax (the daemon's --set value syntax): JSON scalars and arrays
    are valid TOML, tables become {key = value, ...}."""
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(str(k))} = {_toml_inline(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    return json.dumps(value)
