"""Figures: each function takes the derived cases (reports.derive) and returns a matplotlib Figure.

No I/O and no arithmetic here: every plotted column is computed in reports.derive or reports.roofline. The
caller picks the rows (a figure is drawn only when its data is present) and encodes the Figure (render.py).
Matplotlib runs on its Agg backend; nothing is shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "crossover_map",
    "history",
    "latency_vs_m",
    "lora_overhead",
    "memory_vs_model",
    "quant_error",
    "roofline",
    "speedup_vs_m",
    "telemetry",
]

HEIGHT = 3.4  # inches per facet
MAX_WRAP = 3  # facets per row


def _seaborn() -> Any:
    """seaborn on the Agg backend with the report's theme."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=0.9)
    # Labels come from results files: "$" in a shape or device name is text, never mathtext to parse.
    matplotlib.rcParams["text.parse_math"] = False
    return sns


def _log_axis(grid_or_ax: Any, axis: str, base: int, steps: bool = True) -> None:
    """A log axis of `base` labelled with plain numbers (1, 4, 16, ...; base 10 also at 2 and
    5 when `steps`) instead of the
    default mathtext powers, which labels from results files cannot use (mathtext is off, see _seaborn)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes: Any = getattr(grid_or_ax, "axes", None)
    for ax in axes.flat if hasattr(axes, "flat") else [grid_or_ax]:
        target = ax.xaxis if axis == "x" else ax.yaxis
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=base)
        target.set_major_locator(LogLocator(base=base, subs=(1.0, 2.0, 5.0) if base == 10 and steps else (1.0,)))
        target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        target.set_minor_formatter(NullFormatter())


def _facets(data: pd.DataFrame, column: str) -> dict[str, object]:
    """Facet arguments: a panel per value of `column`, wrapped; with several runs a panel per (run, value), from
    the `run_<column>` label reports.derive adds."""
    if data["run"].nunique() > 1:
        column = f"run_{column}"
    return {"col": column, "col_wrap": min(MAX_WRAP, max(1, data[column].nunique()))}


def latency_vs_m(cases: pd.DataFrame) -> Figure:
    """Median latency (µs) against M (tokens), a line per precision, a dash style per implementation, a panel per
    shape. cases: matmul rows with M and time_us."""
    sns = _seaborn()
    grid = sns.relplot(
        data=cases,
        x="M",
        y="time_us",
        hue="precision",
        style="impl",
        kind="line",
        markers=True,
        errorbar=None,
        height=HEIGHT,
        aspect=1.25,
        facet_kws={"sharey": False},
        **_facets(cases, "shape"),
    )
    grid.set(xlabel="M (tokens)", ylabel="median latency (µs)")
    _log_axis(grid, "y", 10)
    _log_axis(grid, "x", 4)
    grid.set_titles("{col_name}")
    grid.figure.suptitle("Latency vs M per precision", y=1.02)
    return grid.figure


def speedup_vs_m(cases: pd.DataFrame) -> Figure:
    """qkbench speedup over the best other implementation of the same precision, against M; 1 = parity.
    cases: qkbench rows with M and speedup."""
    sns = _seaborn()
    grid = sns.relplot(
        data=cases,
        x="M",
        y="speedup",
        hue="precision",
        style="shape",
        kind="line",
        markers=True,
        errorbar=None,
        height=HEIGHT,
        aspect=1.25,
        **_facets(cases, "op"),
    )
    grid.set(xlabel="M (tokens)", ylabel="speedup over best baseline (x)")
    _log_axis(grid, "x", 4)
    grid.refline(y=1.0, color="0.3", linestyle="--")
    grid.set_titles("{col_name}")
    grid.figure.suptitle("qkbench speedup vs M per precision", y=1.02)
    return grid.figure


def roofline(cases: pd.DataFrame, ceilings: pd.DataFrame) -> Figure:
    """Achieved TFLOP/s against arithmetic intensity (FLOP/byte), with each run's measured ceilings as lines.
    cases: rows with intensity and tflops; ceilings: reports.roofline.ceilings."""
    sns = _seaborn()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5.0))
    if not ceilings.empty:
        sns.lineplot(data=ceilings, x="intensity", y="tflops", style="ceiling", color="0.25", ax=ax, legend="brief")
    sns.scatterplot(data=cases, x="intensity", y="tflops", hue="precision", style="impl", s=45, ax=ax)
    ax.set(xlabel="arithmetic intensity (FLOP/byte)", ylabel="achieved TFLOP/s")
    _log_axis(ax, "x", 10, steps=False)
    _log_axis(ax, "y", 10)
    ax.set_title("Roofline: achieved vs arithmetic intensity (measured ceilings)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def lora_overhead(cases: pd.DataFrame, y: str = "lora_overhead_pct") -> Figure:
    """LoRA cost against rank, a panel per op and M: `lora_overhead_pct` (over the layer without adapters) or,
    where no base layer was measured, `time_us`. cases: LoRA rows with rank, op_m and `y`."""
    sns = _seaborn()
    label = "overhead over the base layer (%)" if y == "lora_overhead_pct" else "median latency (µs)"
    grid = sns.relplot(
        data=cases,
        x="rank",
        y=y,
        hue="impl",
        style="precision",
        kind="line",
        markers=True,
        errorbar=None,
        height=HEIGHT,
        aspect=1.25,
        facet_kws={"sharey": False},
        **_facets(cases, "op_m"),
    )
    grid.set(xlabel="LoRA rank r", ylabel=label)
    _log_axis(grid, "x", 2)
    grid.set_titles("{col_name}")
    grid.figure.suptitle("LoRA overhead vs rank" if y == "lora_overhead_pct" else "LoRA latency vs rank", y=1.02)
    return grid.figure


def memory_vs_model(cases: pd.DataFrame) -> Figure:
    """Training memory (GB) against model size (billions of parameters), a line per method and rank (full,
    LoRA r, QLoRA r). cases: memory rows with params_b, total_gb and variant (method and rank)."""
    sns = _seaborn()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    sns.lineplot(data=cases, x="params_b", y="total_gb", hue="variant", marker="o", errorbar=None, ax=ax)
    measured = cases.dropna(subset=["measured_gb"])
    if not measured.empty:
        sns.scatterplot(
            data=measured, x="params_b", y="measured_gb", color="black", marker="X", s=70, ax=ax, label="measured"
        )
    ax.set(xlabel="model size (B parameters)", ylabel="training memory (GB)")
    _log_axis(ax, "y", 10)
    _log_axis(ax, "x", 10)
    ax.set_title("Memory vs model size per method (weights, gradients, AdamW states, adapters)")
    fig.tight_layout()
    return fig


def quant_error(cases: pd.DataFrame) -> Figure:
    """Round-trip RMSE against storage bits per parameter, a colour per format, a marker per implementation.
    cases: quantize rows with bits_per_param and rmse."""
    sns = _seaborn()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    sns.scatterplot(data=cases, x="bits_per_param", y="rmse", hue="precision", style="impl", s=80, ax=ax)
    ax.set(xlabel="bits per parameter (incl. constants)", ylabel="round-trip RMSE")
    _log_axis(ax, "y", 10)
    ax.set_title("Quantization error vs bits per parameter")
    fig.tight_layout()
    return fig


def telemetry(cases: pd.DataFrame) -> Figure:
    """NVML samples taken while each case ran: SM clock (MHz) and board power (W) per op and run.
    cases: rows with sm_clock_mhz and power_w."""
    sns = _seaborn()
    import matplotlib.pyplot as plt

    fig, (clock, power) = plt.subplots(1, 2, figsize=(10.0, 4.0))
    sns.stripplot(data=cases, x="op", y="sm_clock_mhz", hue="run", dodge=True, ax=clock)
    sns.stripplot(data=cases, x="op", y="power_w", hue="run", dodge=True, ax=power, legend=False)
    clock.set(xlabel="", ylabel="SM clock (MHz)", title="SM clock while the case ran")
    power.set(xlabel="", ylabel="power (W)", title="Board power while the case ran")
    for ax in (clock, power):
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


def finetune(cases: pd.DataFrame) -> Figure:
    """Training throughput (tokens/s) against peak memory (MB), a colour per stack (impl) and a marker per method
    and rank, a panel per device. cases: finetune rows with tokens_per_s, peak_mb, stack and variant."""
    sns = _seaborn()

    grid = sns.relplot(data=cases, x="peak_mb", y="tokens_per_s", hue="stack", style="variant", s=90,
                       **_facets(cases, "device"))  # fmt: skip
    grid.set_axis_labels("peak memory (MB)", "tokens / s (forward + backward + optimizer)")
    grid.figure.suptitle("Fine-tuning step: throughput vs peak memory", y=1.02)
    return grid.figure


def history(series: pd.DataFrame) -> Figure:
    """Each case's median over the runs, relative to its first run, a panel per machine: the cases with the largest
    steps in colour, the others grey, each step's first point ringed and labelled with its first commit.
    series: reports.history.series (machine, seq, commit, case, relative, line, step)."""
    sns = _seaborn()
    import matplotlib.pyplot as plt

    machines = list(dict.fromkeys(series["machine"]))
    fig, axes = plt.subplots(len(machines), 1, figsize=(10.0, 3.6 * len(machines)), squeeze=False)
    lines = [line for line in dict.fromkeys(series["line"]) if line != "other cases"]
    colours = dict(zip(lines, sns.color_palette("tab10", len(lines)), strict=True))
    for ax, machine in zip(axes[:, 0], machines, strict=True):
        part = series[series["machine"] == machine]
        for (case, line), points in part.groupby(["case", "line"], sort=False):
            grey = line == "other cases"
            ax.plot(
                points["seq"],
                points["relative"],
                color="0.75" if grey else colours[line],
                linewidth=0.7 if grey else 1.6,
                marker="" if grey else "o",
                markersize=3,
                label=None if grey else case,
                zorder=1 if grey else 2,
            )
        marks = part[part["step"]]
        ax.scatter(marks["seq"], marks["relative"], s=80, facecolors="none", edgecolors="crimson", zorder=3)
        for seq, relative, commit in zip(marks["seq"], marks["relative"], marks["commit"], strict=True):
            ax.annotate(commit, (seq, relative), textcoords="offset points", xytext=(4, 6), fontsize=7, color="crimson")
        ticks = part.drop_duplicates("seq")
        every = max(1, len(ticks) // 20)  # at most ~20 commit labels
        ax.set_xticks(ticks["seq"].iloc[::every], ticks["commit"].iloc[::every], rotation=45, ha="right", fontsize=7)
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.8)
        ax.set(xlabel="run (commit), oldest first", ylabel="median / first run's", title=machine)
        if lines:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    fig.suptitle("Median per case over the runs (circled: the first run of a step)", y=1.0)
    fig.tight_layout()
    return fig


def crossover_map(crossovers: pd.DataFrame) -> Figure:
    """Per run and reference, a map of format x layer shape coloured by the M at which the format stops beating
    the reference (log2 scale), each cell labelled with that M ("> 4096": wins at every M measured, "≤ 16": loses
    from the smallest M measured, "never": wins at no M from 1 on). crossovers: reports.crossover.crossovers
    (panel, format, shape, map_log2_m, map_text)."""
    sns = _seaborn()
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = list(dict.fromkeys(crossovers["panel"]))
    wrap = min(2, len(panels))
    rows = -(-len(panels) // wrap)
    height = max(2.8, 1.4 + 0.5 * crossovers["format"].nunique())  # inches a row of panels: room for the labels
    # constrained layout: long shape labels from a results file shrink the cells instead of breaking the layout
    fig, axes = plt.subplots(rows, wrap, figsize=(6.5 * wrap, height * rows), squeeze=False, layout="constrained")
    low, high = crossovers["map_log2_m"].min(), crossovers["map_log2_m"].max()
    for ax, panel in zip(axes.flat, panels, strict=False):
        part = crossovers[crossovers["panel"] == panel]
        values = part.pivot_table(index="format", columns="shape", values="map_log2_m", aggfunc="first")
        labels = part.pivot_table(index="format", columns="shape", values="map_text", aggfunc="first")
        sns.heatmap(
            values,
            annot=labels.reindex_like(values).fillna(""),
            fmt="",
            cmap="viridis",
            vmin=low,
            vmax=high,
            cbar_kws={"label": "crossover M", "format": FuncFormatter(lambda v, _: f"{2**v:g}")},
            linewidths=0.5,
            ax=ax,
        )
        ax.set(xlabel="layer shape", ylabel="", title=textwrap.fill(panel, 70))
        ax.set_xticks(ax.get_xticks(), [textwrap.fill(str(c), 22) for c in values.columns], rotation=0)
        ax.set_yticks(ax.get_yticks(), [textwrap.fill(str(i), 28) for i in values.index], rotation=0)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.suptitle("Crossover M: the batch size from which each format no longer beats the reference")
    return fig
