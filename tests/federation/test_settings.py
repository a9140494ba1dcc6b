"""FederationSettings: one type for the daemon, the link (worker_pb2.Settings) and the worker."""

from __future__ import annotations

import pytest

from fednode.node.errors import ConfigError
from fednode.node.federation.outer_config import OuterConfig
from fednode.node.federation.settings import FederationSettings
from fednode.proto.v1 import worker_pb2


def settings(**changes: object) -> FederationSettings:
    fields: dict[str, object] = dict(rule="multi_krum", rule_params={"m": 3}, f=1, schedule="sync", min_participants=4,
                                     codec="topk", codec_params={"k": 0.1}, max_rounds=50)
    fields.update(changes)
    return FederationSettings(**fields)


@pytest.mark.parametrize("outer", [OuterConfig(), OuterConfig.build("nesterov", lr=0.7, momentum=0.9)])
def test_settings_cross_the_link_unchanged(outer: OuterConfig) -> None:
    sent = settings(outer=outer)
    wire = worker_pb2.Settings.FromString(sent.to_proto().SerializeToString())
    assert FederationSettings.from_proto(wire) == sent
    assert wire.HasField("outer") == (not outer.is_identity)  # plain FedAvg sends no outer optimizer


def test_only_the_round_budget_crosses_the_link() -> None:
    """The daemon alone stops on target accuracy and deadline; the worker needs the round budget."""
    received = FederationSettings.from_proto(settings(target_accuracy=0.9, until_unix_ms=123).to_proto())
    assert (received.max_rounds, received.target_accuracy, received.until_unix_ms) == (50, 0.0, 0)


def test_the_budget_names_what_it_reached() -> None:
    budget = settings(max_rounds=10, target_accuracy=0.9, until_unix_ms=1_000)
    assert budget.budget_reached(10, 0.5, 0) == "rounds"
    assert budget.budget_reached(3, 0.95, 0) == "target_accuracy"
    assert budget.budget_reached(3, float("nan"), 1_000) == "until"
    assert budget.budget_reached(3, float("nan"), 999) == ""


@pytest.mark.parametrize(("field", "value", "says"), [
    ("rule_params_json", "{not json", "not JSON"),
    ("codec_params_json", "[1, 2]", "JSON objects"),
])
def test_settings_that_do_not_parse_are_a_config_error(field: str, value: str, says: str) -> None:
    message = settings().to_proto()
    setattr(message, field, value)
    with pytest.raises(ConfigError, match=says):
        FederationSettings.from_proto(message)


def test_an_unusable_outer_optimizer_is_a_config_error() -> None:
    message = settings().to_proto()
    message.outer.name = "no_such_optimizer"
    with pytest.raises(ConfigError, match="outer optimizer"):
        FederationSettings.from_proto(message)


def test_the_exchange_crosses_the_link_and_is_checked_in_one_line() -> None:
    from fednode.node.federation.settings import exchange_problem
    from fednode.node.membership.federation import create_federation

    sent = settings(exchange="butterfly")
    assert FederationSettings.from_proto(worker_pb2.Settings.FromString(sent.to_proto().SerializeToString())) == sent
    assert exchange_problem("", "fedcompass", "mean", {}, 4) is None  # the member's own setting
    assert exchange_problem("butterfly", "sync", "median", {}, 4) is None
    assert "sync schedule only" in (exchange_problem("butterfly", "fedcompass", "mean", {}, 4) or "")
    assert "within_parts = 4" in (exchange_problem("butterfly", "sync", "gas", {"within_parts": 3}, 4) or "")
    assert "one of all_to_all, butterfly" in (exchange_problem("ring", "sync", "mean", {}, 4) or "")
    _, descriptor = create_federation("x", exchange="butterfly")
    assert descriptor.exchange == "butterfly"  # signed with the rest of the descriptor
    with pytest.raises(ValueError, match="exchange must be"):
        create_federation("x", exchange="ring")
