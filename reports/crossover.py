"""Crossover maps: per device (run) and layer shape, the batch size M at which each quantized format stops beating
bf16 cuBLAS (the matmul suite's torch bf16 case) and bitsandbytes' kernel of the same format.

From the matmul suite's timed `ok` cases, for each quantized (impl, precision) and each reference, over the M both
measured: the speedup is reference time / format time; the format "wins" where it is above 1. `wins up to` is the
largest M up to which it wins at every M measured; `loses from` the first M where it does not; the crossover M is
the point between those two where the speedup, interpolated linearly in log M and log speedup, crosses 1. A format
that wins at every M has no crossover (shown "> largest M"); one that loses from the smallest M shows "≤ smallest
M", or "never" when that is M = 1 and it wins at no M measured. When it wins again at a larger M, that is named
(`wins again at`, * in the map). No tolerance: a speedup of 1.01 wins.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from reports.render import Section, Text, png, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["QUANTIZED", "crossovers", "section"]

QUANTIZED = ("nf4", "nf4-dq", "fp4", "fp4-dq", "int8")  # weight formats; fp32/fp16/bf16 are the dense ones
CUBLAS = ("torch", "bf16")  # the reference every format is held against
COLUMNS = [
    "panel",
    "run",
    "device",
    "shape",
    "format",
    "versus",
    "M measured",
    "wins up to",
    "loses from",
    "crossover M",
    "wins again at",
    "speedup at smallest M",
    "speedup at largest M",
    "map_log2_m",
    "map_text",
]


def _crossing(speedup: pd.Series) -> dict[str, Any]:
    """The crossover of one format against one reference; speedup: indexed by M (ascending), reference / format."""
    ms = [int(m) for m in speedup.index]
    wins = [bool(s > 1) for s in speedup]
    up_to = None
    for m, win in zip(ms, wins, strict=True):
        if not win:
            break
        up_to = m
    losing = [m for m, win in zip(ms, wins, strict=True) if not win]
    loses_from = losing[0] if losing else None
    again = [m for m, win in zip(ms, wins, strict=True) if win and loses_from is not None and m > loses_from]
    crossover = math.nan
    if up_to is not None and loses_from is not None:
        s_a, s_b = math.log(speedup.loc[up_to]), math.log(speedup.loc[loses_from])
        x_a, x_b = math.log(up_to), math.log(loses_from)
        crossover = math.exp(x_a + s_a * (x_b - x_a) / (s_a - s_b))  # s_a > 0 >= s_b
    if loses_from is None:
        value, text = math.log2(ms[-1]) + 1, f"> {ms[-1]}"
    elif up_to is None:  # stops at or before the smallest M measured
        value, text = math.log2(ms[0]) - 1, "never" if ms[0] == 1 and not again else f"≤ {ms[0]}"
    else:
        value, text = math.log2(crossover), f"{crossover:.0f}" if crossover >= 10 else f"{crossover:.2g}"
    return {
        "M measured": f"{ms[0]} to {ms[-1]} ({len(ms)})",
        "wins up to": up_to,
        "loses from": loses_from,
        "crossover M": crossover,
        "wins again at": ", ".join(map(str, again)) or None,
        "speedup at smallest M": float(speedup.iloc[0]),
        "speedup at largest M": float(speedup.iloc[-1]),
        "map_log2_m": value,
        "map_text": text + (" *" if again else ""),
    }


def crossovers(cases: pd.DataFrame) -> pd.DataFrame:
    """A row per (run, shape, quantized format, reference): where the format stops beating the reference (the module
    docstring's rule); `panel` labels the figure's panel (device, or run and device with several runs, and the
    reference kind). cases: load's or derive's cases (group, run, device, shape, M, impl, precision, status, time_s).
    Empty (with the columns) when no format and reference share an M."""
    import pandas as pd

    timed = cases[
        (cases["group"] == "matmul") & (cases["status"] == "ok") & cases["time_s"].notna() & cases["M"].notna()
    ]
    several = timed["run"].nunique() > 1
    rows = []
    for (run, device, shape), part in timed.groupby(["run", "device", "shape"], observed=True, sort=False):
        times = part.pivot_table(index="M", columns=["impl", "precision"], values="time_s", aggfunc="median")
        times = times.sort_index()
        where = f"{run}: {device}" if several else str(device)
        for impl, precision in times.columns:
            if precision not in QUANTIZED:
                continue
            references = [(CUBLAS, "cuBLAS bf16 (torch)")]
            if impl != "bitsandbytes":
                references.append((("bitsandbytes", precision), f"bitsandbytes {precision}"))
            for key, versus in references:
                if key not in times.columns:
                    continue
                speedup = (times[key] / times[(impl, precision)]).dropna()
                if speedup.empty:
                    continue
                kind = "cuBLAS bf16" if key == CUBLAS else "bitsandbytes, same format"
                rows.append(
                    {
                        "panel": f"{where} — vs {kind}",
                        "run": run,
                        "device": device,
                        "shape": shape,
                        "format": f"{impl} {precision}",
                        "versus": versus,
                        **_crossing(speedup),
                    }
                )
    return pd.DataFrame(rows, columns=COLUMNS)


def section(cases: pd.DataFrame) -> Section:
    """The report's crossover section: the map (figure) and the table; a note when the matmul suite gave no pair."""
    from reports import plots

    section = Section("crossover", "Crossover: which format at which batch size")
    frame = crossovers(cases)
    if frame.empty:
        section.items.append(
            Text("No crossover: these results have no quantized matmul case and reference timed at the same M.")
        )
        return section
    section.items.append(png(plots.crossover_map(frame), "crossover.png", "Crossover M per format and layer shape"))
    shown = frame.drop(columns=["panel", "map_log2_m", "map_text"])
    if shown["run"].nunique() < 2:
        shown = shown.drop(columns="run")
    caption = (
        "Speedup = reference time / format time at the same M; the format wins above 1. Crossover M: where the "
        "speedup, interpolated in log M and log speedup between 'wins up to' and 'loses from', crosses 1 (none: it "
        "wins at every M measured, or loses from the smallest). In the map, * marks a format that wins again at a "
        "larger M."
    )
    fmt = {
        "wins up to": ".0f",
        "loses from": ".0f",
        "crossover M": ".3g",
        "speedup at smallest M": ".2f",
        "speedup at largest M": ".2f",
    }
    section.items.append(table(shown, fmt, caption))
    return section
