"""reports.history on SYNTHETIC histories: the SQLite store (append, read), the step rule, the report section and
`python -m reports --history DB`."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from reports import history
from reports.__main__ import main
from reports.load import ReportError


def _results(path: Path, commit: str, date: str, times: dict[str, float], device: str = "synthetic GPU") -> Path:
    """SYNTHETIC: a results file (the schema's keys the store reads) with one timed case per entry of `times`."""
    benchmarks = [
        {
            "name": f"test_matmul[{name}]",
            "extra_info": {"group": "matmul", "op": "matmul", "impl": "qkbench", "precision": "nf4", "shape": name}
            | {"M": 16, "status": "ok", "time_s": t, "time_iqr_s": t / 100, "noise": 0.004},
            "stats": {"median": t, "data": [t * 0.99, t, t * 1.01]},
        }
        for name, t in times.items()
    ]
    benchmarks.append(  # not timed: stored, never drawn
        {"name": "test_memory[x]", "extra_info": {"group": "memory", "op": "training_memory", "impl": "model"}}
    )
    qk = {"device": device, "device_kind": "cuda", "git_commit": commit, "date": date, "profile": "full"}
    data = {
        "machine_info": {"qkbench": qk, "synthetic": True},
        "commit_info": {"id": commit, "dirty": False},
        "benchmarks": benchmarks,
        "datetime": date,
        "version": "5.1.0",
    }
    path.write_text(json.dumps(data))
    return path


def _points(medians: list[float], noise: float | None = None, case: str = "c", machine: str = "m") -> pd.DataFrame:
    """SYNTHETIC: read()'s frame for one series, commits c00, c01, ..."""
    n = len(medians)
    return pd.DataFrame(
        {
            "machine": [machine] * n,
            "case": [case] * n,
            "seq": range(n),
            "median_s": medians,
            "noise": [noise] * n,
            "commit": [f"c{i:02d}" for i in range(n)],
            "date": [f"2026-01-{i + 1:02d}T00:00:00+00:00" for i in range(n)],
        }
    )


def _noisy(levels: list[float], spread: float, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [level * (1 + rng.uniform(-spread, spread)) for level in levels]


# ------------------------------------------------------------------------------------------------ the store


def test_append_read_and_idempotence(tmp_path: Path) -> None:
    db = tmp_path / "history.sqlite"
    late = _results(tmp_path / "b.json", "b" * 40, "2026-02-02T10:00:00+00:00", {"x": 2e-5, "y": 4e-5})
    early = _results(tmp_path / "a.json", "a" * 40, "2026-02-01T10:00:00+00:00", {"x": 1e-5, "y": 3e-5})
    other = _results(tmp_path / "c.json", "c" * 40, "2026-02-03T10:00:00+00:00", {"x": 9e-5}, device="synthetic CPU")
    assert history.append(late, db) == 3  # two timed cases and the memory one
    assert history.append(early, db) == 3
    assert history.append(late, db) == 0  # the same run (machine, date) again: nothing added
    assert history.append(other, db) == 2
    points = history.read(db)
    assert len(points) == 5  # the memory case is stored, not read as a point
    gpu = points[points["machine"] == "synthetic GPU"]
    assert list(gpu["commit"]) == ["aaaaaaaaaa", "aaaaaaaaaa", "bbbbbbbbbb", "bbbbbbbbbb"]  # by date, not by append
    assert list(gpu["seq"]) == [0, 0, 1, 1]
    assert list(gpu["median_s"]) == [1e-5, 3e-5, 2e-5, 4e-5]
    assert set(gpu["case"]) == {"matmul qkbench nf4 x M=16", "matmul qkbench nf4 y M=16"}
    assert list(points.loc[points["machine"] == "synthetic CPU", "seq"]) == [0]
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT rounds, noise, grp, status FROM cases WHERE name = 'test_matmul[x]'")
        assert rows.fetchall() == [(3, 0.004, "matmul", "ok")] * 3


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("not a database, just text that is long enough to be read as a header ....")
    results = _results(tmp_path / "a.json", "a" * 40, "2026-02-01T10:00:00+00:00", {"x": 1e-5})
    with pytest.raises(ReportError, match=r"notes\.sqlite: not a history store"):
        history.append(results, text)
    with pytest.raises(ReportError, match="no such history store"):
        history.read(tmp_path / "absent.sqlite")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE cases (a INTEGER)")
    with pytest.raises(ReportError, match="not a history store's"):
        history.read(other)
    with pytest.raises(ReportError, match="is a directory"):
        history.append(results, tmp_path)


# ------------------------------------------------------------------------------------------- the step rule


def test_a_persistent_step_is_found_with_its_first_commit() -> None:
    medians = _noisy([1e-4] * 8 + [1.1e-4] * 6, spread=0.005)  # SYNTHETIC: +10% from the 9th run on, 0.5% noise
    found = history.steps(_points(medians))
    assert len(found) == 1
    step = found.iloc[0]
    assert (step["first commit"], step["commit before"], step["seq"]) == ("c08", "c07", 8)
    assert step["change_pct"] == pytest.approx(10.0, abs=1.5)
    assert step["before_us"] == pytest.approx(100.0, rel=0.01) and step["after_us"] == pytest.approx(110, rel=0.01)


def test_an_outlier_or_a_change_in_the_last_points_is_no_step() -> None:
    assert history.steps(_points([1.0, 1.0, 1.0, 1.3, 1.0, 1.0, 1.0, 1.0])).empty  # one point off
    assert history.steps(_points([1.0, 1.0, 1.0, 1.3, 1.3, 1.0, 1.0, 1.0])).empty  # two: not the three required
    assert history.steps(_points([1.0] * 6 + [1.3] * 2)).empty  # not yet confirmed
    assert len(history.steps(_points([1.0] * 5 + [1.3] * 3))) == 1  # confirmed by the third


def test_a_change_within_the_noise_is_no_step() -> None:
    # SYNTHETIC: +-5% run-to-run scatter (sigma ~ 3%): a 6% change is below 3 sigma
    scattered = _noisy([1.0] * 10 + [1.06] * 10, spread=0.05, seed=1)
    assert history.steps(_points(scattered)).empty
    assert len(history.steps(_points(_noisy([1.0] * 10 + [1.4] * 10, spread=0.05, seed=1)))) == 1
    # a flat series: the 2% floor; then the runs' own reported noise (3%, K x 3% = 9%) hides a 5% change
    assert len(history.steps(_points([1.0] * 5 + [1.05] * 5))) == 1
    assert history.steps(_points([1.0] * 5 + [1.01] * 5)).empty
    assert history.steps(_points([1.0] * 5 + [1.05] * 5, noise=0.03)).empty


def test_up_then_down_gives_two_steps_and_series_mark_them() -> None:
    points = pd.concat(
        [_points([1.0] * 4 + [2.0] * 4 + [1.0] * 4, case="jumpy"), _points([1.0] * 12, case="flat")],
        ignore_index=True,
    )
    found = history.steps(points)
    assert list(found["first commit"]) == ["c04", "c08"]
    assert list(found["change_pct"].round(6)) == [100.0, -50.0]
    drawn = history.series(points, found)
    assert list(drawn.loc[drawn["step"], "seq"]) == [4, 8]
    assert set(drawn.loc[drawn["case"] == "flat", "line"]) == {"other cases"}
    assert set(drawn.loc[drawn["case"] == "jumpy", "line"]) == {"jumpy"}
    assert list(drawn.loc[drawn["case"] == "jumpy", "relative"]) == [1.0] * 4 + [2.0] * 4 + [1.0] * 4


def test_steps_arguments() -> None:
    with pytest.raises(ValueError, match="persist, level: 0, 5"):
        history.steps(_points([1.0] * 3), persist=0)
    with pytest.raises(ValueError, match="k, min_change: -1"):
        history.steps(_points([1.0] * 3), k=-1)


# ------------------------------------------------------------------------------------- report and CLI


def _store(tmp_path: Path) -> Path:
    """SYNTHETIC: eight runs of two cases on one machine, case x 20% slower from the sixth run on."""
    db = tmp_path / "history.sqlite"
    for i in range(8):
        times: dict[str, Any] = {"x": 1e-5 * (1.2 if i >= 5 else 1.0), "y": 3e-5}
        date = f"2026-03-{i + 1:02d}T08:00:00+00:00"
        history.append(_results(tmp_path / f"r{i}.json", f"{i:x}" * 40, date, times), db)
    return db


def test_history_alone_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _store(tmp_path)
    assert main(["--history", str(db), "--out", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## History across commits" in markdown and "figures/history.png" in markdown
    assert "2 cases over synthetic GPU: 8 runs." in markdown
    assert "| synthetic GPU | matmul qkbench nf4 x M=16 | 5555555555 | 4444444444 |" in markdown
    assert (tmp_path / "out" / "figures" / "history.png").stat().st_size > 0
    assert main(["--history", str(tmp_path / "none.sqlite"), "--out", str(tmp_path / "o2")]) == 2
    assert "no such history store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["--out", str(tmp_path / "o3")])
    assert exited.value.code == 2


def test_history_ends_a_results_report(tmp_path: Path) -> None:
    db = _store(tmp_path)
    assert main([str(tmp_path / "r7.json"), "--history", str(db), "--out", str(tmp_path / "out")]) == 0
    markdown = (tmp_path / "out" / "report.md").read_text()
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[-1] == "## History across commits"


def test_suites_append_each_run_and_survive_a_bad_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from suites.__main__ import _history

    results = _results(tmp_path / "a.json", "a" * 40, "2026-02-01T10:00:00+00:00", {"x": 1e-5})
    _history(results, tmp_path / "h.sqlite")
    _history(results, tmp_path / "h.sqlite")
    out = capsys.readouterr().out
    assert f"history: 2 cases appended to {tmp_path / 'h.sqlite'}" in out and "already holds this run" in out
    items = history.section(tmp_path / "h.sqlite").items  # one run: said, nothing drawn
    assert [getattr(item, "text", None) for item in items] == [
        "1 cases over synthetic GPU: 1 runs.",
        "One run per machine so far: the history draws from the second run on.",
    ]
    _history(results, tmp_path)  # a folder: said, not fatal
    assert "history: not appended" in capsys.readouterr().err
