"""The report's content: which tables, figures and notes, in which order, from the loaded results.

Each `_section` function reads derived frames (reports.derive, compare, roofline, papers) and returns a Section,
drawing a figure only when its data is present and saying so when it is not. `flags` are the lines shown at the
top of both files: regressions past the threshold, and what a partial run lacks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reports import derive, papers, plots, roofline
from reports.render import Section, Text, png, table

if TYPE_CHECKING:
    import pandas as pd

    from reports.compare import Comparison
    from reports.load import Results

__all__ = ["flags", "sections"]

US = ",.1f"
X = ".2f"
NOT_IN_RESULTS = "Not in these results."
MAX_PANELS = 12  # latency panels (runs x shapes) in one figure


def _rows_with(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Rows of cases that ran (status ok) where every one of `columns` is present."""
    return frame[frame["status"] == "ok"].dropna(subset=list(columns))


def flags(results: Results, comparison: Comparison | None, missing: pd.DataFrame) -> list[Text]:
    """The lines at the top of the report: regressions first, then a partial run's gaps, then the context."""
    out: list[Text] = []
    if comparison is not None:
        n = len(comparison.regressions)
        pct = f"{100 * comparison.threshold:g}%"
        if n:
            worst = comparison.regressions.iloc[0]
            out.append(
                Text(
                    f"REGRESSIONS: {n} against baseline run {comparison.baseline} (threshold {pct}); "
                    f"first: {worst['run']}: {worst['case']} ({worst['metric']}). See 'Comparison'.",
                    warn=True,
                )
            )
        else:
            out.append(Text(f"No regressions past {pct} against baseline run {comparison.baseline}."))
        if comparison.devices_differ:
            out.append(Text("The compared runs ran on different devices: ratios compare machines, not commits."))
    if not missing.empty:
        counts = missing.groupby("what").size()
        listed = "; ".join(f"{what}: {n}" for what, n in counts.items())
        out.append(Text(f"PARTIAL REPORT ({listed}). See 'Missing and failed'.", warn=True))
    if not (results.runs["device_kind"] == "cuda").any():
        out.append(
            Text(
                "No GPU run in these results: times are from the CPU; see the A100/H100 roofline "
                "predictions (datasheet peaks, not measured)."
            )
        )
    return out


def _environment(results: Results) -> Section:
    """Environment of each run, a column per run."""
    import pandas as pd

    fields = [
        "device",
        "device_kind",
        "driver",
        "cuda",
        "torch",
        "triton",
        "bitsandbytes",
        "python",
        "git_commit",
        "dirty",
        "date",
        "profile",
        "copy_gbps",
        "bf16_tflops",
        "fp32_tflops",
        "pytest_benchmark",
        "file",
    ]
    runs = results.runs.set_index("run")
    counts = results.cases.groupby("run", observed=False)["status"].value_counts().unstack(fill_value=0)
    frame = pd.DataFrame({"field": [*fields, "cases (ok / not ok)"]})
    for run in runs.index:
        values = [runs.loc[run, f] if f in runs.columns else None for f in fields]
        ok = int(counts.loc[run].get("ok", 0)) if run in counts.index else 0
        total = int(counts.loc[run].sum()) if run in counts.index else 0
        frame[run] = [*values, f"{ok} / {total - ok}"]
    note = "Peaks (copy GB/s, bf16 and fp32 TFLOP/s) were measured in the same run; they are the roofline's ceilings."
    return Section("environment", "Environment", [table(frame), Text(note)])


def _headline(cases: pd.DataFrame, several: bool) -> Section:
    """Per op at key shapes: qkbench vs the best baseline and the reference provider, % of roofline."""
    key = derive.headline(cases)
    section = Section("headline", "Headline: qkbench vs the best baseline")
    if key.empty:
        section.items.append(Text("No qkbench case with a baseline to compare against in these results."))
        return section
    columns = {
        "run": "run",
        "op": "op",
        "precision": "precision",
        "shape": "shape",
        "M": "M",
        "rank": "rank",
        "time_us": "qkbench µs",
        "best_baseline": "best baseline",
        "baseline_us": "baseline µs",
        "speedup": "speedup (x)",
        "reference": "reference",
        "vs_reference": "vs reference (x)",
        "roofline_pct": "% of roofline",
    }
    frame = key.assign(baseline_us=key["baseline_time_s"] * 1e6)[list(columns)].rename(columns=columns)
    if not several:
        frame = frame.drop(columns="run")
    fmt = {"qkbench µs": US, "baseline µs": US, "speedup (x)": X, "vs reference (x)": X, "% of roofline": ".0f"}
    caption = (
        "Key shapes: smallest and largest M, middle rank. Speedup: best other implementation of the same "
        "precision / qkbench (>1: qkbench faster). Reference: the group's baseline provider (torch/cuBLAS) "
        "at any precision. % of roofline: against the run's measured peaks."
    )
    section.items.append(table(frame, fmt, caption))
    return section


def _comparison(comparison: Comparison) -> Section:
    """Regressions, then every case side by side with ratios against the baseline run."""
    section = Section("comparison", f"Comparison against {comparison.baseline}")
    regressions = comparison.regressions.rename(columns={"ratio": "ratio (x)"})
    if regressions.empty:
        section.items.append(Text(f"No regressions past {100 * comparison.threshold:g}%."))
    else:
        section.items.append(Text(f"{len(regressions)} regressions past {100 * comparison.threshold:g}%:", warn=True))
        section.items.append(table(regressions, {"baseline": ".4g", "value": ".4g", "ratio (x)": X}))
    section.items.append(
        Text(
            f"{comparison.improvements} cases got faster by more than "
            f"{100 * comparison.threshold:g}%. Ratios are run / {comparison.baseline}."
        )
    )
    side = comparison.side_by_side
    fmt = {c: (US if c.endswith("µs") else X) for c in side.columns if c not in ("group", "case")}
    caption = "Median times (µs) per run; ratio > 1 means slower than the baseline run."
    section.items.append(table(side, fmt, caption, fold=f"Every case side by side ({len(side)} cases)"))
    return section


def _matmul(cases: pd.DataFrame) -> Section:
    """Latency and speedup against M per precision."""
    section = Section("latency", "Latency and speedup vs M")
    latency = _rows_with(cases[cases["group"] == "matmul"], "M", "time_us")
    if latency.empty:
        section.items.append(Text("No timed matmul cases. " + NOT_IN_RESULTS))
        return section
    shapes = list(dict.fromkeys(latency["shape"]))
    runs = latency["run"].nunique()
    if runs * len(shapes) > MAX_PANELS:
        kept = shapes[: max(1, MAX_PANELS // runs)]
        omitted = ", ".join(shapes[len(kept) :])
        section.items.append(Text(f"Latency panels for {len(kept)} of {len(shapes)} shapes; not drawn: {omitted}."))
        latency = latency[latency["shape"].isin(kept)]
    section.items.append(png(plots.latency_vs_m(latency), "latency_vs_m.png", "Median latency vs M per precision"))
    best = derive.fastest(cases)
    if not best.empty:
        names = {
            "run": "run",
            "shape": "shape",
            "M": "M",
            "precision": "fastest precision",
            "impl": "impl",
            "time_us": "µs",
            "margin": "runner-up slower by (x)",
            "err_rel": "rel. error",
        }
        frame = best[list(names)].rename(columns=names)
        if best["run"].nunique() == 1:
            frame = frame.drop(columns="run")
        fmt = {"µs": US, "runner-up slower by (x)": X, "rel. error": ".2g"}
        caption = "Which weight format and kernel to use at a batch size: the fastest matmul per shape and M; "
        caption += "check its error against your accuracy budget (rel. error vs an fp32 reference)."
        section.items.append(table(frame, fmt, caption))
    speedup = _rows_with(cases[cases["group"] == "matmul"], "M", "speedup")
    if not speedup.empty:
        alt = "qkbench speedup over the best baseline vs M"
        section.items.append(png(plots.speedup_vs_m(speedup), "speedup_vs_m.png", alt))
    return section


def _roofline(results: Results, cases: pd.DataFrame) -> Section:
    """The roofline figure; where no GPU ran, predictions for A100 and H100 from datasheet peaks."""
    section = Section("roofline", "Roofline")
    if (cases["precision"] == "int8").any():
        section.items.append(
            Text(
                "int8 cases run on int8 tensor cores, whose peak (about twice bf16) the run does not measure: "
                "they can sit above the bf16 ceiling."
            )
        )
    points = _rows_with(cases, "intensity", "tflops")
    points = points[points["tflops"] > 0]
    if points.empty:
        section.items.append(Text("No case with FLOPs, bytes and a time. " + NOT_IN_RESULTS))
    else:
        figure = plots.roofline(points, roofline.ceilings(results.runs))
        section.items.append(png(figure, "roofline.png", "Achieved TFLOP/s vs arithmetic intensity, measured ceilings"))
    if (results.runs["device_kind"] == "cuda").any():
        return section
    predicted = roofline.predictions(cases)
    if predicted.empty:
        return section
    with_m = predicted["M"].notna()
    group = predicted.groupby(["op", "precision", "shape"], dropna=False)["M"]
    key = ~with_m | (predicted["M"] == group.transform("min")) | (predicted["M"] == group.transform("max"))
    columns = ["op", "precision", "shape", "M", "rank"]
    for sheet in roofline.DATASHEETS:
        columns += [f"{sheet.name} µs", f"{sheet.name} bound"]
    frame = predicted.loc[key, columns].assign(measured="not measured")
    fmt = {f"{s.name} µs": ".3g" for s in roofline.DATASHEETS}
    sources = "; ".join(
        f"{s.name}: {s.hbm_gbps:g} GB/s, bf16 {s.bf16_tflops:g} TFLOP/s ({s.source})" for s in roofline.DATASHEETS
    )
    section.items.append(
        Text(
            "Predicted lower bounds, max(FLOPs / peak, bytes / bandwidth), from datasheet peaks, "
            "not measurements: real kernels reach ~70-90% of them."
        )
    )
    section.items.append(table(frame, fmt, sources))
    return section


def _lora(cases: pd.DataFrame) -> Section:
    """LoRA overhead (or latency) against rank."""
    section = Section("lora", "LoRA overhead vs rank")
    lora = _rows_with(cases[cases["group"] == "lora"], "rank", "time_us")
    if lora.empty:
        section.items.append(Text("No timed LoRA cases. " + NOT_IN_RESULTS))
        return section
    overhead = _rows_with(lora, "lora_overhead_pct")
    y = "lora_overhead_pct" if not overhead.empty else "time_us"
    alt = "LoRA overhead over the base layer vs rank" if y == "lora_overhead_pct" else "LoRA latency vs rank"
    section.items.append(png(plots.lora_overhead(overhead if y == "lora_overhead_pct" else lora, y), "lora.png", alt))
    if y == "lora_overhead_pct":
        section.items.append(png(plots.lora_overhead(lora, "time_us"), "lora_latency.png", "LoRA latency vs rank"))
        section.items.append(
            Text(
                "Overhead: LoRA time / the same layer without adapters - 1 (the rank-less case of "
                "the same op, or for the forward the fastest matmul of the base precision)."
            )
        )
    return section


def _memory(cases: pd.DataFrame) -> Section:
    """Training memory per model and method, from the memory group's rows."""
    section = Section("memory", "Memory vs model size per method")
    memory = _rows_with(cases[cases["group"] == "memory"], "params_b", "total_gb", "method")
    if memory.empty:
        section.items.append(Text("No memory-group cases. " + NOT_IN_RESULTS))
        return section
    section.items.append(png(plots.memory_vs_model(memory), "memory.png", "Training memory vs model size per method"))
    frame = memory.pivot_table(index=["run", "model", "params_b"], columns="method", values="total_gb", observed=True)
    frame = frame.reset_index().sort_values(["run", "params_b"]).rename(columns={"params_b": "params (B)"})
    section.items.append(
        table(
            frame,
            {c: ".1f" for c in frame.columns if c not in ("run", "model")},
            "GB: weights + gradients + AdamW states + adapters (activations not included).",
        )
    )
    return section


def _quantize(cases: pd.DataFrame) -> Section:
    """Quantization error against bits per parameter, and the optimizer states."""
    section = Section("quantization", "Quantization error and optimizer states")
    quant = _rows_with(cases[cases["group"] == "quantize"], "bits_per_param", "rmse")
    if quant.empty:
        section.items.append(Text("No quantize cases with an error measurement. " + NOT_IN_RESULTS))
    else:
        section.items.append(png(plots.quant_error(quant), "quant_error.png", "Round-trip RMSE vs bits per parameter"))
        names = {
            "run": "run",
            "impl": "impl",
            "precision": "format",
            "shape": "shape",
            "bits_per_param": "bits/param",
            "rmse": "RMSE",
            "sqnr_db": "SQNR (dB)",
            "time_us": "µs",
        }
        fmt = {"bits/param": ".3f", "RMSE": ".4g", "SQNR (dB)": ".1f", "µs": US}
        section.items.append(table(quant[list(names)].rename(columns=names), fmt))
    optim = cases[(cases["group"] == "optim") & (cases["status"] == "ok")]
    if not optim.empty:
        names = {
            "run": "run",
            "impl": "impl",
            "precision": "optimizer",
            "shape": "shape",
            "time_us": "step µs",
            "state_bytes_per_param": "state bytes/param",
            "page_ins": "page-ins",
            "page_outs": "page-outs",
            "peak_mem_mb": "peak MB",
        }
        fmt = {"step µs": US, "state bytes/param": ".3g", "page-ins": ".0f", "page-outs": ".0f", "peak MB": ",.1f"}
        optim = optim[list(names)].rename(columns=names)
        section.items.append(table(optim, fmt, "Optimizer step: time, state bytes per parameter, paging."))
    return section


def _telemetry(cases: pd.DataFrame) -> Section:
    """NVML clocks and power where the run sampled them."""
    section = Section("telemetry", "NVML clocks and power")
    samples = _rows_with(cases, "sm_clock_mhz", "power_w")
    if samples.empty:
        section.items.append(Text("No NVML telemetry in these results (a CPU run, or NVML unavailable)."))
        return section
    section.items.append(png(plots.telemetry(samples), "telemetry.png", "SM clock and board power per op"))
    throttled = samples[samples["throttle_reasons"].fillna("") != ""]
    if not throttled.empty:
        reasons = sorted(set(", ".join(throttled["throttle_reasons"]).split(", ")))
        section.items.append(Text(f"{len(throttled)} cases ran while throttled: {', '.join(reasons)}.", warn=True))
    return section


def _audit(audit: pd.DataFrame | None, cases: pd.DataFrame) -> Section:
    """The static kernel audit, with how many measured cases ran each kernel config."""
    section = Section("audit", "Static kernel audit")
    if audit is None:
        section.items.append(Text("No audit given (run `nox -s audit`, then pass --audit reports/latest/audit.json)."))
        return section
    used = cases["kernel"].dropna().value_counts()
    frame = audit.assign(cases=(audit["kernel"].astype(str) + ":" + audit["config"].astype(str)).map(used).fillna(0))
    spills = frame[frame["spill_bytes"].fillna(0) > 0]
    if not spills.empty:
        section.items.append(Text(f"{len(spills)} kernel configs spill registers.", warn=True))
    fmt = {"registers": ".0f", "spill_bytes": ".0f", "stack_bytes": ".0f", "shared_bytes": ",.0f", "cases": ".0f"}
    section.items.append(table(frame, fmt, "mma / wgmma: tensor-core instructions in the compiled SASS/PTX."))
    return section


def _papers() -> Section:
    """The LoRA and QLoRA papers' tables, recomputed by quant.memory."""
    section = Section("papers", "The papers' tables, reproduced")
    section.items.append(
        table(
            papers.lora_gpt3(),
            {"trainable params": ",.0f", "trainable (M)": ",.2f", "checkpoint (MB, fp16)": ",.1f", "rank": ".0f"},
            "LoRA (Hu et al.), GPT-3 175B, Wq and Wv adapted in all 96 layers; the paper prints counts to 0.1M, "
            "sometimes rounded, sometimes truncated (301,989,888 as 301.9M).",
        )
    )
    section.items.append(
        table(
            papers.qlora_bits(),
            {"bits per parameter": ".3f", "constants (bits)": ".3f"},
            "QLoRA (Dettmers et al.): NF4 storage with 64-element blocks.",
        )
    )
    section.items.append(
        table(
            papers.qlora_memory(),
            {c: ",.1f" for c in ("params (B)", "full (GB)", "lora (GB)", "qlora (GB)")},
            "Memory to fine-tune LLaMA (r = 64 on all linear layers, AdamW 32-bit states, no activations).",
        )
    )
    return section


def _missing(missing: pd.DataFrame) -> Section:
    """Groups with no case and cases that did not run."""
    section = Section("missing", "Missing and failed")
    if missing.empty:
        section.items.append(Text("Every group has cases and every case ran."))
    else:
        section.items.append(table(missing))
    return section


def sections(
    results: Results,
    cases: pd.DataFrame,
    comparison: Comparison | None,
    audit: pd.DataFrame | None,
    missing: pd.DataFrame,
) -> list[Section]:
    """All sections in reading order; `cases` is derive.derive(results.cases)."""
    several = results.runs["run"].nunique() > 1
    out = [_environment(results), _headline(cases, several)]
    if comparison is not None:
        out.append(_comparison(comparison))
    out += [
        _matmul(cases),
        _roofline(results, cases),
        _lora(cases),
        _memory(cases),
        _quantize(cases),
        _telemetry(cases),
        _audit(audit, cases),
        _papers(),
        _missing(missing),
    ]
    return out
