"""History across commits: every run's cases appended to a SQLite store; each case's median over the runs of one
machine, and its steps.

Store (`append`; `python -m suites` appends each run to <out>/history.sqlite): table `runs`, a row per results file
(machine, commit, dirty, date, profile, file, when appended), and table `cases`, a row per case and run (pytest
name, readable label, group, status, median and IQR in seconds, rounds, the relative noise the case reached). A
run is its (machine, date): appending the same results again adds nothing. The machine is the device's name
(machine_info qkbench.device), so runs on identical devices form one series whatever host they ran on.

Steps (`steps`), per (machine, case), its `ok` runs in date order, on log(median):
- sigma, the noise: the larger of the series' run-to-run scatter, 1.4826 x median |log m(i+1) - log m(i)| / sqrt 2
  (the consecutive differences' MAD, so the steps themselves barely move it), and the median relative noise the
  runs reported for the case (`noise`, the standard error of its median);
- the level: the median of the last LEVEL (5) points since the previous step (or the first point);
- point i starts a step when it and the PERSIST - 1 (2) points after it all lie more than max(K x sigma,
  log(1 + MIN_CHANGE)) from the level (K = 3, MIN_CHANGE = 2%), on the same side: a change larger than the noise
  that persists. A lone outlier is no step, and a change in the last PERSIST - 1 points is not one yet. The step's
  size is the median of those PERSIST points over the level; its first commit is point i's (the change lies
  between it and the commit before); after a step the level starts again at point i. A slow drift shows as a
  staircase of steps.
"""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reports.load import ReportError
from reports.render import Section, Text, png, table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LEVEL", "MIN_CHANGE", "PERSIST", "K", "append", "read", "section", "series", "steps", "write_report"]

PERSIST = 3  # points a change must hold, the first included
LEVEL = 5  # points before a candidate whose median is the level it is held against
K = 3.0  # a step is more than K sigma from the level ...
MIN_CHANGE = 0.02  # ... and more than 2%
COLOURED = 8  # the largest steps drawn in colour; other cases grey
MAD_SIGMA = 1.4826  # a normal distribution's sigma per median absolute deviation
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, machine TEXT NOT NULL, git_commit TEXT, dirty INTEGER, date TEXT NOT NULL,
    profile TEXT, file TEXT, added TEXT NOT NULL, UNIQUE (machine, date));
CREATE TABLE IF NOT EXISTS cases (
    run INTEGER NOT NULL REFERENCES runs (id), name TEXT NOT NULL, label TEXT NOT NULL, grp TEXT, status TEXT,
    median_s REAL, iqr_s REAL, rounds INTEGER, noise REAL, PRIMARY KEY (run, name));
"""


def _connect(db: Path, create: bool) -> sqlite3.Connection:
    """An open store with its tables; ReportError when `db` is not one."""
    if not create and not db.is_file():
        raise ReportError(f"{db}: no such history store (python -m suites writes <out>/history.sqlite)")
    if db.is_dir():
        raise ReportError(f"{db}: is a directory, expected a history store (SQLite file)")
    try:
        connection = sqlite3.connect(db)
        connection.executescript(SCHEMA)
        columns = {row[1] for row in connection.execute("PRAGMA table_info(cases)")}
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{db}: not a history store ({exc})") from None
    if not {"run", "name", "median_s", "noise"} <= columns:
        connection.close()
        raise ReportError(f"{db}: a SQLite file whose 'cases' table is not a history store's")
    return connection


def append(results: str | Path, db: str | Path) -> int:
    """Append one results file's run (machine, commit, date) and its cases to the store `db` (created if absent);
    return the cases added: 0 when that run (machine and date) is already there.

    Raises:
        ReportError: an unreadable results file (reports.load.load's errors), or `db` that is not a history store.
    """
    from reports.compare import case_label
    from reports.load import load

    loaded = load([results])
    run = loaded.runs.iloc[0]
    machine = run["device"] if isinstance(run["device"], str) else "unknown device"
    added = datetime.now(UTC).isoformat(timespec="seconds")
    date = run["date"] if isinstance(run["date"], str) and run["date"] else added
    cases = loaded.cases.assign(label=case_label(loaded.cases))
    try:
        return _insert(Path(db), machine, date, added, run, cases, str(results))
    except sqlite3.Error as exc:  # locked, read-only, full
        raise ReportError(f"{db}: cannot append to the history store ({exc})") from None


def _insert(db: Path, machine: str, date: str, added: str, run: pd.Series, cases: pd.DataFrame, file: str) -> int:
    """The rows of one run, in one transaction; the cases added."""
    with closing(_connect(db, create=True)) as connection, connection:
        cursor = connection.execute(
            "INSERT OR IGNORE INTO runs (machine, git_commit, dirty, date, profile, file, added) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (machine, run["git_commit"], _bool(run["dirty"]), date, run["profile"], file, added),
        )
        if cursor.rowcount == 0:
            return 0
        rows = [
            (
                cursor.lastrowid,
                str(case["name"]),
                str(case["label"]),
                case["group"],
                case["status"],
                _real(case["time_s"]),
                _real(case["time_iqr_s"]),
                len(case["rounds_s"]) if isinstance(case["rounds_s"], tuple) else None,
                _real(case["noise"]),
            )
            for _, case in cases.iterrows()
        ]
        connection.executemany("INSERT OR IGNORE INTO cases VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return len(rows)


def _bool(value: object) -> int | None:
    return int(value) if isinstance(value, bool) else None


def _real(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def read(db: str | Path) -> pd.DataFrame:
    """The store's timed points: a row per (run, case) with status ok and a median, sorted by machine, date and case;
    `seq` numbers each machine's runs in date order (0, 1, ...).

    Raises:
        ReportError: `db` missing or not a history store.
    """
    import pandas as pd

    query = (
        "SELECT r.id AS run, r.machine, r.git_commit, r.dirty, r.date, r.profile, c.name, c.label AS 'case', "
        "c.grp AS 'group', c.median_s, c.iqr_s, c.rounds, c.noise FROM cases c JOIN runs r ON r.id = c.run "
        "WHERE c.status = 'ok' AND c.median_s > 0"
    )
    with closing(_connect(Path(db), create=False)) as connection:
        points = pd.read_sql_query(query, connection)
    points["when"] = pd.to_datetime(points["date"], utc=True, errors="coerce", format="ISO8601")
    runs = points[["machine", "run", "when"]].drop_duplicates("run")
    runs = runs.sort_values(["machine", "when", "run"], na_position="first", kind="stable")
    runs["seq"] = runs.groupby("machine").cumcount()
    points = points.merge(runs[["run", "seq"]], on="run")
    points = points.sort_values(["machine", "seq", "case"], kind="stable").reset_index(drop=True)
    points["commit"] = points["git_commit"].map(lambda c: c[:10] if isinstance(c, str) and c else "unknown")
    return points


def _sigma(logs: list[float], noise: list[float]) -> float:
    """The series' noise on the log scale (the module docstring's rule)."""
    import numpy as np

    diffs = np.abs(np.diff(logs))
    scatter = MAD_SIGMA * float(np.median(diffs)) / math.sqrt(2) if diffs.size else 0.0
    reported = [n for n in noise if isinstance(n, float) and math.isfinite(n)]
    return max(scatter, float(np.median(reported)) if reported else 0.0)


def steps(
    points: pd.DataFrame, persist: int = PERSIST, k: float = K, min_change: float = MIN_CHANGE, level: int = LEVEL
) -> pd.DataFrame:
    """The steps of every (machine, case) series in `points` (`read`'s frame) by the module docstring's rule: a row
    per step with its first commit, the commit before, the level before and after (seconds) and the change (%).

    Raises:
        ValueError: persist or level < 1, k < 0, min_change < 0.
    """
    import numpy as np
    import pandas as pd

    if persist < 1 or level < 1:
        raise ValueError(f"persist, level: {persist!r}, {level!r}; expected counts >= 1")
    if not (k >= 0 and min_change >= 0):
        raise ValueError(f"k, min_change: {k!r}, {min_change!r}; expected numbers >= 0")
    rows = []
    for (machine, case), part in points.groupby(["machine", "case"], sort=True):
        part = part.sort_values("seq", kind="stable").drop_duplicates("seq")
        logs = np.log(part["median_s"].to_numpy(dtype=float))
        sigma = _sigma(list(logs), pd.to_numeric(part["noise"], errors="coerce").astype(float).tolist())
        bar = max(k * sigma, math.log1p(min_change))
        start = 0
        for i in range(1, len(logs) - persist + 1):
            reference = float(np.median(logs[max(start, i - level) : i]))
            offsets = logs[i : i + persist] - reference
            if (offsets > bar).all() or (offsets < -bar).all():
                after = float(np.median(logs[i : i + persist]))
                rows.append(
                    {
                        "machine": machine,
                        "case": case,
                        "seq": int(part["seq"].iloc[i]),
                        "first commit": part["commit"].iloc[i],
                        "commit before": part["commit"].iloc[i - 1],
                        "date": part["date"].iloc[i],
                        "before_us": math.exp(reference) * 1e6,
                        "after_us": math.exp(after) * 1e6,
                        "change_pct": 100 * math.expm1(after - reference),
                        "noise_pct": 100 * math.expm1(sigma),
                    }
                )
                start = i
    columns = ["machine", "case", "seq", "first commit", "commit before", "date", "before_us", "after_us"]
    return pd.DataFrame(rows, columns=[*columns, "change_pct", "noise_pct"])


def series(points: pd.DataFrame, found: pd.DataFrame) -> pd.DataFrame:
    """What plots.history draws: each point's median relative to its case's first point on that machine, and the
    `line` it belongs to (the case label for the COLOURED largest steps, "other cases" otherwise); `step` marks the
    first point of each step."""
    first = points.groupby(["machine", "case"])["median_s"].transform("first")
    out = points.assign(relative=points["median_s"] / first)
    largest = found.reindex(found["change_pct"].abs().sort_values(ascending=False).index).drop_duplicates("case")
    coloured = set(largest["case"].head(COLOURED))
    out["line"] = out["case"].where(out["case"].isin(coloured), "other cases")
    marks = set(zip(found["machine"], found["case"], found["seq"], strict=True))
    out["step"] = [(m, c, s) in marks for m, c, s in zip(out["machine"], out["case"], out["seq"], strict=True)]
    return out


def section(db: str | Path) -> Section:
    """The report's history section: the figure of every case's median over the runs, per machine, and the steps.

    Raises:
        ReportError: `db` missing or not a history store.
    """
    from reports import plots

    points = read(db)
    section = Section("history", "History across commits")
    if points.empty:
        section.items.append(Text(f"The history store {Path(db).name} holds no timed case yet."))
        return section
    found = steps(points)
    runs = points.groupby("machine")["seq"].nunique()
    listed = ", ".join(f"{machine}: {n} runs" for machine, n in runs.items())
    section.items.append(Text(f"{points['case'].nunique()} cases over {listed}."))
    if runs.max() < 2:
        section.items.append(Text("One run per machine so far: the history draws from the second run on."))
        return section
    section.items.append(png(plots.history(series(points, found)), "history.png", "Median over runs per machine"))
    rule = (
        f"A step: a change of more than max({K:g} x the case's noise, {100 * MIN_CHANGE:g}%) from the median of the "
        f"previous {LEVEL} points that holds for {PERSIST} points in a row; noise: the larger of the run-to-run "
        "scatter and the runs' own standard error of the median. The change lies between 'commit before' and "
        "'first commit'."
    )
    if found.empty:
        section.items.append(Text("No step: no case changed past its noise for long enough. " + rule))
        return section
    shown = found.drop(columns="seq").rename(
        columns={"before_us": "before µs", "after_us": "after µs", "change_pct": "change %", "noise_pct": "noise %"}
    )
    fmt = {"before µs": ".4g", "after µs": ".4g", "change %": "+.1f", "noise %": ".2f"}
    section.items.append(table(shown, fmt, rule))
    return section


def write_report(db: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """A report of the history alone (`python -m reports --history DB` without results files): report.md and
    index.html in `out_dir`.

    Raises:
        ReportError: `db` missing or not a history store.
    """
    from reports.render import write_html, write_markdown

    body = section(db)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = f"qkbench history: {Path(db).name}"
    return write_markdown(out / "report.md", title, [], [body]), write_html(out / "index.html", title, [], [body])
