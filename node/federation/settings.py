"""How a federation trains: one type for the daemon, the link and the training worker.

The daemon derives `FederationSettings` from the federation's signed descriptor (or from config
for an open federation), checks the budget with it, and sends it to the worker as
`worker_pb2.Settings` (`to_proto`); the worker reads it back with `from_proto`. torch-free: the
daemon imports it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fednode.node.errors import ConfigError
from fednode.node.federation.outer_config import OuterConfig, config_from_proto, config_to_proto
from fednode.proto.v1 import worker_pb2


@dataclass(frozen=True)
class FederationSettings:
    """Aggregation rule, schedule, codec, outer optimizer and budget of one federation."""

    rule: str
    rule_params: dict[str, Any]
    f: int
    schedule: str
    min_participants: int
    codec: str
    codec_params: dict[str, Any]
    # The federation's budget (certified federations: from the descriptor; 0 = none). Only
    # max_rounds crosses the link; the daemon alone stops on the others.
    max_rounds: int = 0
    target_accuracy: float = 0.0
    until_unix_ms: int = 0
    outer: OuterConfig = field(default_factory=OuterConfig)  # identity = plain FedAvg
    # How a sync round's updates travel: "all_to_all", "butterfly"; "" = the member's
    # federation.exchange (descriptors that predate the field).
    exchange: str = ""

    def budget_reached(self, round_number: int, accuracy: float, now_unix_ms: int) -> str:
        """Which part of the budget this round reached ("rounds", "target_accuracy", "until"), or ""."""
        if self.max_rounds and round_number >= self.max_rounds:
            return "rounds"
        if self.target_accuracy and accuracy >= self.target_accuracy:  # NaN never reaches it
            return "target_accuracy"
        if self.until_unix_ms and now_unix_ms >= self.until_unix_ms:
            return "until"
        return ""

    def to_proto(self) -> worker_pb2.Settings:
        message = worker_pb2.Settings(
            rule=self.rule, rule_params_json=json.dumps(self.rule_params, sort_keys=True), f=self.f,
            schedule=self.schedule, min_participants=self.min_participants, codec=self.codec,
            codec_params_json=json.dumps(self.codec_params, sort_keys=True), max_rounds=self.max_rounds,
            exchange=self.exchange,
        )
        if not self.outer.is_identity:
            message.outer.CopyFrom(config_to_proto(self.outer))
        return message

    @classmethod
    def from_proto(cls, message: worker_pb2.Settings) -> FederationSettings:
        """Raises ConfigError for settings that do not parse (bad JSON, an unusable outer optimizer)."""
        try:
            outer = config_from_proto(message.outer if message.HasField("outer") else None)
        except ValueError as exc:
            raise ConfigError(f"invalid outer optimizer settings: {exc}") from exc
        try:
            rule_params = json.loads(message.rule_params_json or "{}")
            codec_params = json.loads(message.codec_params_json or "{}")
        except ValueError as exc:
            raise ConfigError(f"invalid rule or codec parameters (not JSON): {exc}") from exc
        if not isinstance(rule_params, dict) or not isinstance(codec_params, dict):
            raise ConfigError("rule and codec parameters must be JSON objects")
        return cls(
            rule=message.rule, rule_params=rule_params, f=message.f, schedule=message.schedule,
            min_participants=message.min_participants, codec=message.codec, codec_params=codec_params,
            max_rounds=message.max_rounds, outer=outer, exchange=message.exchange,
        )


EXCHANGES = ("all_to_all", "butterfly")


def exchange_problem(exchange: str, schedule: str, rule: str, rule_params: dict[str, Any], parts: int) -> str | None:
    """Why a federation cannot use `exchange` (None: it can; "" = the member's own setting).
    `parts`: the butterfly's parts count (federation.butterfly_parts, else min_participants)."""
    if exchange not in ("", *EXCHANGES):
        return f"exchange must be one of {', '.join(EXCHANGES)}, got {exchange!r}"
    if exchange != "butterfly":
        return None
    if schedule != "sync":
        return f'the butterfly exchange runs with the sync schedule only, not {schedule!r}'
    if rule == "gas" and rule_params.get("within_parts") != parts:
        return (f'aggregation rule "gas" over the butterfly exchange needs within_parts = {parts} in the rule\'s '
                f'parameters (the parts count: federation.butterfly_parts, else min_participants)')
    return None
