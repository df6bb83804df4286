"""derive, compare, roofline and papers: the numbers the report shows."""

from __future__ import annotations

import pytest

from reports import papers, roofline
from reports.compare import compare
from reports.derive import derive, headline, missing
from reports.load import load
from tests.reports.files import CPU, RUN_A, RUN_B


@pytest.fixture(scope="module")
def both():
    results = load([RUN_A, RUN_B])
    return results, derive(results.cases)


def _one(frame, **where):
    for key, value in where.items():
        frame = frame[frame[key] == value]
    assert len(frame) == 1, where
    return frame.iloc[0]


def test_speedup_is_best_other_implementation_over_qkbench(both):
    _, cases = both
    case = dict(run="h100_a", op="matmul", precision="nf4", shape="llama2-7b.q+k+v+o", M=1)
    qk = _one(cases, impl="qkbench", **case)
    others = [_one(cases, impl=impl, **case)["time_s"] for impl in ("bitsandbytes", "dequant+torch")]
    assert qk["speedup"] == pytest.approx(min(others) / qk["time_s"])
    assert qk["best_baseline"] == "bitsandbytes"
    reference = _one(cases, impl="torch", **{**case, "precision": "bf16"})
    assert qk["vs_reference"] == pytest.approx(reference["time_s"] / qk["time_s"])
    assert cases.loc[cases["impl"] != "qkbench", "speedup"].isna().all()


def test_lora_overhead_against_the_base_matmul(both):
    _, cases = both
    lora = _one(cases, run="h100_a", op="lora_fwd", impl="qkbench", precision="nf4-dq", rank=16)
    base = _one(cases, run="h100_a", op="matmul", impl="qkbench", precision="nf4-dq", shape="llama2-7b.q+k+v+o", M=4096)
    assert lora["lora_overhead_pct"] == pytest.approx(100 * (lora["time_s"] / base["time_s"] - 1))
    assert cases.loc[cases["op"] == "lora_fwd_bwd", "lora_overhead_pct"].isna().all()  # no base measured


def test_headline_keeps_key_shapes(both):
    _, cases = both
    key = headline(cases)
    matmul = key[(key["op"] == "matmul") & (key["precision"] == "nf4")]
    assert set(matmul["M"]) == {1, 4096}
    assert set(key.loc[key["op"] == "lora_fwd", "rank"]) == {16}
    assert (key["impl"] == "qkbench").all()


def test_missing_lists_groups_and_failed_cases(both):
    results, _ = both
    gaps = missing(results)
    assert ("h100_b", "missing group") in set(zip(gaps["run"], gaps["what"], strict=True))
    assert set(gaps["what"]) == {"missing group", "oom", "error"}
    assert gaps["detail"].str.contains("illegal memory access").any()


def test_compare_flags_regressions_past_the_threshold(both):
    _, cases = both
    result = compare(cases, ["h100_a", "h100_b"], threshold=0.05)
    slower = result.regressions[result.regressions["metric"] == "time_s"]
    assert len(slower) == 11 and slower["ratio"].round(2).eq(1.22).all()
    assert (result.regressions["metric"] == "status ok → error").sum() == 1
    assert (result.regressions["metric"] == "case missing").sum() == 5  # the optim group (its OOM case never ran)
    assert not result.devices_differ
    lenient = compare(cases, ["h100_a", "h100_b"], threshold=0.25)
    assert (lenient.regressions["metric"] == "time_s").sum() == 0
    assert {"h100_a time_us", "h100_b time_us", "h100_b / h100_a"} <= set(result.side_by_side.columns)
    summary = result.summary.set_index("group")
    assert set(summary.index) == {"quantize", "matmul", "lora"}  # optim has no case timed in both runs
    assert summary.loc["quantize", "worst ratio"] == pytest.approx(1.22)
    assert 1.0 < summary.loc["matmul", "geomean ratio"] < 1.22 and summary.loc["matmul", "best ratio"] == 1.0


def test_compare_arguments(both):
    _, cases = both
    with pytest.raises(ValueError, match="at least two"):
        compare(cases, ["h100_a"])
    with pytest.raises(ValueError, match="threshold"):
        compare(cases, ["h100_a", "h100_b"], threshold=-0.1)


def test_roofline_predictions_use_datasheet_peaks():
    cases = load([CPU]).cases
    predicted = roofline.predictions(cases)
    row = predicted[(predicted["op"] == "matmul") & (predicted["precision"] == "bf16") & (predicted["M"] == 1)].iloc[0]
    h100 = roofline.DATASHEETS[1]
    assert row[f"{h100.name} bound"] == "memory"
    assert row[f"{h100.name} µs"] == pytest.approx(1e6 * row["bytes"] / (h100.hbm_gbps * 1e9))
    assert roofline.compute_class("nf4") == "bf16" and roofline.compute_class("int8") == "int8"


def test_ceilings_are_min_of_peak_and_bandwidth():
    results = load([RUN_A, RUN_B])
    lines = roofline.ceilings(results.runs)
    assert lines["ceiling"].nunique() == 3  # same peaks in both runs: one bf16, one fp32 and one int8 line
    assert lines["tflops"].max() == pytest.approx(1290.0)
    low = lines.sort_values("intensity").iloc[0]
    assert low["tflops"] == pytest.approx(low["intensity"] * 2950.0 / 1e3)


def test_lora_paper_table():
    table = papers.lora_gpt3().set_index("rank", drop=False)
    # 96 layers x 2 matrices x r x (12288 + 12288): table 4's 4.7M and 37.7M, table 15's 301.9M (truncated)
    assert table.loc[1, "trainable params"] == 4_718_592
    assert table.loc[4, "trainable params"] == 18_874_368
    assert table.loc[8, "trainable params"] == 37_748_736
    assert table.loc[64, "trainable params"] == 301_989_888
    assert table.loc[4, "checkpoint (MB, fp16)"] == pytest.approx(37.75, abs=0.01)  # "roughly 35MB"


def test_qlora_paper_tables():
    bits = papers.qlora_bits().set_index("format")
    assert bits.loc["nf4", "bits per parameter"] == pytest.approx(4.5)
    assert bits.loc["nf4 + double quant", "bits per parameter"] == pytest.approx(4.127, abs=5e-4)
    memory = papers.qlora_memory().set_index("model")
    assert memory.loc["llama-65b", "full (GB)"] > 780  # QLoRA: ">780 GB"
    assert memory.loc["llama-65b", "qlora (GB)"] < 48  # "<48 GB"
    assert (memory["full (GB)"] > memory["lora (GB)"]).all() and (memory["lora (GB)"] > memory["qlora (GB)"]).all()


def test_rates_filled_from_the_median_when_missing():
    results = load([CPU])
    derived = derive(results.cases.assign(tflops=float("nan"), gbps=float("nan")))
    timed = derived[derived["time_s"].notna()]
    assert timed["tflops"].to_numpy() == pytest.approx((timed["flops"] / timed["time_s"] / 1e12).to_numpy())
    assert timed["gbps"].to_numpy() == pytest.approx((timed["bytes"] / timed["time_s"] / 1e9).to_numpy())


def test_fastest_per_shape_and_m(both):
    from reports.derive import fastest

    _, cases = both
    best = fastest(cases)
    assert len(best) == 2 * 2 * 4  # runs x shapes x M
    row = best[(best["run"] == "h100_a") & (best["shape"] == "llama2-7b.q+k+v+o") & (best["M"] == 1)].iloc[0]
    timed = cases[(cases["run"] == "h100_a") & (cases["op"] == "matmul") & (cases["shape"] == "llama2-7b.q+k+v+o")]
    times = timed[timed["M"] == 1]["time_us"].dropna().sort_values()
    assert row["time_us"] == times.iloc[0] and row["margin"] == pytest.approx(times.iloc[1] / times.iloc[0])
    assert (row["impl"], row["precision"]) == ("qkbench", "nf4")


def test_audit_summary():
    from reports.derive import audit_summary
    from reports.load import load_audit
    from tests.reports.files import AUDIT

    summary = audit_summary(load_audit(AUDIT)).set_index(["kernel", "target"])
    lora = summary.loc[("_lora_fwd_kernel", "sm_80")]
    assert (lora["configs"], lora["max_registers"], lora["max_spill_bytes"], lora["spilling"]) == (1, 232, 48, 1)
    assert lora["max_shared_kib"] == 96 and lora["tensor_cores"] == 1
    assert summary.loc[("_gemv_4bit_kernel", "sm_80"), "over_shared"] == 1  # 196 KiB > 163 KiB
    assert summary.loc[("_gemv_4bit_kernel", "sm_90"), "over_shared"] == 0
    assert summary.loc[("_adamw8_kernel", "sm_90"), "failed"] == 1


def test_slowdowns_within_the_iqr_are_noise(both):
    _, cases = both
    noisy = cases.assign(time_iqr_s=cases["time_s"] * 0.3)  # IQR wider than the 22% slowdowns
    result = compare(noisy, ["h100_a", "h100_b"], threshold=0.05)
    assert (result.regressions["metric"] == "time_s").sum() == 0
    assert (result.regressions["metric"] == "status ok → error").sum() == 1  # not a matter of noise


def test_memory_table_keeps_ranks_apart():
    """Two LoRA ranks of one model are two columns with their own totals, never their mean."""
    import pandas as pd

    from reports.measured import memory

    cases = load([RUN_A]).cases
    rows = cases[cases["group"] == "memory"]
    adapters = rows[rows["method"].isin(["lora", "qlora"])]
    adapters = adapters.assign(rank=8, total_bytes=adapters["total_bytes"] - 1e9)
    table = next(item for item in memory(derive(pd.concat([rows, adapters]))).items if item.kind == "table")
    assert table.header == ["run", "model", "params (B)", "full", "lora r=8", "lora r=64", "qlora r=8", "qlora r=64"]
    at = dict(zip(table.header, table.rows[[r[1] for r in table.rows].index("llama-65b")], strict=True))
    expected = rows[rows["model"] == "llama-65b"].set_index("method")["total_bytes"] / 1e9
    assert at["qlora r=64"] == f"{expected['qlora']:.1f}"
    assert at["qlora r=8"] == f"{expected['qlora'] - 1.0:.1f}"


def test_lora_panels_are_per_op_and_m():
    """The LoRA figure's panels: one per op and M, so that M = 1 and M = 4096 are never averaged."""
    import pandas as pd

    cases = load([RUN_A]).cases
    lora = cases[cases["group"] == "lora"]
    derived = derive(pd.concat([lora, lora.assign(M=1)]))
    assert set(derived["op_m"]) == {f"{op} M={m}" for op in ("lora_fwd", "lora_fwd_bwd") for m in (1, 4096)}
