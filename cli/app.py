"""The `fednode` command line.

Every command accepts `--format json` where it prints data; errors are one line on stderr with
what to do next, and the exit codes are those of `fednode.node.errors.ExitCode`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fednode.cli.output import OutputFormat, fail, hint, out, print_error, print_json
from fednode.cli.output import table as output_table
from fednode.node import __version__
from fednode.node.errors import ExitCode, FednodeError

app = typer.Typer(
    name="fednode",
    help="Decentralized federated-learning node: train together without a server.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
identity_app = typer.Typer(help="Show or create this node's Ed25519 identity.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the effective configuration.", no_args_is_help=True)
app.add_typer(identity_app, name="identity")
app.add_typer(config_app, name="config")


def _print_version(value: bool) -> None:
    if value:
        out.print(f"fednode {__version__} (wire protocol fednode.v1)", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit (details: fednode version)")] = False,
) -> None:
    """Decentralized federated-learning node: train together without a server."""

class LogFormat(str, Enum):
    human = "human"
    json = "json"


class ConfigFormat(str, Enum):
    toml = "toml"
    json = "json"
    keys = "keys"


class NodeRole(str, Enum):
    member = "member"
    bootstrap = "bootstrap"


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="TOML config file (default: $FEDNODE_CONFIG or ~/.config/fednode/config.toml)")
]
StateDirOption = Annotated[Path | None, typer.Option("--state-dir", help="state directory (identity, checkpoints)")]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="override any config key: section.key=value (repeatable)")
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="output format")]


def out_console_for_launch() -> Console:
    return out


def collect_overrides(state_dir: Path | None, settings: list[str] | None, **flags: Any) -> dict[str, Any]:
    """CLI flags -> {dotted config key: value}; flags left at None are not overrides."""
    from fednode.node.config import parse_value
    from fednode.node.errors import ConfigError

    overrides: dict[str, Any] = {}
    for item in settings or []:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r} must look like section.key=value (e.g. training.lr=0.1)")
        overrides[key.strip()] = parse_value(raw.strip())
    if state_dir is not None:
        overrides["node.state_dir"] = str(state_dir)
    for dotted, value in flags.items():
        if value is not None:
            overrides[dotted.replace("__", ".")] = value.value if isinstance(value, Enum) else value
    return overrides


@app.command()
def version(output: FormatOption = OutputFormat.human) -> None:
    """Print the fednode version and its key dependencies."""
    import google.protobuf
    import grpc
    import torch

    info = {
        "fednode": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "wire_protocol": "fednode.v1",
    }
    if output is OutputFormat.json:
        print_json(info)
    else:
        out.print(f"fednode {__version__} (wire protocol fednode.v1, torch {torch.__version__}, "
                  f"{'CUDA available' if info['cuda_available'] else 'CPU only'})", highlight=False)


@app.command()
def start(
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
    log_format: Annotated[LogFormat | None, typer.Option("--log-format", help="human or json log lines")] = None,
    log_level: Annotated[str | None, typer.Option("--log-level", help="debug, info, warning, error")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="this node's data shard, i/N")] = None,
    solo: Annotated[bool | None, typer.Option(
        "--solo", help="train alone while in no federation (by default such a node idles until it creates or joins one)",
        show_default=False)] = None,
    role: Annotated[NodeRole | None, typer.Option(
        "--role", help="member (default) or bootstrap: the mesh only (DHT, relay) on the fixed port, for others to dial")] = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", help="with --solo (and in fednode launch): stop after N rounds. A federation's budget is set by "
                         "`federation create --rounds`")] = None,
    target_accuracy: Annotated[float | None, typer.Option(
        "--target-accuracy", help="with --solo (and in fednode launch): stop at this test accuracy")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = None,
    settings: SetOption = None,
) -> None:
    """Run the node daemon in the foreground until stopped (Ctrl-C / SIGTERM).

    Without a federation the node idles (mesh up, no training) until `fednode federation create`
    or `join`; a member restarted later rejoins its federation by itself."""
    from fednode.node.config import load_config
    from fednode.node.daemon import Daemon
    from fednode.node.logs import configure_logging

    try:
        overrides = collect_overrides(
            state_dir,
            settings,
            node__log_format=log_format,
            node__log_level=log_level,
            task__shard=shard,
            training__rounds=rounds,
            training__target_accuracy=target_accuracy,
            training__solo=solo,
            node__role=role,
            node__device=device,
        )
        effective, _sources = load_config(config, overrides)
        configure_logging(effective.node.log_format, effective.node.log_level)
        code = asyncio.run(Daemon(effective).run())
    except FednodeError as error:
        raise fail(error) from None
    raise typer.Exit(int(code))


def _node_settings(items: list[str], nodes: int, config: Path | None, settings: list[str]) -> dict[int, list[str]]:
    """--node-set I:section.key=value -> {I: ["section.key=value", ...]}, each checked as that
    node's config would be (ConfigError naming the bad one)."""
    from fednode.node.config import load_config
    from fednode.node.errors import ConfigError

    chosen: dict[int, list[str]] = {}
    for item in items:
        index_text, sep, setting = item.partition(":")
        if not sep or not index_text.isdigit() or "=" not in setting:
            raise ConfigError(f"--node-set must look like I:section.key=value (e.g. 0:training.world_size=2), "
                              f"got {item!r}")
        if int(index_text) >= nodes:
            raise ConfigError(f"--node-set {item!r}: there is no node {index_text} among --nodes {nodes} (0..{nodes - 1})")
        chosen.setdefault(int(index_text), []).append(setting)
    for index, extra in chosen.items():
        try:
            load_config(config, collect_overrides(None, [*settings, *extra]))
        except ConfigError as error:
            raise ConfigError(f"--node-set for node {index}: {error.message}") from None
    return chosen


def _outer_settings(outer: str, outer_lr: float, preset: str) -> list[str]:
    """--outer/--outer-lr/--preset as --set items (checked here: a typo fails before any daemon starts)."""
    from fednode.node.config import PRESETS
    from fednode.node.errors import ConfigError
    from fednode.node.federation.outer_config import OuterConfig

    items: list[str] = []
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        items.append(f"training.preset={json.dumps(preset)}")
    if outer or outer_lr:
        try:
            OuterConfig.build(outer or ("nesterov" if preset == "diloco" else "sgd"), lr=outer_lr)
        except ValueError as exc:
            raise ConfigError(f"--outer/--outer-lr: {exc}") from None
        if outer:
            items.append(f"aggregation.outer={json.dumps(outer)}")
        if outer_lr:
            items.append(f"aggregation.outer_lr={outer_lr!r}")
    return items


@app.command()
def launch(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=1, max=64, help="daemons to start")] = 4,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", min=1, help="rounds every node trains (default: training.rounds of the config, else 30)")] = None,
    byzantine: Annotated[int, typer.Option("--byzantine", min=0, help="how many nodes attack (the last K)")] = 0,
    attack: Annotated[str, typer.Option("--attack", help="attack the Byzantine nodes run, e.g. ipm, alie, label_flip")] = "",
    attack_params: Annotated[str | None, typer.Option("--attack-params", help="TOML table, e.g. 'eps = 10'")] = None,
    attack_timing: Annotated[str | None, typer.Option(
        "--attack-timing", help="current: attackers forge from the round's honest updates, on time; previous: from the last round's (default: the config's, else current)")] = None,
    rule: Annotated[str | None, typer.Option(
        "--rule", help="aggregation rule, e.g. mean, multi_krum, gas (default: the config's, else mean)")] = None,
    f: Annotated[int | None, typer.Option("--f", min=0, help="Byzantine nodes the rule tolerates (default: the config's, else 0)")] = None,
    rule_params: Annotated[str | None, typer.Option("--rule-params", help="TOML table, e.g. 'base = \"krum\", p = 10'")] = None,
    codec: Annotated[str | None, typer.Option("--codec", help="update codec (default: the config's, else int8)")] = None,
    codec_params: Annotated[str | None, typer.Option("--codec-params", help="TOML table, e.g. 'fraction = 0.01'")] = None,
    min_participants: Annotated[int, typer.Option("--min-participants", min=0, help="0 = a majority, at most nodes - f (sync)")] = 0,
    target_accuracy: Annotated[float | None, typer.Option("--target-accuracy", min=0, max=1, help="nodes stop once they reach it")] = None,
    schedule: Annotated[str | None, typer.Option(
        "--schedule", help="sync (k-of-n rounds) or fedcompass (semi-asynchronous); default: the config's, else sync")] = None,
    slowdowns: Annotated[str | None, typer.Option(
        "--slowdowns", help="per-node slowness factors, cycled over the nodes, e.g. 1,2,4,8 (heterogeneity emulation)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="run directory (default runs/<timestamp>)")] = None,
    devices: Annotated[str | None, typer.Option(
        "--devices", help="devices given to the nodes round-robin, e.g. cuda:0,cuda:1 (checked against this machine)")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="each node's training file (CSV/NPZ task): node-0=a.csv,node-1=b.csv or 'site-{i}.csv' or 'sites/*.csv'")] = None,
    test_data: Annotated[str | None, typer.Option(
        "--test-data", help="with --data: the test file of every node, or one per node (same forms as --data)")] = None,
    outer: Annotated[str, typer.Option(
        "--outer", help="outer optimizer: sgd (FedAvg), momentum, nesterov, adam, yogi, adagrad")] = "",
    outer_lr: Annotated[float, typer.Option("--outer-lr", min=0, help="outer learning rate; 0 = the optimizer's default")] = 0.0,
    preset: Annotated[str, typer.Option("--preset", help="diloco: 500 local steps, outer nesterov 0.7 (docs/federation.md)")] = "",
    config: ConfigOption = None,
    settings: SetOption = None,
    node_set: Annotated[list[str] | None, typer.Option(
        "--node-set", help="a setting for one node: I:section.key=value, e.g. 0:training.world_size=2 (repeatable)")] = None,
) -> None:
    """Launch a local federation: N daemons on 127.0.0.1, progress, then a summary table and report.

    The config file (--config, or $FEDNODE_CONFIG) and FEDNODE_* variables apply to every node;
    the options above override them."""
    import time as _time

    from fednode.cli.launch import LaunchPlan, LocalFederation
    from fednode.cli.values import parse_factors, parse_table
    from fednode.node.config import load_config
    from fednode.node.errors import ConfigError

    out_console = out_console_for_launch()

    try:
        base, sources = load_config(config, collect_overrides(None, settings))
        if byzantine and not attack:
            raise ConfigError("--byzantine needs --attack NAME (e.g. --attack ipm --attack-params 'eps = 10')")
        schedule = schedule or base.federation.schedule
        attack_timing = attack_timing or base.attack.timing
        if attack_timing not in ("current", "previous"):
            raise ConfigError(f"--attack-timing must be current or previous, got {attack_timing!r}")
        if schedule not in ("sync", "fedcompass"):
            raise ConfigError(f"--schedule must be sync or fedcompass, got {schedule!r}")
        from fednode.cli.launch import node_files, parse_devices

        if test_data and not data:
            from fednode.node.errors import ConfigError

            raise ConfigError("--test-data goes with --data (each node's training file)")
        if data and not test_data:
            from fednode.node.errors import ConfigError

            raise ConfigError("--data needs --test-data: a test file every node evaluates on, or one per node")
        plan = LaunchPlan(
            nodes=nodes,
            rounds=rounds or base.training.rounds or 30,
            byzantine=byzantine,
            attack=attack or base.attack.name,
            attack_params=parse_table("--attack-params", attack_params) if attack_params else dict(base.attack.params),
            attack_timing=attack_timing,
            rule=rule or base.aggregation.rule,
            f=base.aggregation.f if f is None else f,
            rule_params=parse_table("--rule-params", rule_params) if rule_params else dict(base.aggregation.params),
            codec=codec or base.compression.codec,
            codec_params=parse_table("--codec-params", codec_params) if codec_params else dict(base.compression.params),
            min_participants=min_participants or (base.federation.min_participants
                                                  if "federation.min_participants" in sources else 0),
            target_accuracy=base.training.target_accuracy if target_accuracy is None else target_accuracy,
            schedule=schedule,
            slowdowns=parse_factors("--slowdowns", slowdowns),
            out_dir=out or Path("runs") / _time.strftime("%Y%m%d-%H%M%S"),
            settings=_outer_settings(outer, outer_lr, preset) + list(settings or []),
            devices=parse_devices(devices),
            data=node_files(data, nodes, "--data", shared_allowed=False) if data else [],
            test_data=node_files(test_data, nodes, "--test-data", shared_allowed=True) if test_data else [],
            config_file=config,
            node_settings=_node_settings(node_set or [], nodes, config, list(settings or [])),
        )
        plan.validate()
    except FednodeError as error:
        raise fail(error) from None
    except (ValueError, TypeError) as error:
        print_error(str(error))
        raise typer.Exit(int(ExitCode.CONFIG)) from None
    try:
        code = LocalFederation(plan, out_console).run()
    except RuntimeError as error:
        print_error(str(error))
        raise typer.Exit(int(ExitCode.NETWORK)) from None
    raise typer.Exit(code)


@identity_app.command("show")
def identity_show(
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
    output: FormatOption = OutputFormat.human,
) -> None:
    """Print this node's peer id and public key."""
    from fednode.node.config import load_config
    from fednode.node.errors import IdentityError
    from fednode.node.identity import identity_path, load_identity

    try:
        effective, _ = load_config(config, collect_overrides(state_dir, None))
        path = identity_path(effective.resolved_state_dir())
        if not path.exists():
            raise IdentityError(f"no identity in {path.parent}; run `{hint('identity create', state_dir=state_dir, config=config)}` "
                                f"or `{hint('start', state_dir=state_dir, config=config)}`")
        ident = load_identity(path)
    except FednodeError as error:
        raise fail(error) from None
    info = {"peer_id": ident.peer_id, "public_key": ident.public_key.hex(), "key_file": str(path)}
    if output is OutputFormat.json:
        print_json(info)
    else:
        out.print(f"peer id     {info['peer_id']}\npublic key  {info['public_key']}\nkey file    {path}", highlight=False)


@identity_app.command("create")
def identity_create(
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing key (changes the peer id)")] = False,
    output: FormatOption = OutputFormat.human,
) -> None:
    """Create a new Ed25519 identity in the state dir (mode 0600)."""
    from fednode.node.config import load_config
    from fednode.node.daemon import prepare_state_dir
    from fednode.node.identity import create_identity, identity_path

    try:
        effective, _ = load_config(config, collect_overrides(state_dir, None))
        directory = effective.resolved_state_dir()
        prepare_state_dir(directory)
        ident = create_identity(identity_path(directory), overwrite=force)
    except FednodeError as error:
        raise fail(error) from None
    info = {"peer_id": ident.peer_id, "public_key": ident.public_key.hex(), "key_file": str(identity_path(directory))}
    if output is OutputFormat.json:
        print_json(info)
    else:
        out.print(f"created identity {ident.peer_id} in {info['key_file']}", highlight=False)


@config_app.command("show")
def config_show(
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
    settings: SetOption = None,
    output: Annotated[ConfigFormat, typer.Option("--format", help="toml, json or keys (every key with its default)")] = "toml",  # type: ignore[assignment]
    origins: Annotated[bool, typer.Option("--origins", help="annotate where each value came from")] = False,
) -> None:
    """Print the effective configuration (file < environment < command line)."""
    import tomli_w

    from fednode.node.config import describe_keys, effective_tree, load_config

    try:
        effective, sources = load_config(config, collect_overrides(state_dir, settings))
    except FednodeError as error:
        raise fail(error) from None
    tree = effective_tree(effective)
    tree["node"].setdefault("state_dir", str(effective.resolved_state_dir()))
    output = ConfigFormat(output)
    if output is ConfigFormat.json:
        print_json({"config": tree, "sources": sources} if origins else tree)
    elif output is ConfigFormat.keys:
        table = output_table("key", "env", "default", "description")
        for row in describe_keys():
            table.add_row(row["key"], row["env"], json.dumps(row["default"]), row["description"])
        out.print(table)
    else:
        text = tomli_w.dumps(tree)
        if origins:
            lines = []
            section = ""
            for line in text.splitlines():
                if line.startswith("["):
                    section = line.strip("[]")
                key = line.split("=", 1)[0].strip()
                origin = sources.get(f"{section}.{key}")
                lines.append(f"{line}  # {origin}" if origin and "=" in line else line)
            text = "\n".join(lines) + "\n"
        sys.stdout.write(text)


def _register_admin_commands() -> None:
    from fednode.cli.admin import register

    register(app)


def _register_operations_commands() -> None:
    """Commands kept one per file (cli/<name>.py)."""
    from fednode.cli.health import health
    from fednode.cli.logs import logs
    from fednode.cli.report import report
    from fednode.cli.task import task_app

    app.command()(logs)
    app.command()(health)
    app.command()(report)
    app.add_typer(task_app, name="task")


_register_admin_commands()
_register_operations_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
