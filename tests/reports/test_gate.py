"""reports.gate: the Mann-Whitney U test, the verdicts on real-shaped runs (the synthetic H100 fixture, its rounds
resampled or scaled), the exit codes of `python -m reports BASE NEW --fail-on-regression`."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path
from typing import Any

import pytest

from reports import gate
from reports.__main__ import main
from reports.load import load
from tests.reports.files import CPU, RUN_A

# ---------------------------------------------------------------------------------------------- the U test


def test_u_test_by_hand_no_ties() -> None:
    # a = 1 2 3, b = 4 5 6: a's ranks 1 + 2 + 3 = 6, U1 = 6 - 3*4/2 = 0, U2 = 9; sigma^2 = 9/12 * 7 = 5.25;
    # z = (9 - 4.5 - 0.5) / sqrt(5.25) = 1.7457, p = erfc(z / sqrt 2) = 0.080856
    test = gate.mann_whitney_u([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert test.u == 0.0
    assert test.z == pytest.approx(4 / math.sqrt(5.25))
    assert test.p == pytest.approx(0.0808556, rel=1e-5)
    assert gate.mann_whitney_u([4.0, 5.0, 6.0], [1.0, 2.0, 3.0]).p == pytest.approx(test.p)  # two-sided


def test_u_test_by_hand_with_ties() -> None:
    # a = 1 2 2 3, b = 2 3 4 4; pooled ranks: 1 -> 1, the three 2s -> 3, the two 3s -> 5.5, the two 4s -> 7.5.
    # a's rank sum 1 + 3 + 3 + 5.5 = 12.5, U1 = 12.5 - 10 = 2.5, U2 = 13.5; ties: (27 - 3) + (8 - 2) + (8 - 2) = 36;
    # sigma^2 = 16/12 * (9 - 36 / 56) = 11.142857; z = (13.5 - 8 - 0.5) / sqrt(11.142857) = 1.49786, p = 0.134169
    test = gate.mann_whitney_u([1.0, 2.0, 2.0, 3.0], [2.0, 3.0, 4.0, 4.0])
    assert test.u == 2.5
    assert test.z == pytest.approx(5 / math.sqrt(16 / 12 * (9 - 36 / 56)))
    assert test.p == pytest.approx(0.1341692, rel=1e-5)


def test_u_test_all_tied_and_bad_input() -> None:
    assert gate.mann_whitney_u([2.0, 2.0], [2.0, 2.0, 2.0]).p == 1.0
    assert gate.mann_whitney_u([1.0], [2.0]).p == 1.0  # |U - mu| = 0.5: no evidence at all
    with pytest.raises(ValueError, match="a: an empty sample"):
        gate.mann_whitney_u([], [1.0])
    with pytest.raises(ValueError, match=r"b: .*finite"):
        gate.mann_whitney_u([1.0], [math.nan])


def test_u_test_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(7)
    for n1, n2, step in [(6, 6, 0.0), (10, 37, 0.001), (200, 180, 0.01), (3, 900, 0.1), (50, 50, 1.0)]:
        a = [round(rng.gauss(1.0, 0.2), 3) + step for _ in range(n1)]  # rounded: ties
        b = [round(rng.gauss(1.0, 0.2), 3) for _ in range(n2)]
        ours = gate.mann_whitney_u(a, b)
        theirs = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic", use_continuity=True)
        assert ours.u == pytest.approx(theirs.statistic)
        assert ours.p == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-300)


def test_reachable_needs_six_rounds_a_side() -> None:
    # fully separated n1 = n2 = 5: z = (12.5 - 0.5) / sqrt(25 * 11 / 12) = 2.507, p = 0.0122 > 0.01;
    # n1 = n2 = 6: z = (18 - 0.5) / sqrt(36 * 13 / 12) = 2.802, p = 0.0051
    assert not gate.reachable(5, 5)
    assert gate.reachable(6, 6)
    assert not gate.reachable(0, 100)


@pytest.mark.parametrize(("text", "value"), [("5%", 0.05), ("0.05", 0.05), (" 12.5% ", 0.125), ("100%", 1.0)])
def test_parse_threshold(text: str, value: float) -> None:
    assert gate.parse_threshold(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["5", "0%", "-1%", "nan%", "inf", "five", ""])
def test_parse_threshold_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--fail-on-regression"):
        gate.parse_threshold(text)


# ------------------------------------------------------------------------------------- real-shaped runs


def _run(tmp_path: Path, name: str, data: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def _rounds(data: dict[str, Any], change: Any) -> dict[str, Any]:
    """A copy of a results file with every case's rounds replaced by change(name, rounds)."""
    out = copy.deepcopy(data)
    for bench in out["benchmarks"]:
        if bench.get("stats") and bench["stats"].get("data"):
            bench["stats"]["data"] = change(bench["name"], bench["stats"]["data"])
    return out


def _timed_with_rounds(data: dict[str, Any]) -> int:
    return sum(1 for b in data["benchmarks"] if b.get("stats") and b["stats"].get("data"))


@pytest.fixture(scope="module")
def run_a() -> dict[str, Any]:
    return json.loads(RUN_A.read_text())


def test_a_a_resampled_runs_give_no_slower(tmp_path: Path, run_a: dict[str, Any]) -> None:
    """Two runs drawn from one distribution per case (each case's rounds resampled, as many as it had): ≤ 1%
    SLOWER; over 10 such pairs of the 83 timed cases."""
    slower = judged = 0
    for seed in range(10):
        rng = random.Random(seed)

        def draw(_: str, rounds: list[float], rng: random.Random = rng) -> list[float]:
            return rng.choices(rounds, k=len(rounds))

        paths = [_run(tmp_path, f"a{seed}_{i}", _rounds(run_a, draw)) for i in range(2)]
        result = gate.judge(load(paths), 0.05)
        slower += result.count("SLOWER")
        judged += len(result.verdicts)
    assert judged == 10 * 84  # 83 timed cases and the OOM one
    assert slower <= 0.01 * judged


def _results(rows: list[dict[str, Any]]) -> Any:
    """SYNTHETIC: load()'s Results from rows of `_case`, runs "base" and "new"."""
    import pandas as pd

    from reports.load import Results

    cases = pd.DataFrame(rows)
    cases["run"] = pd.Categorical(cases["run"], ["base", "new"])
    runs = pd.DataFrame({"run": ["base", "new"], "device": ["synthetic"] * 2, "timing_method": None, "gpu": None})
    return Results(cases, runs)


def test_a_a_synthetic_distributions_give_at_most_one_percent_slower() -> None:
    """SYNTHETIC: 2,000 cases, each two samples of one log-normal distribution (spread 0.5% to 30%, 6 to 400
    rounds, 2% slow outliers): SLOWER in at most 1% of them (and FASTER likewise)."""
    rng = random.Random(12)
    rows = []
    for i in range(2000):
        spread, n1, n2 = rng.choice([0.005, 0.02, 0.08, 0.3]), rng.randint(6, 400), rng.randint(6, 400)
        for run, n in (("base", n1), ("new", n2)):
            rounds = [1e-4 * math.exp(rng.gauss(0, spread)) * (3 if rng.random() < 0.02 else 1) for _ in range(n)]
            rows.append(_case(run, f"case{i}", rounds))
    result = gate.judge(_results(rows), 0.05)
    assert len(result.verdicts) == 2000
    assert result.count("SLOWER") <= 20 and result.count("FASTER") <= 20
    assert result.count("INCONCLUSIVE") > 0  # the 30% spreads with few rounds: medians apart, p not below 0.01


def test_a_change_the_rounds_cannot_confirm_is_inconclusive() -> None:
    """SYNTHETIC: 8 rounds a side spread over 30%, every one 10% slower in NEW: past the threshold, not significant."""
    rng = random.Random(3)
    rounds = [1e-3 * math.exp(rng.gauss(0, 0.3)) for _ in range(8)]
    result = gate.judge(_results([_case("base", "c", rounds), _case("new", "c", [1.1 * t for t in rounds])]), 0.05)
    row = result.verdicts.iloc[0]
    assert row["verdict"] == "INCONCLUSIVE" and row["p"] >= 0.01
    assert row["reason"] == "a +10.0% change, not significant (p ≥ 0.01)"
    assert not result.failed


def _case(run: str, name: str, rounds: list[float], **extra: Any) -> dict[str, Any]:
    """A row of load()'s cases frame (the columns the gate reads)."""
    row = {"run": run, "name": name, "group": "matmul", "op": "matmul", "impl": "qkbench", "precision": "nf4"}
    row |= {"shape": name, "M": None, "rank": None, "method": None, "status": "ok", "timer": "cuda_event"}
    row |= {"time_s": sorted(rounds)[len(rounds) // 2], "rounds_s": tuple(rounds)}
    return row | extra


def test_every_round_five_percent_slower_is_caught(tmp_path: Path, run_a: dict[str, Any]) -> None:
    """NEW = BASE with every round x 1.05: every timed case SLOWER, the paged AdamW step (rounds spread over 30%)
    included; the case that ran out of memory is INCONCLUSIVE, saying so."""
    base = _run(tmp_path, "base", run_a)
    new = _run(tmp_path, "new", _rounds(run_a, lambda _, rounds: [1.05 * t for t in rounds]))
    result = gate.judge(load([base, new]), 0.05)
    verdicts = result.verdicts.set_index("case")
    assert result.failed
    assert result.count("SLOWER") == _timed_with_rounds(run_a) == 83
    assert result.count("FASTER") == result.count("SAME") == 0
    assert verdicts.loc["adamw_step torch adamw32 full.llama2-7b", "reason"] == "oom in base"
    ratios = verdicts.loc[verdicts["verdict"] == "SLOWER", "ratio"].to_list()
    assert ratios == pytest.approx([1.05] * 83)
    assert verdicts.loc[verdicts["verdict"] == "SLOWER", "p"].max() < 0.01


@pytest.mark.parametrize(("factor", "verdict"), [(1 / 1.05, "FASTER"), (1.04, "SAME"), (1 / 1.04, "SAME")])
def test_scaled_rounds_faster_or_below_threshold(
    tmp_path: Path, run_a: dict[str, Any], factor: float, verdict: str
) -> None:
    new = _run(tmp_path, "new", _rounds(run_a, lambda _, rounds: [factor * t for t in rounds]))
    result = gate.judge(load([_run(tmp_path, "base", run_a), new]), 0.05)
    assert result.count(verdict) == _timed_with_rounds(run_a)
    assert not result.failed


def test_cases_the_test_cannot_judge_are_inconclusive_with_a_reason(tmp_path: Path, run_a: dict[str, Any]) -> None:
    base, new = copy.deepcopy(run_a), copy.deepcopy(run_a)
    by_name = {b["name"]: b for b in new["benchmarks"]}
    few, timer, broken, gone = [n for n in by_name if by_name[n]["stats"]][:4]
    for bench in (by_name[few], next(b for b in base["benchmarks"] if b["name"] == few)):
        bench["stats"]["data"] = bench["stats"]["data"][:5]
    by_name[timer]["extra_info"]["timer"] = "perf_counter"
    by_name[broken]["extra_info"].update(status="error", error="RuntimeError: boom", time_s=None)
    by_name[broken]["stats"] = None
    new["benchmarks"].remove(by_name[gone])
    result = gate.judge(load([_run(tmp_path, "base", base), _run(tmp_path, "new", new)]), 0.05)
    reasons = result.verdicts.set_index("case")["reason"]
    labels = {b["name"]: _label(b) for b in run_a["benchmarks"]}
    assert reasons[labels[few]] == "5 and 5 rounds cannot reach p < 0.01 (6 or more a run)"
    assert reasons[labels[timer]] == "timed by cuda_event in base, perf_counter in new"
    assert reasons[labels[broken]] == "error in new"
    assert reasons[labels[gone]] == "not in new"
    assert result.count("INCONCLUSIVE") == 5  # those four and the OOM case
    assert result.untimed == 12  # the memory group: not gated


def _label(bench: dict[str, Any]) -> str:
    info = bench["extra_info"]
    label = f"{info['op']} {info['impl']} {info['precision']} {info['shape']}"
    return label + (f" M={info['M']}" if info.get("M") is not None else "")


def test_runs_without_raw_rounds_are_inconclusive() -> None:
    result = gate.judge(load([CPU, CPU]), 0.05)  # an older CPU run: no stats.data
    assert set(result.verdicts["verdict"]) == {"INCONCLUSIVE"}
    assert set(result.verdicts["reason"]) == {f"no raw rounds (stats.data) in {result.base}"}
    assert not result.failed


def test_runs_that_measured_differently_are_named(tmp_path: Path, run_a: dict[str, Any]) -> None:
    new = copy.deepcopy(run_a)
    new["machine_info"]["qkbench"]["method"]["timer"] = "perf_counter"
    new["machine_info"]["qkbench"]["gpu"]["sm_clock_applications_mhz"] = 1410.0
    new["machine_info"]["qkbench"]["gpu"]["temperature_c"] = 60  # not a setting: not compared
    result = gate.judge(load([_run(tmp_path, "base", run_a), _run(tmp_path, "new", new)]), 0.05)
    assert result.differences == [
        "timing_method timer: cuda_event / perf_counter (base / new)",
        "gpu sm_clock_applications_mhz: 1755.0 / 1410.0 (base / new)",
    ]
    assert gate.judge(load([RUN_A, RUN_A]), 0.05).differences == []


def test_judge_arguments() -> None:
    with pytest.raises(ValueError, match="exactly two"):
        gate.judge(load([RUN_A]), 0.05)
    with pytest.raises(ValueError, match="threshold: 0"):
        gate.judge(load([RUN_A, RUN_A]), 0)
    with pytest.raises(ValueError, match="alpha"):
        gate.judge(load([RUN_A, RUN_A]), 0.05, alpha=1.5)


# ------------------------------------------------------------------------------------------------ the CLI


def test_cli_exit_codes_stdout_and_report(
    tmp_path: Path, run_a: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    small = {**run_a, "benchmarks": [b for b in run_a["benchmarks"] if b["extra_info"]["group"] == "quantize"]}
    base = _run(tmp_path, "base", small)  # the quantize group alone: a report with few figures, quickly built
    slower = _run(tmp_path, "slower", _rounds(small, lambda _, rounds: [1.05 * t for t in rounds]))
    new = copy.deepcopy(small)
    new["machine_info"]["qkbench"]["method"]["flush_bytes"] = 268435456
    same = _run(tmp_path, "same", new)

    assert main([str(base), str(slower), "--fail-on-regression", "5%", "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    n = _timed_with_rounds(small)
    assert out.startswith(f"Regression gate, slower against base: {n} SLOWER, 0 INCONCLUSIVE, 0 FASTER, 0 SAME")
    assert "gate: FAILED" in out and "quantize qkbench nf4 4096x4096" in out
    markdown = (tmp_path / "out" / "report.md").read_text()
    first = markdown.index("\n## ")
    assert markdown.index("GATE FAILED") < first
    assert markdown[first:].startswith("\n## Regression gate")

    assert main([str(base), str(same), "--fail-on-regression", "0.05", "--out", str(tmp_path / "out2")]) == 0
    out = capsys.readouterr().out
    assert "note: the runs measured differently: timing_method flush_bytes: 104857600 / 268435456" in out
    assert "gate: passed" in out
    markdown = (tmp_path / "out2" / "report.md").read_text()
    assert markdown.index("The two runs measured differently") < markdown.index("\n## ")


def test_cli_refuses_bad_gate_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert main([str(RUN_A), str(RUN_A), "--fail-on-regression", "5", "--out", out]) == 2
    assert "--fail-on-regression: '5'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([str(RUN_A), str(RUN_A), str(RUN_A), "--fail-on-regression", "5%", "--out", out])
    assert exited.value.code == 2
    assert "two results files (BASE NEW), got 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
