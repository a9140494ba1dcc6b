"""JSON log lines: what JsonFormatter writes, read_json_log reads back (and skips the rest)."""

from __future__ import annotations

import logging

from fednode.node.logs import JsonFormatter, read_json_log, record_time


def test_json_records_round_trip_and_other_lines_are_skipped() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("fednode.test", logging.INFO, __file__, 1, "round %d done", (3,), None)
    record.event, record.round, record.accuracy = "round", 3, 0.91
    line = formatter.format(record)
    text = "\n".join(["library noise on stderr", line, '{"cut short by a kill', "[1, 2]", line])
    records = read_json_log(text)
    assert len(records) == 2
    assert records[0]["msg"] == "round 3 done" and records[0]["event"] == "round"
    assert records[0]["round"] == 3 and records[0]["accuracy"] == 0.91 and records[0]["level"] == "info"


def test_record_time_reads_the_utc_timestamp_back_to_the_millisecond() -> None:
    record = logging.LogRecord("fednode.test", logging.INFO, __file__, 1, "x", None, None)
    record.created, record.msecs = 1_795_000_000.25, 250.0  # 2026-11-18, not on a whole second
    parsed = read_json_log(JsonFormatter().format(record))[0]
    assert parsed["ts"].endswith(".250Z")
    assert record_time(parsed) == 1_795_000_000.25
