"""The report's fine-tuning section from synthetic fine-tuning rows (hand-made numbers, named synthetic)."""

from __future__ import annotations

import pandas as pd

from reports import measured
from reports.render import Image, Table, Text


def _synthetic_rows() -> pd.DataFrame:
    base = {"group": "finetune", "op": "train_step", "status": "ok", "device": "cpu (synthetic)", "run": "synthetic",
            "precision": "bf16", "time_s": 0.5, "loss_first": 6.9, "loss_last": 6.7, "weights_bytes": 4e6,
            "adapters_bytes": 1e5, "predicted_weights_bytes": 4e6}  # fmt: skip
    frame = pd.DataFrame(
        [
            {**base, "impl": "qkbench", "method": "qlora", "rank": 8, "tokens_per_s": 500.0, "peak_mem_bytes": 2e7},
            {**base, "impl": "peft-bnb", "method": "qlora", "rank": 8, "tokens_per_s": 400.0, "peak_mem_bytes": 3e7},
            {**base, "impl": "torch", "method": "full", "rank": None, "tokens_per_s": 900.0, "peak_mem_bytes": 9e7},
            {**base, "impl": "peft", "method": "lora", "rank": 64, "tokens_per_s": None, "peak_mem_bytes": 5e7},
        ]
    )
    return frame.astype({"rank": "Int64"})  # as reports.load types it: a nullable integer (pd.NA, not None)


def test_a_figure_and_a_table_of_the_timed_steps() -> None:
    section = measured.finetune(_synthetic_rows())
    kinds = [type(item) for item in section.items]
    assert kinds == [Image, Table]
    table = section.items[1]
    assert isinstance(table, Table)
    column = {name: [row[i] for row in table.rows] for i, name in enumerate(table.header)}
    assert column["variant"] == ["qlora r=8", "qlora r=8", "full"]  # the untimed case is left out
    assert column["peak_mb"] == ["20.0", "30.0", "90.0"] and column["weights (MB)"] == ["4.0"] * 3
    assert "predicted_weights (MB)" in column


def test_no_finetune_rows_says_so() -> None:
    section = measured.finetune(_synthetic_rows().assign(group="matmul"))
    assert len(section.items) == 1 and isinstance(section.items[0], Text)
