"""reports.crossover on SYNTHETIC matmul results: where each quantized format stops beating cuBLAS bf16 and
bitsandbytes, the map and the report section."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

from reports import crossover

DEVICE = "synthetic GPU"


def _cases(times: dict[tuple[str, str], dict[int, float]], shape: str = "4096x4096", run: str = "a") -> pd.DataFrame:
    """SYNTHETIC: matmul rows (load()'s columns the crossover reads) from {(impl, precision): {M: seconds}}."""
    rows: list[dict[str, Any]] = [
        {"run": run, "device": DEVICE, "group": "matmul", "op": "matmul", "impl": impl, "precision": precision}
        | {"shape": shape, "M": m, "status": "ok", "time_s": t}
        for (impl, precision), by_m in times.items()
        for m, t in by_m.items()
    ]
    return pd.DataFrame(rows)


BF16 = {1: 10.0, 16: 10.0, 256: 20.0, 4096: 200.0}


def _row(frame: pd.DataFrame, fmt: str, versus: str) -> pd.Series:
    rows = frame[(frame["format"] == fmt) & (frame["versus"] == versus)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_crossover_interpolated_in_log_m_and_log_speedup() -> None:
    # qkbench nf4 against bf16: speedups 2 (M=1), 2 (M=16), 0.5 (M=256), 0.5 (M=4096). Wins up to 16, loses from
    # 256; log s crosses 0 half way between log 16 and log 256: M = sqrt(16 * 256) = 64.
    cases = _cases({("torch", "bf16"): BF16, ("qkbench", "nf4"): {1: 5.0, 16: 5.0, 256: 40.0, 4096: 400.0}})
    row = _row(crossover.crossovers(cases), "qkbench nf4", "cuBLAS bf16 (torch)")
    assert (row["wins up to"], row["loses from"]) == (16, 256)
    assert row["crossover M"] == pytest.approx(64.0)
    assert row["map_text"] == "64" and row["map_log2_m"] == pytest.approx(6.0)
    assert (row["speedup at smallest M"], row["speedup at largest M"]) == (2.0, 0.5)
    assert row["M measured"] == "1 to 4096 (4)"


def test_wins_everywhere_never_and_at_or_below() -> None:
    cases = _cases(
        {
            ("torch", "bf16"): BF16,
            ("qkbench", "int8"): {m: t / 2 for m, t in BF16.items()},  # wins at every M
            ("bitsandbytes", "nf4"): {m: t * 2 for m, t in BF16.items()},  # loses at every M from 1
            ("qkbench", "fp4"): {256: 40.0, 4096: 400.0},  # measured from 256 only, loses there
        }
    )
    frame = crossover.crossovers(cases)
    always = _row(frame, "qkbench int8", "cuBLAS bf16 (torch)")
    assert always["map_text"] == "> 4096" and math.isnan(always["crossover M"]) and always["wins up to"] == 4096
    assert always["map_log2_m"] == 13  # one step beyond the largest M: the map's top colour
    never = _row(frame, "bitsandbytes nf4", "cuBLAS bf16 (torch)")
    assert never["map_text"] == "never" and never["loses from"] == 1 and never["map_log2_m"] == -1
    bounded = _row(frame, "qkbench fp4", "cuBLAS bf16 (torch)")
    assert bounded["map_text"] == "≤ 256" and bounded["M measured"] == "256 to 4096 (2)"


def test_against_bitsandbytes_of_the_same_format_and_wins_again() -> None:
    cases = _cases(
        {
            ("torch", "bf16"): BF16,
            ("bitsandbytes", "nf4"): {1: 10.0, 16: 10.0, 256: 10.0, 4096: 10.0},
            ("qkbench", "nf4"): {1: 5.0, 16: 20.0, 256: 5.0, 4096: 20.0},  # wins, loses, wins again, loses
            ("dequant+torch", "nf4"): {1: 20.0, 16: 5.0, 256: 5.0, 4096: 5.0},  # loses at 1, wins from 16
            ("bitsandbytes", "int8"): {1: 1.0},  # no qkbench int8: no pair against it
        }
    )
    frame = crossover.crossovers(cases)
    assert set(frame["versus"]) == {"cuBLAS bf16 (torch)", "bitsandbytes nf4"}
    assert "bitsandbytes nf4" not in set(frame.loc[frame["format"] == "bitsandbytes nf4", "versus"])  # not itself
    mixed = _row(frame, "qkbench nf4", "bitsandbytes nf4")
    assert (mixed["wins up to"], mixed["loses from"], mixed["wins again at"]) == (1, 16, "256")
    assert mixed["map_text"].endswith(" *")
    late = _row(frame, "dequant+torch nf4", "bitsandbytes nf4")
    assert late["map_text"] == "≤ 1 *" and late["wins again at"] == "16, 256, 4096"
    assert len(frame[frame["format"] == "bitsandbytes int8"]) == 1  # vs bf16 only, at its one M


def test_only_ok_timed_matmul_rows_count_and_runs_split_panels() -> None:
    cases = pd.concat(
        [
            _cases({("torch", "bf16"): BF16, ("qkbench", "nf4"): {m: t / 2 for m, t in BF16.items()}}, run="a"),
            _cases({("torch", "bf16"): BF16, ("qkbench", "nf4"): {m: t * 2 for m, t in BF16.items()}}, run="b"),
        ]
    )
    cases.loc[(cases["run"] == "b") & (cases["M"] == 1) & (cases["impl"] == "qkbench"), "status"] = "error"
    lora = cases.assign(group="lora")  # not the matmul suite
    frame = crossover.crossovers(pd.concat([cases, lora]))
    assert list(frame["run"]) == ["a", "b"]
    assert list(frame["panel"]) == [f"a: {DEVICE} — vs cuBLAS bf16", f"b: {DEVICE} — vs cuBLAS bf16"]
    assert frame.iloc[1]["M measured"] == "16 to 4096 (3)"  # M=1 failed in run b
    assert frame.iloc[1]["map_text"] == "≤ 16"


def test_section_draws_the_map_or_says_why_not() -> None:
    from reports.render import Image, Table, Text

    cases = pd.concat(
        [
            _cases({("torch", "bf16"): BF16, ("qkbench", "nf4"): {1: 5.0, 16: 5.0, 256: 40.0, 4096: 400.0}}, s)
            for s in ("llama2-7b.q_proj", "llama2-7b.down")
        ]
    )
    section = crossover.section(cases)
    kinds = [type(item) for item in section.items]
    assert kinds == [Image, Table]
    table = section.items[1]
    assert isinstance(table, Table) and "run" not in table.header and "crossover M" in table.header
    assert [row[table.header.index("crossover M")] for row in table.rows] == ["64", "64"]
    empty = crossover.section(_cases({("torch", "bf16"): BF16}))
    assert [type(item) for item in empty.items] == [Text]
    assert "No crossover" in empty.items[0].text  # type: ignore[union-attr]
