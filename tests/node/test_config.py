"""Configuration precedence (CLI > env > file > defaults) and clear errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fednode.node.config import load_config, parse_value
from fednode.node.errors import ConfigError, ExitCode


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_any_source(tmp_path: Path) -> None:
    config, sources = load_config(None, {}, environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert config.training.lr == 0.05
    assert config.task.shard == "0/1"
    assert sources == {}


def test_precedence_cli_over_env_over_file(tmp_path: Path) -> None:
    config_file = write(
        tmp_path / "c.toml",
        "[training]\nlr = 0.3\nbatch_size = 16\nlocal_steps = 7\n[task]\nshard = \"1/4\"\n",
    )
    environ = {"FEDNODE_TRAINING_LR": "0.2", "FEDNODE_TRAINING_BATCH_SIZE": "64"}
    config, sources = load_config(config_file, {"training.lr": 0.1}, environ=environ)
    assert config.training.lr == 0.1 and sources["training.lr"] == "cli"
    assert config.training.batch_size == 64 and sources["training.batch_size"] == "env:FEDNODE_TRAINING_BATCH_SIZE"
    assert config.training.local_steps == 7 and sources["training.local_steps"] == f"file:{config_file}"
    assert config.task.shard_index == 1 and config.task.shard_count == 4


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    config_file = write(tmp_path / "c.toml", "[training]\nrounds = 12\n")
    config, _ = load_config(None, {}, environ={"FEDNODE_CONFIG": str(config_file)})
    assert config.training.rounds == 12


def test_env_values_are_typed_like_toml(tmp_path: Path) -> None:
    environ = {"FEDNODE_TASK_PARAMS": "{alpha = 0.1, hidden = [32]}", "FEDNODE_NODE_STATE_DIR": str(tmp_path / "s")}
    config, _ = load_config(None, {}, environ=environ)
    assert config.task.params == {"alpha": 0.1, "hidden": [32]}
    assert config.resolved_state_dir() == tmp_path / "s"
    assert parse_value("true") is True and parse_value("hello") == "hello" and parse_value("3") == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[training]\nlr = -1\n", "invalid config value training.lr = -1"),
        ("[training]\nlearning_rate = 0.1\n", "unknown config key training.learning_rate"),
        ("[trainig]\nlr = 0.1\n", "unknown config section [trainig]"),
        ("[task]\nshard = \"4/4\"\n", "shard must be"),
        ("[task]\nname = \"nocolon\"\n", "package.module:function"),
        ("[node]\ndevice = \"tpu\"\n", "node.device"),
        ("[training\nlr = 1\n", "not valid TOML"),
    ],
)
def test_bad_config_file_gives_one_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    config_file = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(config_file, {}, environ={})
    assert expected in info.value.message
    assert "\n" not in info.value.message
    assert info.value.exit_code == ExitCode.CONFIG


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="FEDNODE_TRAINING_BATCH_SIZE"):
        load_config(None, {}, environ={"FEDNODE_TRAINING_BATCH_SIZE": "many"})


def test_unknown_fednode_variable_is_refused() -> None:
    with pytest.raises(ConfigError, match="FEDNODE_TRAINING_LEARNINGRATE is not a fednode setting"):
        load_config(None, {}, environ={"FEDNODE_TRAINING_LEARNINGRATE": "1"})


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", {}, environ={})


def test_config_show_reports_effective_values_and_origins(tmp_path: Path, cli) -> None:
    config_file = write(tmp_path / "c.toml", "[training]\nlr = 0.3\nrounds = 5\n")
    result = cli(
        "config", "show", "--config", str(config_file), "--set", "training.rounds=9", "--format", "json", "--origins",
        env={"FEDNODE_TRAINING_BATCH_SIZE": "48"},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["config"]["training"]["lr"] == 0.3
    assert shown["config"]["training"]["rounds"] == 9
    assert shown["config"]["training"]["batch_size"] == 48
    assert shown["sources"]["training.rounds"] == "cli"


def test_cli_bad_set_and_bad_value_exit_with_config_code(tmp_path: Path, cli) -> None:
    result = cli("config", "show", "--set", "training.lr=oops")
    assert result.returncode == ExitCode.CONFIG
    assert "training.lr" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = cli("config", "show", "--set", "nodot=1")
    assert result.returncode == ExitCode.CONFIG


def test_set_reaches_keys_inside_table_settings(tmp_path: Path) -> None:
    config_file = write(tmp_path / "c.toml", "[task.params]\nhidden = [32]\n")
    config, sources = load_config(config_file, {"task.params.alpha": 0.3}, environ={})
    assert config.task.params == {"hidden": [32], "alpha": 0.3}
    assert sources["task.params.alpha"] == "cli"
    with pytest.raises(ConfigError, match=r"training\.lr is a value, not a table"):
        load_config(None, {"training.lr.x": 1}, environ={})


def test_cli_set_nested_key_and_unknown_section_name_it(cli) -> None:
    shown = cli("config", "show", "--set", "task.params.alpha=0.3", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["task"]["params"] == {"alpha": 0.3}
    unknown = cli("config", "show", "--set", "nosuch.key=1")
    assert unknown.returncode == ExitCode.CONFIG
    # The section's name is printed (not swallowed as markup) and the value's origin is the CLI.
    assert "unknown config section [nosuch] (from cli)" in unknown.stderr, unknown.stderr
    bad_key = cli("config", "show", "--set", "task.nope=1")
    assert "keys of [task]:" in bad_key.stderr and len(bad_key.stderr.strip().splitlines()) == 1


def test_binary_config_file_is_a_config_error(tmp_path: Path, cli) -> None:
    binary = tmp_path / "model.pt"
    binary.write_bytes(b"\x80\x02\x00\xff\xfe" * 20)
    with pytest.raises(ConfigError, match="is not text"):
        load_config(binary, {}, environ={})
    result = cli("config", "show", "--config", str(binary))
    assert result.returncode == ExitCode.CONFIG
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("key", "value"), [("aggregation.rule", "nope"), ("compression.codec", "zip")])
def test_unknown_rule_or_codec_is_refused_without_a_federation(key: str, value: str, cli) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(None, {key: value}, environ={})
    result = cli("start", "--solo", "--set", f'{key}="{value}"')
    assert result.returncode == ExitCode.CONFIG and key in result.stderr


def test_known_names_match_the_registries() -> None:
    from fednode.aggregators import available
    from fednode.node.compression.codecs import available as codecs
    from fednode.node.config import KNOWN_CODECS, KNOWN_RULES

    assert set(KNOWN_RULES) == {rule.name for rule in available()}
    assert set(KNOWN_CODECS) == set(codecs())
