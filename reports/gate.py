"""The regression gate: BASE against NEW, case by case, SAME / FASTER / SLOWER / INCONCLUSIVE from the raw rounds.

Rule (`judge`), for each case timed in both runs:
- p: the two-sided Mann–Whitney U test of BASE's rounds against NEW's (pytest-benchmark's `stats.data`), by the
  normal approximation with the tie correction and a continuity correction (what
  `scipy.stats.mannwhitneyu(method="asymptotic")` computes; asv tests commits the same way);
- the effect: the ratio of the medians of the rounds, NEW / BASE;
- SLOWER when p < ALPHA (0.01) and NEW's median is at least (1 + threshold) x BASE's; FASTER when p < ALPHA and
  BASE's median is at least (1 + threshold) x NEW's (the threshold is symmetric in ratio); SAME when the change is
  below the threshold, significant or not; INCONCLUSIVE when a change past the threshold is not significant, and
  for every case the test cannot judge: missing from a run, not `ok` in one, no raw rounds, timed by different
  timers, or so few rounds that even two fully separated samples could not reach p < ALPHA (with the normal
  approximation both runs need 6 rounds or more). Each INCONCLUSIVE verdict says why.
Cases timed in neither run (the memory group, cases skipped in both) are not gated, only counted. The rounds of
one run are taken as independent draws: a shift that moves a whole run (another clock, a noisy neighbour) is not
in the test, which is why the effect must also pass the threshold. `python -m reports BASE NEW
--fail-on-regression 5%` exits 1 when any case is SLOWER (0 otherwise), the verdicts first in the report and on
stdout; a difference in how the two runs measured (timer, flush, stopping rule, clocks, power limit) is said at the
top, since it can move every case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reports.compare import case_label
from reports.render import Section, Text, table

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd

    from reports.load import Results

__all__ = ["ALPHA", "VERDICTS", "Gate", "MannWhitney", "flags", "judge", "mann_whitney_u", "parse_threshold", "text"]

ALPHA = 0.01  # p below which a change is significant
VERDICTS = ("SLOWER", "INCONCLUSIVE", "FASTER", "SAME")  # in the order the tables list them
GPU_SETTINGS = (  # machine_info qkbench.gpu keys that change how fast the same code runs
    "sm_clock_max_mhz",
    "mem_clock_max_mhz",
    "sm_clock_default_mhz",
    "mem_clock_default_mhz",
    "sm_clock_applications_mhz",
    "power_limit_w",
    "ecc",
    "mig",
)
RELATIVE = 1e-9  # a ratio within this of the threshold counts as reaching it (rounds scaled by exactly 1 + t)


@dataclass(frozen=True)
class MannWhitney:
    """A Mann–Whitney U test: U of the first sample (its rank sum less n1 (n1 + 1) / 2), z, two-sided p."""

    u: float
    z: float
    p: float


def _normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """The two-sided Mann–Whitney U test of samples `a` and `b` by the normal approximation, tie and continuity
    corrected: z = (max(U1, U2) - n1 n2 / 2 - 1/2) / sigma, sigma^2 = n1 n2 / 12 ((n + 1) - sum(t^3 - t) / (n (n - 1)))
    over the tied groups t, p = 2 P(Z > z) capped at 1; p = 1 when every value is tied.

    a, b: 1-D samples of finite numbers (any length >= 1).

    Raises:
        ValueError: an empty sample or a non-finite value (named `a` or `b`).
    """
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    for name, sample in (("a", x), ("b", y)):
        if sample.size == 0:
            raise ValueError(f"{name}: an empty sample; expected at least one value")
        if not np.isfinite(sample).all():
            raise ValueError(f"{name}: {sample[~np.isfinite(sample)][:3].tolist()} ...; expected finite values")
    n1, n2 = x.size, y.size
    n = n1 + n2
    _, inverse, counts = np.unique(np.concatenate([x, y]), return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their mean rank
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    ties = float((counts.astype(np.float64) ** 3 - counts).sum())
    variance = n1 * n2 / 12.0 * ((n + 1) - (ties / (n * (n - 1)) if n > 1 else 0.0))
    if variance <= 0:
        return MannWhitney(u1, 0.0, 1.0)
    z = (max(u1, n1 * n2 - u1) - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return MannWhitney(u1, z, min(1.0, 2.0 * _normal_sf(z)))


def reachable(n1: int, n2: int, alpha: float = ALPHA) -> bool:
    """Whether n1 and n2 rounds can give p < alpha at all: their p when the samples are fully separated, no ties."""
    if n1 < 1 or n2 < 1:
        return False
    z = (n1 * n2 / 2.0 - 0.5) / math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12.0)
    return 2.0 * _normal_sf(z) < alpha


def parse_threshold(text: str) -> float:
    """--fail-on-regression's value as a fraction: "5%" -> 0.05, "0.05" -> 0.05.

    Raises:
        ValueError: not a number, not finite, not above 0, or a bare number >= 1 (write "100%" for a doubling).
    """
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        value = math.nan
    value = value / 100 if percent else value
    if not math.isfinite(value) or value <= 0 or (not percent and value >= 1):
        raise ValueError(f"--fail-on-regression: {text!r}; expected a slowdown above 0 as a percent (5%) or fraction")
    return value


@dataclass(frozen=True)
class Gate:
    """The gate's verdicts: a row per case (label, group, verdict, medians, ratio, p, rounds, reason)."""

    base: str
    new: str
    threshold: float
    alpha: float
    verdicts: pd.DataFrame
    untimed: int  # cases timed in neither run, not gated
    differences: list[str] = field(default_factory=list)  # how the two runs' method, timer or clocks differ

    def count(self, verdict: str) -> int:
        """How many cases got `verdict`."""
        return int((self.verdicts["verdict"] == verdict).sum())

    @property
    def failed(self) -> bool:
        """True when any case is SLOWER: the exit code is 1."""
        return self.count("SLOWER") > 0


def _describe(value: Any) -> str:
    return "not recorded" if value is None else str(value)


def differences(runs: pd.DataFrame) -> list[str]:
    """How the first two runs of `runs` (load's run frame) measured differently: device, timing method (timer,
    flush, stopping rule, ...), GPU clocks and settings; one line per difference, empty when they match."""
    base, new = (runs.iloc[i] for i in (0, 1))
    names = f"{base['run']} / {new['run']}"
    out = []
    if base.get("device") != new.get("device"):
        out.append(f"device: {_describe(base.get('device'))} / {_describe(new.get('device'))} ({names})")
    for column, keys in (("timing_method", None), ("gpu", GPU_SETTINGS)):
        one, two = base.get(column), new.get(column)
        if not isinstance(one, dict) or not isinstance(two, dict):
            if isinstance(one, dict) != isinstance(two, dict):
                out.append(f"{column}: recorded in one run only ({names})")
            continue
        for key in keys or sorted(set(one) | set(two)):
            if one.get(key) != two.get(key):
                out.append(f"{column} {key}: {_describe(one.get(key))} / {_describe(two.get(key))} ({names})")
    return out


def _timed(row: pd.Series | None) -> bool:
    import pandas as pd

    return row is not None and row["status"] == "ok" and not pd.isna(row["time_s"])


Verdict = tuple[str, float | None, float | None, float | None, float | None, str]


def _verdict(
    base: pd.Series | None, new: pd.Series | None, names: tuple[str, str], threshold: float, alpha: float
) -> Verdict:
    """(verdict, base median, new median, ratio, p, reason) of one case."""
    import numpy as np

    nothing = (None, None, None, None)
    for row, name, other in ((base, names[0], new), (new, names[1], base)):
        if row is None:
            return ("INCONCLUSIVE", *nothing, f"not in {name}")
        if row["status"] != "ok":
            return ("INCONCLUSIVE", *nothing, f"{row['status']} in {name}")
        if not _timed(row) and _timed(other):
            return ("INCONCLUSIVE", *nothing, f"not timed in {name}")
    assert base is not None and new is not None
    for row, name in ((base, names[0]), (new, names[1])):
        if not isinstance(row["rounds_s"], tuple) or len(row["rounds_s"]) < 2:
            return ("INCONCLUSIVE", *nothing, f"no raw rounds (stats.data) in {name}")
    if isinstance(base["timer"], str) and isinstance(new["timer"], str) and base["timer"] != new["timer"]:
        return ("INCONCLUSIVE", *nothing, f"timed by {base['timer']} in {names[0]}, {new['timer']} in {names[1]}")
    a, b = base["rounds_s"], new["rounds_s"]
    median_a, median_b = float(np.median(a)), float(np.median(b))
    ratio = median_b / median_a if median_a > 0 else math.inf
    if not reachable(len(a), len(b), alpha):
        reason = f"{len(a)} and {len(b)} rounds cannot reach p < {alpha:g} (6 or more a run)"
        return ("INCONCLUSIVE", median_a, median_b, ratio, None, reason)
    p = mann_whitney_u(a, b).p
    bar = (1 + threshold) * (1 - RELATIVE)
    past = ratio >= bar or (ratio > 0 and 1 / ratio >= bar)
    if not past:
        return ("SAME", median_a, median_b, ratio, p, "")
    if p >= alpha:
        change = f"{100 * (ratio - 1):+.1f}%"
        return ("INCONCLUSIVE", median_a, median_b, ratio, p, f"a {change} change, not significant (p ≥ {alpha:g})")
    return ("SLOWER" if ratio > 1 else "FASTER", median_a, median_b, ratio, p, "")


def judge(results: Results, threshold: float, alpha: float = ALPHA) -> Gate:
    """The gate's verdict on every case of the two runs in `results` (reports.load.load([BASE, NEW])).

    Raises:
        ValueError: not exactly two runs, a threshold not above 0 or not finite, an alpha outside (0, 1).
    """
    import pandas as pd

    runs = [str(r) for r in results.runs["run"]]
    if len(runs) != 2:
        raise ValueError(f"runs: {runs!r}; the gate compares exactly two (BASE NEW)")
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold: {threshold!r}; expected a finite fraction > 0 (0.05 is 5%)")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: {alpha!r}; expected a p-value bar in (0, 1)")
    cases = results.cases.assign(case=case_label(results.cases), run=results.cases["run"].astype(str))
    by_run = {
        run: {str(n): row for n, row in part.drop_duplicates("name").set_index("name").iterrows()}
        for run, part in cases.groupby("run", observed=True)
    }
    base, new = by_run.get(runs[0], {}), by_run.get(runs[1], {})
    rows, untimed = [], 0
    for name in dict.fromkeys([*base, *new]):
        one, two = base.get(name), new.get(name)
        if (
            not _timed(one)
            and not _timed(two)
            and all(r is None or r["status"] in ("ok", "skipped") for r in (one, two))
        ):
            untimed += 1  # memory cases, cases skipped in both: nothing to gate
            continue
        known = one if one is not None else two
        assert known is not None
        verdict, median_a, median_b, ratio, p, reason = _verdict(one, two, (runs[0], runs[1]), threshold, alpha)
        rows.append(
            {
                "case": known["case"],
                "group": known["group"],
                "verdict": verdict,
                "base_us": None if median_a is None else median_a * 1e6,
                "new_us": None if median_b is None else median_b * 1e6,
                "ratio": ratio,
                "p": p,
                "rounds": "/".join(
                    str(len(r["rounds_s"])) if r is not None and isinstance(r["rounds_s"], tuple) else "—"
                    for r in (one, two)
                ),
                "reason": reason,
            }
        )
    frame = pd.DataFrame(
        rows, columns=["case", "group", "verdict", "base_us", "new_us", "ratio", "p", "rounds", "reason"]
    )
    order = frame["verdict"].map({v: i for i, v in enumerate(VERDICTS)})
    frame = frame.assign(_order=order).sort_values(["_order", "ratio"], ascending=[True, False], kind="stable")
    frame = frame.drop(columns="_order").reset_index(drop=True)
    return Gate(runs[0], runs[1], threshold, alpha, frame, untimed, differences(results.runs))


def _summary(gate: Gate) -> str:
    counts = ", ".join(f"{gate.count(v)} {v}" for v in VERDICTS)
    return (
        f"Regression gate, {gate.new} against {gate.base}: {counts} (threshold {100 * gate.threshold:g}%, "
        f"Mann-Whitney U p < {gate.alpha:g}); {gate.untimed} cases timed in neither run not gated."
    )


def flags(gate: Gate) -> list[Text]:
    """The lines at the top of the report: the gate's outcome, then how the runs measured differently."""
    out = [
        Text(
            ("GATE FAILED: " if gate.failed else "Gate passed: ") + _summary(gate) + " See 'Regression gate'.",
            warn=gate.failed,
        )
    ]
    if gate.differences:
        out.append(
            Text(
                "The two runs measured differently, which can move every case: " + "; ".join(gate.differences) + ".",
                warn=True,
            )
        )
    return out


COLUMNS = {
    "case": "case",
    "group": "group",
    "verdict": "verdict",
    "base_us": "base µs",
    "new_us": "new µs",
    "ratio": "new / base",
    "p": "p",
    "rounds": "rounds (base/new)",
    "reason": "why",
}
FORMATS = {"base µs": ".4g", "new µs": ".4g", "new / base": ".3f", "p": ".2g"}


def section(gate: Gate) -> Section:
    """The report's first section: the outcome, the cases that are not SAME, then every verdict folded."""
    section = Section("gate", "Regression gate")
    section.items.append(Text(_summary(gate), warn=gate.failed))
    frame = gate.verdicts.rename(columns=COLUMNS)
    changed = frame[frame["verdict"] != "SAME"]
    caption = (
        f"SLOWER / FASTER: p < {gate.alpha:g} (two-sided Mann-Whitney U on the raw rounds) and a ratio of medians "
        f"past {1 + gate.threshold:g} (or below 1 / {1 + gate.threshold:g}); SAME: a change below the threshold; "
        "INCONCLUSIVE: the reason is given. Ratio > 1: slower in the new run."
    )
    if not changed.empty:
        section.items.append(table(changed, FORMATS, caption))
    else:
        section.items.append(Text("Every gated case is SAME."))
    section.items.append(table(frame, FORMATS, caption, fold=f"Every verdict ({len(frame)} cases)"))
    return section


def text(gate: Gate) -> str:
    """The verdicts as plain text for stdout: the summary, the differences, then a row per case."""
    from reports.render import cell

    frame = gate.verdicts.rename(columns=COLUMNS)
    rows = [list(frame.columns)]
    rows += [
        [cell(v, FORMATS.get(c, "")) for c, v in zip(frame.columns, record, strict=True)]
        for record in frame.itertuples(index=False, name=None)
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [_summary(gate)]
    lines += [f"note: the runs measured differently: {line}" for line in gate.differences]
    lines += ["  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append("gate: FAILED (a case is SLOWER)" if gate.failed else "gate: passed (no case is SLOWER)")
    return "\n".join(lines)
