"""Derived columns and the report's tables: every number the figures and tables show is computed here.

`derive(cases)` adds unit conversions (µs, GB, billions), arithmetic intensity, facet and line labels, the
speedup of each qkbench case over the best other implementation of the same case, its ratio to the group's
reference provider (torch/cuBLAS, `baseline=True`) and the LoRA overhead over the base layer. `headline` picks
the key shapes; `missing` says what a partial run lacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reports.load import GROUPS

if TYPE_CHECKING:
    import pandas as pd

    from reports.load import Results

__all__ = ["audit_summary", "derive", "fastest", "headline", "missing"]

SAME_CASE = ["run", "op", "precision", "shape", "M", "N", "K", "rank"]


def _labels(names: pd.Series, key: str, values: pd.Series) -> pd.Series:
    """ "name key=value" per row ("lora_fwd M=256", "qlora r=64"), or the name alone where value is missing."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    text = [name if pd.isna(value) else f"{name} {key}={value:g}" for name, value in zip(names, numbers, strict=True)]
    return pd.Series(text, index=names.index, dtype=object)


def _best_other(cases: pd.DataFrame) -> pd.DataFrame:
    """For each qkbench row: the fastest other implementation of the same case (name and time)."""
    others = cases[(cases["impl"] != "qkbench") & cases["time_s"].notna()]
    best = others.sort_values("time_s").drop_duplicates(SAME_CASE)
    return best[[*SAME_CASE, "impl", "time_s"]].rename(columns={"impl": "best_baseline", "time_s": "baseline_time_s"})


def _reference(cases: pd.DataFrame) -> pd.DataFrame:
    """The group's reference provider (baseline=True) per (run, op, shape, M, rank), any precision, fastest."""
    keys = ["run", "op", "shape", "M", "N", "K", "rank"]
    ref = cases[cases["baseline"] & cases["time_s"].notna()].sort_values("time_s").drop_duplicates(keys)
    ref = ref.assign(reference=ref["impl"] + " " + ref["precision"])
    return ref[[*keys, "reference", "time_s"]].rename(columns={"time_s": "reference_time_s"})


def _lora_base(cases: pd.DataFrame) -> pd.DataFrame:
    """Time of the layer without adapters for each LoRA case: a rank-less case of the same LoRA op, or for the
    forward the fastest matmul of the same precision, shape and M."""
    import pandas as pd

    keys = ["run", "op", "precision", "shape", "M", "N", "K"]
    timed = cases[cases["time_s"].notna()]
    rankless = timed[(timed["group"] == "lora") & (timed["rank"].isna() | (timed["rank"] == 0))]
    matmul = timed[timed["group"] == "matmul"].assign(op="lora_fwd")
    base = pd.concat([rankless, matmul])
    base = base.sort_values("time_s").drop_duplicates(keys)
    return base[[*keys, "time_s"]].rename(columns={"time_s": "base_time_s"})


def derive(cases: pd.DataFrame) -> pd.DataFrame:
    """`cases` with the derived columns the report shows (see the module docstring)."""
    out = cases.copy()
    positive = (out["flops"] > 0) & (out["bytes"] > 0)
    out["intensity"] = (out["flops"] / out["bytes"]).where(positive)
    out["time_us"] = out["time_s"] * 1e6
    timed = out["time_s"] > 0  # a time of 0 divides into inf: no rate, speedup or overhead from it
    # Achieved rates from the model's FLOPs and bytes where the suite left them out (it normally records them).
    out["tflops"] = out["tflops"].fillna((out["flops"] / out["time_s"] / 1e12).where(timed & (out["flops"] > 0)))
    out["gbps"] = out["gbps"].fillna((out["bytes"] / out["time_s"] / 1e9).where(timed & (out["bytes"] > 0)))
    out["params_b"] = out["params"] / 1e9
    out["total_gb"] = out["total_bytes"] / 1e9
    out["measured_gb"] = out["measured_bytes"] / 1e9
    out["peak_mem_mb"] = out["peak_mem_bytes"] / 1e6
    out["op_m"] = _labels(out["op"], "M", out["M"])  # a LoRA panel per op and M: never a mean over M
    out["variant"] = _labels(out["method"], "r", out["rank"])  # a memory line per method and rank
    for column in ("shape", "op", "op_m"):  # facet labels for figures of several runs
        out[f"run_{column}"] = out["run"].astype(str) + " · " + out[column].astype(str)
    out = out.merge(_best_other(out), on=SAME_CASE, how="left")  # one match at most: keys are unique there
    out.loc[out["impl"] != "qkbench", ["best_baseline", "baseline_time_s"]] = None
    out["speedup"] = (out["baseline_time_s"] / out["time_s"]).where(out["time_s"] > 0)
    out = out.merge(_reference(out), on=["run", "op", "shape", "M", "N", "K", "rank"], how="left")
    out["vs_reference"] = (out["reference_time_s"] / out["time_s"]).where(out["time_s"] > 0)
    lora = (out["group"] == "lora") & out["rank"].notna() & (out["rank"] > 0)
    out = out.merge(_lora_base(out), on=["run", "op", "precision", "shape", "M", "N", "K"], how="left")
    out["lora_overhead_pct"] = (100 * (out["time_s"] / out["base_time_s"] - 1)).where(lora & (out["base_time_s"] > 0))
    return out


def headline(cases: pd.DataFrame) -> pd.DataFrame:
    """Per op at key shapes (smallest and largest M, middle rank): qkbench vs the best baseline and the reference.

    `cases` is `derive`'s output; returns the rows of qkbench cases that have something to compare against.
    """
    rows = cases[(cases["impl"] == "qkbench") & cases["time_s"].notna()]
    rows = rows[rows["speedup"].notna() | rows["vs_reference"].notna()]
    if rows.empty:
        return rows
    group = ["run", "op", "precision", "shape"]
    m_low = rows.groupby(group, observed=True)["M"].transform("min")
    m_high = rows.groupby(group, observed=True)["M"].transform("max")
    ranks = rows.groupby(group, observed=True)["rank"].transform(lambda r: r.dropna().sort_values().median())
    nearest = (rows["rank"] - ranks).abs()
    rank_ok = rows["rank"].isna() | (
        nearest == nearest.groupby([rows[g] for g in group], observed=True).transform("min")
    )
    m_ok = rows["M"].isna() | (rows["M"] == m_low) | (rows["M"] == m_high)
    key = rows[rank_ok & m_ok]
    return key.sort_values(["op", "precision", "shape", "M", "rank", "run"]).reset_index(drop=True)


def fastest(cases: pd.DataFrame) -> pd.DataFrame:
    """The fastest matmul (any implementation and precision) per (run, shape, M): which to use at a batch size.

    `cases` is `derive`'s output; returns run, shape, M, impl, precision, time_us, err_rel, and `margin`: how much
    slower the runner-up is (its time / the fastest's).
    """
    import pandas as pd

    timed = cases[(cases["group"] == "matmul") & (cases["status"] == "ok")].dropna(subset=["M", "time_us"])
    ranked = timed.sort_values("time_us").groupby(["run", "shape", "M"], observed=True, sort=False)
    best = ranked.nth(0).set_index(["run", "shape", "M"])
    second = ranked.nth(1).set_index(["run", "shape", "M"])["time_us"]
    best["margin"] = second.reindex(best.index) / best["time_us"]
    columns = ["impl", "precision", "time_us", "err_rel", "margin"]
    order = list(dict.fromkeys(timed["shape"]))
    out = best[columns].reset_index()
    out["shape"] = pd.Categorical(out["shape"], categories=order, ordered=True)
    return out.sort_values(["run", "shape", "M"]).reset_index(drop=True)


def audit_summary(audit: pd.DataFrame) -> pd.DataFrame:
    """Per (kernel, target): configs compiled, the most registers, spilled bytes and shared memory (KiB) of any
    config, how many configs spill, exceed the target's shared memory per block, or failed, and how many use
    tensor cores (mma or wgmma instructions)."""
    numbers = audit.assign(
        over_shared=audit["status"].astype(str).str.startswith("smem>"),  # kernels/perf.py's limits, judged there
        tensor_cores=(audit["mma"].astype(float).fillna(0) + audit["wgmma"].astype(float).fillna(0)) > 0,
        spills=audit["spill_bytes"].astype(float).fillna(0) > 0,
        failed=audit["status"] == "error",
        shared_kib=audit["shared_bytes"].astype(float) / 1024,
    )
    summary = numbers.groupby(["kernel", "target"], sort=True).agg(
        configs=("config", "size"),
        max_registers=("registers", "max"),
        max_spill_bytes=("spill_bytes", "max"),
        max_shared_kib=("shared_kib", "max"),
        spilling=("spills", "sum"),
        over_shared=("over_shared", "sum"),
        failed=("failed", "sum"),
        tensor_cores=("tensor_cores", "sum"),
    )
    return summary.reset_index()


def missing(results: Results) -> pd.DataFrame:
    """What a partial run lacks: groups with no case, cases not `ok`, and problems met while reading.

    Returns a row per item: run, what ("missing group", "error", "oom", "skipped", "problem"), detail.
    """
    import pandas as pd

    cases = results.cases
    rows = []
    for run in results.runs["run"]:
        present = set(cases.loc[cases["run"] == run, "group"])
        rows += [
            {"run": run, "what": "missing group", "detail": f"no cases in group {g!r}"}
            for g in GROUPS
            if g not in present
        ]
    failed = cases[cases["status"] != "ok"]
    for case in failed.itertuples():
        error = str(case.error) if isinstance(case.error, str) else ""
        detail = f"{case.name}" + (f": {error[:200]}" if error else "")
        rows.append({"run": case.run, "what": str(case.status), "detail": detail})
    rows += [{"run": p.split(":", 1)[0], "what": "problem", "detail": p} for p in results.problems]
    return pd.DataFrame(rows, columns=["run", "what", "detail"])
