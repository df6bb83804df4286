"""The report's content: which sections, in which order, and the flags at the top; figures are in measured.py.

Each `_<section>` function reads derived frames (reports.derive, compare, papers) and returns a Section of
tables and notes. `flags` are the lines shown at the top of both files: regressions past the threshold, what a
partial run lacks, and whether any GPU ran.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reports import crossover, derive, measured, papers
from reports.load import AUDIT_FIELDS
from reports.render import Section, Table, Text, table

if TYPE_CHECKING:
    import pandas as pd

    from reports.compare import Comparison
    from reports.load import Results

__all__ = ["flags", "sections"]

X = ".2f"
US = measured.US


def flags(
    results: Results, comparison: Comparison | None, missing: pd.DataFrame, audit: pd.DataFrame | None = None
) -> list[Text]:
    """The lines at the top of the report: regressions first, then a partial run's gaps, then the context."""
    out: list[Text] = []
    runs = results.runs
    synthetic = runs.loc[runs["synthetic"].fillna(False).astype(bool), "run"].tolist() if "synthetic" in runs else []
    if synthetic:
        names = ", ".join(map(str, synthetic))
        out.append(Text(f"SYNTHETIC data, made up rather than measured: run(s) {names} (machine_info says synthetic).",
                        warn=True))  # fmt: skip
    if runs["run"].nunique() > 1:
        for column, what in (("timing_method", "timing method"), ("gpu", "GPU clocks or settings")):
            recorded = [v if isinstance(v, dict) else None for v in runs.get(column, [])]  # a dict, or not recorded
            if any(v != recorded[0] for v in recorded):
                out.append(Text(f"The runs' {what} differ: their times are not measured alike.", warn=True))
    cases = results.cases
    if "noisy" in cases:
        noisy = int((cases["noisy"] == "True").sum())
        if noisy:
            out.append(Text(f"{noisy} cases did not reach their noise target (noisy): their times are less sure."))
    if "roofline_flag" in cases:
        flagged = int(cases["roofline_flag"].notna().sum())
        if flagged:
            out.append(Text(f"{flagged} cases sit above 100% of their roofline; their roofline_flag says why."))
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
    if audit is not None:
        summary = derive.audit_summary(audit)
        counts = {
            "failed to compile": summary["failed"].sum(),
            "spill registers": summary["spilling"].sum(),
            "exceed shared memory per block": summary["over_shared"].sum(),
        }
        bad = "; ".join(f"{int(n)} {what}" for what, n in counts.items() if n)
        if bad:
            out.append(
                Text(
                    f"Kernel audit: of {int(summary['configs'].sum())} compiled configs, {bad}. "
                    "See 'Static kernel audit'."
                )
            )
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
        "int8_tops",
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
    if len(runs.index) > 1:  # what changed between runs, at a glance
        values = frame[list(runs.index)].astype(str)
        frame.insert(1, "differs", values.nunique(axis=1).gt(1).map({True: "≠", False: ""}))
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
    if not comparison.summary.empty:
        fmt = {"geomean ratio": ".3f", "best ratio": ".3f", "worst ratio": ".3f"}
        caption = "Per group: time ratios (run / baseline) of the cases both runs timed; geometric mean, best, worst."
        section.items.append(table(comparison.summary, fmt, caption))
    side = comparison.side_by_side
    fmt = {c: (US if c.endswith("µs") else X) for c in side.columns if c not in ("group", "case")}
    caption = "Median times (µs) per run; ratio > 1 means slower than the baseline run."
    section.items.append(table(side, fmt, caption, fold=f"Every case side by side ({len(side)} cases)"))
    return section


def _audit(audit: pd.DataFrame | None, cases: pd.DataFrame) -> Section:
    """The static kernel audit, with how many measured cases ran each kernel config."""
    section = Section("audit", "Static kernel audit")
    if audit is None:
        section.items.append(Text("No audit given (run `nox -s audit`, then pass --audit reports/latest/audit.json)."))
        return section
    used = cases["kernel"].dropna().value_counts()
    frame = audit.assign(cases=(audit["kernel"].astype(str) + ":" + audit["config"].astype(str)).map(used).fillna(0))
    failed = frame[frame["status"] == "error"]
    spills = frame[frame["spill_bytes"].astype(float).fillna(0) > 0]
    if not failed.empty:
        section.items.append(Text(f"{len(failed)} kernel configs failed to compile.", warn=True))
    if not spills.empty:
        section.items.append(Text(f"{len(spills)} kernel configs spill registers.", warn=True))
    too_big = frame[frame["status"].astype(str).str.startswith("smem>")]  # the audit judged it by its own table
    if not too_big.empty:
        kernels = ", ".join(sorted(set(too_big["kernel"].astype(str))))
        limits = ", ".join(sorted({f"{t}: {int(s.removeprefix('smem>')) // 1024} KiB"
                                   for t, s in zip(too_big["target"], too_big["status"], strict=True)}))  # fmt: skip
        section.items.append(
            Text(
                f"{len(too_big)} kernel configs need more shared memory than one block may have on their target "
                f"({limits}), so cannot launch there: {kernels}.",
                warn=True,
            )
        )
    names = {
        "kernel": "kernel",
        "target": "target",
        "configs": "configs",
        "max_registers": "max registers",
        "max_spill_bytes": "max spill bytes",
        "max_shared_kib": "max shared KiB",
        "spilling": "spilling",
        "over_shared": "over shared limit",
        "failed": "failed",
        "tensor_cores": "using tensor cores",
    }
    summary = derive.audit_summary(audit)[list(names)].rename(columns=names)
    section.items.append(
        table(
            summary,
            {"max registers": ".0f", "max spill bytes": ".0f", "max shared KiB": ".0f"},
            "Per kernel and target, over its compiled configs; tensor cores: mma or wgmma present.",
        )
    )
    fmt = {
        "registers": ".0f",
        "spill_bytes": ".0f",
        "stack_bytes": ".0f",
        "shared_bytes": ",.0f",
        "cases": ".0f",
        "mma": ".0f",
        "wgmma": ".0f",
    }
    problems = frame[frame["status"] != "ok"]
    if not problems.empty:
        section.items.append(
            table(problems, fmt, "Configs that spill or failed.", fold=f"{len(problems)} configs that spill or failed")
        )
    caption = "mma / wgmma: tensor-core instructions in the compiled code (counts; wgmma is Hopper's, sm_90). "
    caption += "cases: measured cases that ran the config."
    columns = [*AUDIT_FIELDS, "status", "error", "cases"]
    section.items.append(table(frame[columns], fmt, caption, fold=f"Every compiled row ({len(frame)})"))
    section.items.extend(_predicted(audit, cases))
    return section


def _predicted(audit: pd.DataFrame, cases: pd.DataFrame) -> list[Text | Table]:
    """The static model's predictions per workload, labelled as such, beside measured GPU times where they exist."""
    from reports.predicted import predicted

    frame = predicted(audit, cases)
    if frame.empty:
        return []
    gated = frame[frame["gate"].astype(str).str.startswith("miss")] if "gate" in frame else frame.iloc[:0]
    items: list[Text | Table] = []
    if not gated.empty:
        items.append(Text(f"{len(gated)} workloads miss their predicted goal (see the gate column).", warn=True))
    fmt = {c: ".1f" for c in frame.columns if c.startswith(("predicted_us", "measured_us"))}
    fmt.update({c: ".2f" for c in frame.columns if c.startswith(("predicted_frac", "measured/"))})
    fmt.update({"instr_per_weight": ".3f", "waves": ".2f"})
    measured = [c for c in frame.columns if c.startswith("measured_us")]
    ran = bool(frame[measured].notna().any().any()) if measured else False
    caption = (
        "Predicted (static): kernels.audit's model from the sm_90 machine code and datasheet constants, not a "
        "measurement. frac: of the memory roofline or of cuBLAS bf16 (frac_of). "
        + (
            "measured/predicted is the model's calibration on that GPU."
            if ran
            else "No H100/H200 run in these results."
        )
    )
    items.append(table(frame, fmt, caption, fold=f"Predicted (static) per workload ({len(frame)})"))
    return items


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
        measured.latency(cases),
        crossover.section(cases),  # reports/crossover.py: which format at which batch size
        measured.roofline_section(results, cases),
        measured.lora(cases),
        measured.memory(cases),
        measured.finetune(cases),
        measured.quantization(cases),
        measured.telemetry(cases),
        measured.timing(cases),
        _audit(audit, cases),
        _papers(),
        _missing(missing),
    ]
    return out
