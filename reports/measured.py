"""The report's sections of measured results, each with its figure: latency and speedup, roofline, LoRA,
memory, quantization error and optimizer states, NVML telemetry.

Each function reads derived cases (reports.derive) and returns a Section, drawing a figure only when its data is
present (cases that ran, with the plotted columns) and saying so when it is not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reports import derive, plots, roofline
from reports.render import Section, Text, png, table

if TYPE_CHECKING:
    import pandas as pd

    from reports.load import Results

__all__ = ["latency", "lora", "memory", "quantization", "roofline_section", "rows_with", "telemetry"]

US = ",.1f"
X = ".2f"
NOT_IN_RESULTS = "Not in these results."
MAX_PANELS = 12  # latency panels (runs x shapes) in one figure


def rows_with(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Rows of cases that ran (status ok) where every one of `columns` is present."""
    return frame[frame["status"] == "ok"].dropna(subset=list(columns))


def latency(cases: pd.DataFrame) -> Section:
    """Latency and speedup against M per precision."""
    section = Section("latency", "Latency and speedup vs M: which format at which batch size")
    timed = rows_with(cases[cases["group"] == "matmul"], "M", "time_us")
    if timed.empty:
        section.items.append(Text("No timed matmul cases. " + NOT_IN_RESULTS))
        return section
    shapes = list(dict.fromkeys(timed["shape"]))
    runs = timed["run"].nunique()
    if runs * len(shapes) > MAX_PANELS:
        kept = shapes[: max(1, MAX_PANELS // runs)]
        omitted = ", ".join(shapes[len(kept) :])
        section.items.append(Text(f"Latency panels for {len(kept)} of {len(shapes)} shapes; not drawn: {omitted}."))
        timed = timed[timed["shape"].isin(kept)]
    section.items.append(png(plots.latency_vs_m(timed), "latency_vs_m.png", "Median latency vs M per precision"))
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
    speedup = rows_with(cases[cases["group"] == "matmul"], "M", "speedup")
    if not speedup.empty:
        alt = "qkbench speedup over the best baseline vs M"
        section.items.append(png(plots.speedup_vs_m(speedup), "speedup_vs_m.png", alt))
    return section


def roofline_section(results: Results, cases: pd.DataFrame) -> Section:
    """The roofline figure; where no GPU ran, predictions for A100 and H100 from datasheet peaks."""
    section = Section("roofline", "Roofline")
    points = rows_with(cases, "intensity", "tflops")
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


def lora(cases: pd.DataFrame) -> Section:
    """LoRA overhead (or latency) against rank."""
    section = Section("lora", "LoRA overhead vs rank")
    lora = rows_with(cases[cases["group"] == "lora"], "rank", "time_us")
    if lora.empty:
        section.items.append(Text("No timed LoRA cases. " + NOT_IN_RESULTS))
        return section
    overhead = rows_with(lora, "lora_overhead_pct")
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


def _by_method(memory: pd.DataFrame) -> pd.DataFrame:
    """Memory rows ordered full, LoRA, QLoRA, each by rank (the order of the table's columns and the legend)."""
    order = {"full": 0, "lora": 1, "qlora": 2}
    keys = memory.assign(_order=memory["method"].astype(str).map(order).fillna(len(order)), _rank=memory["rank"])
    return memory.loc[keys.sort_values(["_order", "_rank"], kind="stable", na_position="first").index]


def memory(cases: pd.DataFrame) -> Section:
    """Training memory per model and method, from the memory group's rows."""
    section = Section("memory", "Memory vs model size per method")
    memory = rows_with(cases[cases["group"] == "memory"], "params_b", "total_gb", "method")
    if memory.empty:
        section.items.append(Text("No memory-group cases. " + NOT_IN_RESULTS))
        return section
    memory = _by_method(memory).drop_duplicates(["run", "model", "params_b", "variant"], keep="last")
    section.items.append(png(plots.memory_vs_model(memory), "memory.png", "Training memory vs model size per method"))
    frame = memory.pivot(index=["run", "model", "params_b"], columns="variant", values="total_gb")
    frame = frame[list(dict.fromkeys(memory["variant"]))]  # full, then LoRA and QLoRA by rank
    frame = frame.reset_index().sort_values(["run", "params_b"]).rename(columns={"params_b": "params (B)"})
    section.items.append(
        table(
            frame,
            {c: ".1f" for c in frame.columns if c not in ("run", "model")},
            "GB: weights + gradients + AdamW states + adapters (activations not included); r: LoRA rank.",
        )
    )
    return section


def quantization(cases: pd.DataFrame) -> Section:
    """Quantization error against bits per parameter, and the optimizer states."""
    section = Section("quantization", "Quantization error and optimizer states")
    quant = rows_with(cases[cases["group"] == "quantize"], "bits_per_param", "rmse")
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


def telemetry(cases: pd.DataFrame) -> Section:
    """NVML clocks and power where the run sampled them."""
    section = Section("telemetry", "NVML clocks and power")
    samples = rows_with(cases, "sm_clock_mhz", "power_w")
    if samples.empty:
        section.items.append(Text("No NVML telemetry in these results (a CPU run, or NVML unavailable)."))
        return section
    section.items.append(png(plots.telemetry(samples), "telemetry.png", "SM clock and board power per op"))
    throttled = samples[samples["throttle_reasons"].fillna("") != ""]
    if not throttled.empty:
        reasons = sorted(set(", ".join(throttled["throttle_reasons"]).split(", ")))
        section.items.append(Text(f"{len(throttled)} cases ran while throttled: {', '.join(reasons)}.", warn=True))
    return section


def finetune(cases: pd.DataFrame) -> Section:
    """A training step of a small Llama per stack (qkbench QLoRA, peft + bitsandbytes, peft LoRA, full fine-tuning):
    tokens/s against peak memory, the memory parts beside quant.memory's prediction, and the loss over the steps."""
    section = Section("finetune", "Fine-tuning step: tokens/s and peak memory per stack")
    rows = rows_with(cases[cases["group"] == "finetune"], "tokens_per_s", "peak_mem_bytes")
    if rows.empty:
        section.items.append(Text("No fine-tuning cases with a timed step. " + NOT_IN_RESULTS))
        return section
    import pandas as pd

    rank = rows["rank"].map(lambda r: f" r={int(r)}" if pd.notna(r) and r else "", na_action="ignore").fillna("")
    rows = rows.assign(peak_mb=rows["peak_mem_bytes"] / 1e6, stack=rows["impl"],
                       variant=rows["method"].fillna("").astype(str) + rank)  # fmt: skip
    section.items.append(png(plots.finetune(rows), "finetune.png", "Fine-tuning: tokens/s vs peak memory"))
    parts = [c for c in ("weights_bytes", "adapters_bytes", "gradients_bytes", "optimizer_bytes", "activations_bytes")
             if c in rows and rows[c].notna().any()]  # fmt: skip
    predicted = [
        c for c in rows.columns if c.startswith("predicted_") and c.endswith("_bytes") and rows[c].notna().any()
    ]
    columns = ["run", "device", "stack", "variant", "precision", "tokens_per_s", "time_s", "peak_mb", "loss_first",
               "loss_last", *parts, *predicted]  # fmt: skip
    frame = rows[[c for c in columns if c in rows]].copy()
    for c in (*parts, *predicted):
        frame[c] = frame[c] / 1e6
    frame = frame.rename(columns={c: c.removesuffix("_bytes") + " (MB)" for c in (*parts, *predicted)})
    fmt = {c: ".1f" for c in frame.columns if c.endswith("(MB)") or c in ("tokens_per_s", "peak_mb")}
    fmt.update({"time_s": ".3f", "loss_first": ".4f", "loss_last": ".4f"})
    section.items.append(
        table(
            frame,
            fmt,
            "Synthetic token batches, random-weight model, same seed and data for every stack; MB parts "
            "measured, predicted_*: quant.memory's model; precision: the compute dtype.",
        )
    )
    return section


def timing(cases: pd.DataFrame) -> Section:
    """How each timed case was measured (suites/timing.py): its timer, rounds, the noise reached and why the rounds
    stopped, throttled rounds, the first call and Triton's compile time apart from the steady state, and energy."""
    section = Section("timing", "How each case was timed: rounds, noise, first call, energy")
    timed = rows_with(cases, "time_s")
    if timed.empty or "stop" not in timed:
        section.items.append(Text("No timed case records its rounds. " + NOT_IN_RESULTS))
        return section
    stops = timed["stop"].fillna("unrecorded").value_counts()
    noisy = int((timed.get("noisy") == "True").sum()) if "noisy" in timed else 0
    section.items.append(
        Text(
            f"{len(timed)} timed cases; the rounds stopped on: "
            + ", ".join(f"{reason} {n}" for reason, n in stops.items())
            + f"; {noisy} missed their noise target (noisy)."
        )
    )
    columns = ["run", "group", "op", "impl", "precision", "shape", "M", "rank", "timer", "rounds", "noise", "stop",
               "throttled_rounds", "time_s", "first_call_s", "compile_s", "energy_j", "j_per_token",
               "j_per_gb"]  # fmt: skip
    frame = timed[[c for c in columns if c in timed and timed[c].notna().any()]].copy()
    if "noise" in frame:
        frame["noise"] = frame["noise"] * 100
    for c in ("time_s", "first_call_s", "compile_s"):
        if c in frame:
            frame[c.removesuffix("_s") + " (ms)"] = frame.pop(c) * 1e3
    fmt = {"noise": ".2f", "rounds": ".0f", "throttled_rounds": ".0f", "time (ms)": ".3f", "first_call (ms)": ".1f",
           "compile (ms)": ".1f", "energy_j": ".3g", "j_per_token": ".3g", "j_per_gb": ".3g"}  # fmt: skip
    caption = (
        "noise: the relative standard error of the median reached (%); stop: why the rounds ended (noise target, "
        "timeout, max_rounds); time: the steady-state median; first_call and compile: the first call and Triton's "
        "compilation, apart from it; energy where NVML's counter ran (a GPU)."
    )
    section.items.append(table(frame.rename(columns={"noise": "noise (%)"}), {**fmt, "noise (%)": ".2f"}, caption,
                               fold=f"Every timed case ({len(frame)})"))  # fmt: skip
    return section
