"""`fednode launch`'s plan: what every node is told (no daemons started)."""

from __future__ import annotations

from fednode.cli.launch import LaunchPlan


def test_min_participants_leaves_room_for_f_faulty_nodes() -> None:
    """Sync rounds work out per round what the rule needs; a floor above n - f would let f
    faulty nodes stall every round (7 nodes, multi_krum, f = 2 used to get 2f+3 = 7)."""
    assert LaunchPlan(nodes=7, rule="multi_krum", f=2).derived_min_participants() == 4  # majority
    assert LaunchPlan(nodes=5, rule="krum", f=2).derived_min_participants() == 3
    assert LaunchPlan(nodes=4, rule="mean", f=2).derived_min_participants() == 2  # n - f below a majority
    assert LaunchPlan(nodes=2).derived_min_participants() == 2
    assert LaunchPlan(nodes=7, rule="multi_krum", f=2, min_participants=6).derived_min_participants() == 6
    # FedCompass groups wait for min_participants members before training: the rule's need stays.
    assert LaunchPlan(nodes=7, rule="multi_krum", f=2, schedule="fedcompass").derived_min_participants() == 7


def test_alie_without_z_gets_z_max_for_the_launch() -> None:
    assert LaunchPlan(nodes=7, byzantine=2, attack="alie").attack_settings() == {"n": 7, "f": 2}
    assert LaunchPlan(nodes=7, byzantine=2, attack="alie", attack_params={"z": 1.5}).attack_settings() == {"z": 1.5}
    assert LaunchPlan(nodes=7, byzantine=2, attack="ipm", attack_params={"eps": 2}).attack_settings() == {"eps": 2}


def test_the_exchange_comes_from_the_settings_and_the_last_one_wins() -> None:
    assert LaunchPlan().exchange() == "all_to_all"
    plan = LaunchPlan(settings=['federation.exchange="butterfly"', "federation.butterfly_parts=4"])
    assert plan.exchange() == "butterfly"
    plan.settings.append('federation.exchange = "all_to_all"')
    assert plan.exchange() == "all_to_all"
