"""Comparing runs: the first run is the baseline; every other run's cases get ratios against it.

A ratio is value / baseline value; for every metric compared here lower is better, so a ratio above
1 + threshold is a regression (slower, more memory, larger error); a slowdown also has to exceed the wider of
the two runs' interquartile ranges, so timing noise is not flagged. A case that was `ok` in the baseline and is
not `ok` (error, oom, skipped) in a later run is a regression too; one that vanished is listed as missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["COMPARED", "Comparison", "case_label", "compare"]

COMPARED = ("time_s", "peak_mem_bytes", "err_rel")  # lower is better for each


@dataclass(frozen=True)
class Comparison:
    """Side-by-side times (a row per case, a column per run plus ratios), a per-group summary of the ratios, and
    the flagged regressions."""

    baseline: str
    side_by_side: pd.DataFrame
    summary: pd.DataFrame
    regressions: pd.DataFrame
    improvements: int
    threshold: float
    devices_differ: bool


def case_label(frame: pd.DataFrame) -> pd.Series:
    """A readable case name: op impl precision shape [M=..] [r=..] [method]."""
    import pandas as pd

    parts = frame["op"].astype(str) + " " + frame["impl"].astype(str) + " " + frame["precision"].astype(str)
    parts = parts + " " + frame["shape"].astype(str)
    parts = parts + frame["M"].map(lambda m: "" if pd.isna(m) else f" M={m}")
    parts = parts + frame["rank"].map(lambda r: "" if pd.isna(r) else f" r={r}")
    return parts + frame["method"].map(lambda m: f" {m}" if isinstance(m, str) else "")


def _within_noise(noise: pd.DataFrame, times: pd.DataFrame, base: str, run: str) -> pd.Series:
    """Cases whose slowdown is no larger than the wider of the two runs' IQRs (False where no IQR was recorded)."""
    if base not in noise.columns or run not in noise.columns:
        return times[run] != times[run]  # all False
    spread = noise[[base, run]].max(axis=1).reindex(times.index)
    return (times[run] - times[base]) <= spread


def _summary(side: pd.DataFrame, base: str, others: list[str]) -> pd.DataFrame:
    """Per group and run: cases timed in both, the geometric mean of the time ratios, the best and worst ratio."""
    import numpy as np
    import pandas as pd

    rows = []
    for run in others:
        ratios = side[["group", f"{run} / {base}"]].dropna().rename(columns={f"{run} / {base}": "ratio"})
        for group, part in ratios.groupby("group", sort=True):
            rows.append(
                {
                    "run": run,
                    "group": group,
                    "cases": len(part),
                    "geomean ratio": float(np.exp(np.log(part["ratio"]).mean())),
                    "best ratio": part["ratio"].min(),
                    "worst ratio": part["ratio"].max(),
                }
            )
    return pd.DataFrame(rows, columns=["run", "group", "cases", "geomean ratio", "best ratio", "worst ratio"])


def compare(cases: pd.DataFrame, runs: list[str], threshold: float = 0.05) -> Comparison:
    """Ratios of every run against `runs[0]` on matching cases (same CASE_KEY), regressions past `threshold`.

    Raises:
        ValueError: fewer than two runs, or a negative threshold.
    """
    import pandas as pd

    if len(runs) < 2:
        raise ValueError(f"runs: {runs!r}; comparing needs at least two")
    if threshold < 0:
        raise ValueError(f"threshold: {threshold!r}; expected a fraction >= 0 (0.05 is 5%)")
    base, others = runs[0], runs[1:]
    keyed = cases.assign(case=case_label(cases))
    keyed["run"] = keyed["run"].astype(str)
    # One string key per case: pivoting on CASE_KEY itself would drop the cases whose M or rank is missing.
    keys = "case"
    group_of = keyed.drop_duplicates("case").set_index("case")["group"]
    wide = keyed.pivot_table(index=keys, columns="run", values="time_s", aggfunc="first", observed=True)
    wide = wide.reindex(columns=runs).dropna(how="all")
    side = wide.reset_index()[["case"]].copy()
    side.insert(0, "group", group_of.reindex(wide.index).to_numpy())
    for run in runs:
        side[f"{run} time_us"] = wide[run].to_numpy() * 1e6
    for run in others:
        side[f"{run} / {base}"] = (wide[run] / wide[base]).to_numpy()
    summary = _summary(side, base, others)

    noise = keyed.pivot_table(index=keys, columns="run", values="time_iqr_s", aggfunc="first", observed=True)
    flagged = []
    improvements = 0
    for metric in COMPARED:
        values = keyed.pivot_table(index=keys, columns="run", values=metric, aggfunc="first", observed=True)
        if base not in values.columns:
            continue
        for run in others:
            if run not in values.columns:
                continue
            ratio = values[run] / values[base]
            worse = ratio > 1 + threshold
            if metric == "time_s":
                improvements += int((ratio < 1 - threshold).sum())
                worse &= ~_within_noise(noise, values, base, run)
            for key, value in ratio[worse].items():
                flagged.append(
                    {
                        "run": run,
                        "case": key,
                        "metric": metric,
                        "baseline": values.loc[key, base],
                        "value": values.loc[key, run],
                        "ratio": value,
                    }
                )
    status = keyed.pivot_table(index=keys, columns="run", values="status", aggfunc="first", observed=True)
    if base in status.columns:
        for run in others:
            if run not in status.columns:
                continue
            broke = status[(status[base] == "ok") & status[run].notna() & (status[run] != "ok")]
            flagged += [
                {
                    "run": run,
                    "case": key,
                    "metric": f"status ok → {row[run]}",
                    "baseline": None,
                    "value": None,
                    "ratio": None,
                }
                for key, row in broke.iterrows()
            ]
            gone = status[(status[base] == "ok") & status[run].isna()]
            flagged += [
                {"run": run, "case": key, "metric": "case missing", "baseline": None, "value": None, "ratio": None}
                for key in gone.index
            ]
    regressions = pd.DataFrame(flagged, columns=["run", "case", "metric", "baseline", "value", "ratio"])
    regressions = regressions.sort_values("ratio", ascending=False, na_position="first", kind="stable")
    devices = cases.drop_duplicates("run")["device"].nunique()
    return Comparison(base, side, summary, regressions.reset_index(drop=True), improvements, threshold, devices > 1)
