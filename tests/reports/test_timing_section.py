"""The report's timing section: how each case was timed (rounds, noise, why the rounds stopped, first call).

Built from the committed SYNTHETIC H100 run (tests/reports/data/make_synthetic.py)."""

from __future__ import annotations

from reports import derive, measured
from reports.load import load
from reports.render import Table, Text
from tests.reports.files import RUN_A


def test_counts_stop_reasons_and_lists_every_timed_case() -> None:
    cases = derive.derive(load([RUN_A]).cases)
    section = measured.timing(cases)
    summary, table = section.items
    assert isinstance(summary, Text) and isinstance(table, Table)
    timed = cases[(cases["status"] == "ok") & cases["time_s"].notna()]
    assert f"{len(timed)} timed cases; the rounds stopped on: " in summary.text
    assert "1 missed their noise target" in summary.text  # the fixture's one noisy case
    assert len(table.rows) == len(timed) and "noise (%)" in table.header and "stop" in table.header


def test_results_without_rounds_say_so() -> None:
    cases = derive.derive(load([RUN_A]).cases).drop(columns=["stop"])
    (item,) = measured.timing(cases).items
    assert isinstance(item, Text) and "No timed case records its rounds" in item.text
