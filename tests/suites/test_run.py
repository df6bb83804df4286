"""`python -m suites` end to end on a few quick-profile quantize cases, the size of the quick sweep, the runner's
process tree (children die with it), its lock on the output folder, --assemble on damaged parts, bad arguments."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from suites.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
KEYWORD = "test_quantize and 1024x1024 and nf4"  # nf4 and nf4-dq, qkbench and bitsandbytes: 4 cases
MODULES = {"bench_quantize", "bench_matmul", "bench_lora", "bench_optim", "bench_memory", "bench_finetune"}


def _env() -> dict[str, str]:
    """This environment without pytest-xdist's worker variables (the child would take itself for a worker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST_", "PYTEST_CURRENT_TEST"))}
    return {**env, "PYTHONPATH": str(ROOT)}


def _suites(*args: str, timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "suites", *args]
    return subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    # --out relative to where the command runs, not to the checkout the children run from
    args = ("--no-audit", "--no-report", "--profile", "quick", "--out", out.name, "-k", KEYWORD)
    return _suites(*args, cwd=out.parent), out


def _results(run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    done, out = run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return json.loads((out / "results.json").read_text())


def test_help_lists_the_options() -> None:
    done = _suites("--help", timeout=60)
    assert done.returncode == 0
    for option in ("--profile", "-k", "--out", "--no-audit", "--no-report", "--assemble", "--cuda-graphs"):
        assert option in done.stdout


def test_the_selected_cases_are_measured(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    data = _results(run)
    cases = data["benchmarks"]
    assert len(cases) >= 2
    assert Counter((c["extra_info"]["impl"], c["extra_info"]["precision"]) for c in cases) == {
        ("qkbench", "nf4"): 1,
        ("qkbench", "nf4-dq"): 1,
        ("bitsandbytes", "nf4"): 1,
        ("bitsandbytes", "nf4-dq"): 1,
    }
    for case in cases:
        info = case["extra_info"]
        assert info["status"] == "ok" and info["error"] is None, info
        assert info["group"] == "quantize" and info["op"] == "quantize" and info["shape"] == "1024x1024"
        assert info["flops"] > 0 and info["bytes"] > 0
        assert info["flops"] == 4 * 1024 * 1024  # quantize_cost: 4 ops an element
        assert info["time_s"] > 0 and info["gbps"] > 0 and info["peak_mem_bytes"] > 4 * 1024 * 1024
        assert info["roofline_pct"] > 0 and 0 < info["rmse"] < 0.2
        assert case["stats"]["rounds"] >= 3 and case["stats"]["median"] == info["time_s"]


def test_the_run_records_its_environment(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    data = _results(run)
    qk = data["machine_info"]["qkbench"]
    assert qk["profile"] == "quick"
    assert qk["peaks"]["copy_gbps"] > 0 and qk["peaks"]["bf16_tflops"] > 0
    assert qk["torch"] and qk["triton"] and qk["python"] and qk["date"] == data["datetime"]
    assert data["version"] and isinstance(data["commit_info"], dict)


def test_the_parts_stay_beside_the_results(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    data = _results(run)
    _, out = run
    lines = [json.loads(line) for line in (out / "parts" / "main.jsonl").read_text().splitlines()]
    assert "header" in lines[0] and [line["name"] for line in lines[1:]] == [b["name"] for b in data["benchmarks"]]
    assert not (out / "report.md").exists()  # --no-report


def test_each_entry_has_its_group(run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """SCHEMA.md: each benchmark entry has name, fullname, group, params, stats, extra_info."""
    assert {c["group"] for c in _results(run)["benchmarks"]} == {"quantize"}


def test_the_quick_profile_collects_every_suite() -> None:
    command = [sys.executable, "-m", "pytest", "suites", "--collect-only", "-q", "-p", "no:cacheprovider"]
    command += ["--qkbench-profile", "quick"]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    items = [line for line in done.stdout.splitlines() if "::" in line]
    per_module = Counter(Path(line.split("::")[0]).stem for line in items)
    assert set(per_module) == MODULES
    assert sum(per_module.values()) >= 60
    # quick: 2 shapes; quantize: 6 formats x 2 impls; dequantize: nf4, nf4-dq, fp4 x 2 impls, int8, fp16, bf16
    assert per_module["bench_quantize"] == 2 * 6 * 2 + 2 * (3 * 2 + 1 + 1 + 1)
    assert per_module["bench_finetune"] == 3 * 2 + 1  # qkbench, peft-bnb, peft at ranks 8 and 64; full fine-tuning


# --- the runner's process tree, its lock, and --assemble on damaged parts -------------------------------------------

LINUX = sys.platform.startswith("linux")
TINY = "test_quantize and 1024x1024 and nf4 and qkbench"
PROCESSES = {  # how the runner's descendants are told apart by their command lines
    "pytest": lambda command: command[1:3] == ["-m", "pytest"],
    "worker": lambda command: "sys.stdin.readline" in command[-1],  # execnet's bootstrap of an xdist worker
}


def _descendants(root: int) -> dict[int, list[str]]:
    """Every live process below `root` (Linux /proc): pid -> its command line."""
    parents: dict[int, int] = {}
    commands: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdecimal():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended while we looked
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
            commands[int(entry.name)] = [c.decode(errors="replace") for c in command if c]
    found: dict[int, list[str]] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found.update({child: commands[child] for child in children})
        frontier += children
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(out: Path, *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "suites", "--no-audit", "--no-report", "--profile", "quick", "--out", str(out)]
    return subprocess.Popen(
        [*command, *args], cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(runner: subprocess.Popen[str], what: str, timeout: float = 120) -> dict[int, list[str]]:
    """The runner's process tree once `what` runs below it: "pytest" (`python -m pytest`) or "worker" (xdist's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tree = _descendants(runner.pid)
        if any(PROCESSES[what](command) for command in tree.values()):
            return tree
        assert runner.poll() is None, f"the runner ended first: {runner.communicate()[0][-3000:]}"
        time.sleep(0.1)
    runner.kill()
    raise AssertionError(f"no {what} below the runner after {timeout} s")


def _gone(pids: list[int], within: float) -> list[int]:
    """The pids still running after `within` seconds (killed then, so no test leaves them behind)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.mark.skipif(not LINUX, reason="reads the process tree from /proc")
def test_a_killed_runner_takes_its_children_along(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """kill -9 of `python -m suites` ends pytest and its xdist worker too, and the folder is held while it runs."""
    runner = _start(tmp_path, "-k", TINY, "-n", "1")
    tree = _wait_for(runner, "worker")
    assert main(["--assemble", "--no-report", "--out", str(tmp_path)]) == 2  # a second run may not start here
    err = capsys.readouterr().err
    lock = tmp_path / "run.lock"
    assert (
        err == f"error: {tmp_path} is in use by another run (PID {runner.pid} holds {lock}); wait for it or stop it\n"
    )
    runner.kill()
    runner.wait()
    assert len(tree) >= 3 and _gone(list(tree), within=5) == []  # the guard, pytest, the worker
    main(["--assemble", "--no-report", "--out", str(tmp_path)])  # the dead run's lock is free, its PID still in it
    assert f"note: taking over the stale lock {lock} of PID {runner.pid} (no longer running)" in capsys.readouterr().err


@pytest.mark.skipif(not LINUX, reason="reads the process tree from /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_runner_stops_its_children_and_assembles(tmp_path: Path, sig: signal.Signals) -> None:
    runner = _start(tmp_path, "-k", TINY)
    tree = _wait_for(runner, "pytest")
    runner.send_signal(sig)
    output, _ = runner.communicate(timeout=120)
    assert _gone(list(tree), within=5) == []
    assert runner.returncode == 128 + sig, output[-3000:]
    name = signal.Signals(sig).name
    assert f"(stopped by {name})" in output and "no results parts" in output  # it assembled what was measured
    assert f"{name}: no report (python -m suites --assemble builds it from the parts)" in output
    if sig == signal.SIGINT:  # passed on as Ctrl-C: pytest stopped on its own
        assert "KeyboardInterrupt" in output or "Interrupted" in output


def test_a_stale_lock_is_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _parts(tmp_path, [_header(), _case("a")])
    (tmp_path / "run.lock").write_text(f"{dead.pid}\n")
    assert main(["--assemble", "--no-report", "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert f"note: taking over the stale lock {tmp_path / 'run.lock'} of PID {dead.pid} (no longer running)" in err
    assert (tmp_path / "run.lock").read_text() == ""  # released at the end: the next run has nothing to take over
    assert main(["--assemble", "--no-report", "--out", str(tmp_path)]) == 0
    assert "stale" not in capsys.readouterr().err


def test_a_held_lock_refuses_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from suites.__main__ import _hold

    _parts(tmp_path, [_header(), _case("a")])
    with _hold(tmp_path):
        assert main(["--assemble", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"(PID {os.getpid()} holds {tmp_path / 'run.lock'})" in err
    assert not (tmp_path / "results.json").exists()


def _header() -> dict[str, Any]:
    qk = {"device": "cpu (test)", "device_kind": "cpu", "profile": "quick", "peaks": None}
    return {"header": {"machine_info": {"qkbench": qk}, "commit_info": {}, "datetime": "2026-01-01T00:00:00+00:00"}}


def _case(name: str) -> dict[str, Any]:
    info = {"group": "quantize", "op": "quantize", "impl": "qkbench", "precision": "nf4", "shape": "8x8"}
    info |= {"status": "ok", "error": None, "time_s": 1e-3, "flops": 256.0, "bytes": 100.0, "rmse": 0.1}
    fullname = f"suites/bench_quantize.py::test_quantize[{name}]"
    return {"group": "quantize", "name": f"test_quantize[{name}]", "fullname": fullname, "extra_info": info}


def _parts(out: Path, lines: list[Any], worker: str = "main") -> Path:
    path = out / "parts" / f"{worker}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def _assemble(out: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[list[str], str]:
    """`python -m suites --assemble` in this process: the assembled case names and stderr."""
    assert main(["--assemble", "--out", str(out), *args]) == 0
    err = capsys.readouterr().err
    return [b["name"] for b in json.loads((out / "results.json").read_text())["benchmarks"]], err


def test_assemble_skips_json_that_is_not_a_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = ["42", "[1, 2]", '"x"', "null", '{"name": "n"}', '{"extra_info": {}}', '{"header": 1}', "{not json"]
    path = _parts(tmp_path, [_header(), _case("a"), *junk, _case("b")])
    names, err = _assemble(tmp_path, capsys, "--no-report")
    assert names == ["test_quantize[a]", "test_quantize[b]"]
    for number in range(3, 3 + len(junk)):
        assert f"{path}:{number}: " in err
    assert f"{path}:3: JSON but not a case (int: 42); skipped" in err
    assert f"{path}:7: JSON but not a case (an object without name and extra_info" in err


def test_assemble_keeps_one_copy_of_a_repeated_case(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    later = _case("b")
    later["extra_info"]["time_s"] = 2e-3
    path = _parts(tmp_path, [_header(), _case("a"), _case("b"), _case("a"), later])
    names, err = _assemble(tmp_path, capsys, "--no-report")
    assert names == ["test_quantize[a]", "test_quantize[b]"]
    assert f"{path}:4: a copy of {path}:2 (suites/bench_quantize.py::test_quantize[a]); kept once" in err
    assert f"{path}:5: suites/bench_quantize.py::test_quantize[b] again, with other values" in err
    times = [b["extra_info"]["time_s"] for b in json.loads((tmp_path / "results.json").read_text())["benchmarks"]]
    assert times == [1e-3, 2e-3]  # the later measurement of b


def test_assemble_keeps_the_cases_under_a_torn_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _parts(tmp_path, [json.dumps(_header())[:40], _case("a"), _case("b")])
    names, err = _assemble(tmp_path, capsys)  # and the report, from cases whose environment is unknown
    assert names == ["test_quantize[a]", "test_quantize[b]"]
    assert f"{path}:1: not JSON" in err and "no readable header line" in err
    assert json.loads((tmp_path / "results.json").read_text())["machine_info"] == {}
    assert (tmp_path / "report.md").read_text().startswith("# qkbench report: unknown device\n")
    # another worker's intact header serves the whole run
    _parts(tmp_path, [_header(), _case("c")], worker="gw1")
    names, err = _assemble(tmp_path, capsys, "--no-report")
    assert names == ["test_quantize[c]", "test_quantize[a]", "test_quantize[b]"] and "no readable header" not in err
    assert json.loads((tmp_path / "results.json").read_text())["machine_info"] == _header()["header"]["machine_info"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "many"], "argument -n: 'many'; expected a number of workers >= 0, 'auto' or 'logical'"),
        (["-n", "-2"], "argument -n: '-2'"),
        (["-k", "a and (b"], "argument -k: 'a and (b' is not a pytest -k expression"),
        (["--profile", "huge"], "argument --profile: invalid choice: 'huge'"),
        (["--no-audit", "--audit-again"], "not allowed with argument --no-audit"),
        (["--assemble", "-k", "lora", "--profile", "quick"], "--assemble runs nothing, so --profile, -k would be"),
        (["lora"], "unexpected argument 'lora'; arguments for pytest go after --"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("python -m suites: error: ")
    assert message in err
    assert not (tmp_path / "out").exists()


def test_an_unusable_out_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    cases = [
        (afile, f"error: --out {afile}: is a file; expected a folder\n"),
        (afile / "sub", f"error: --out {afile / 'sub'}: lies under {afile}, which is a file; expected a folder\n"),
    ]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases.append((locked / "out", f"error: --out {locked / 'out'}: the folder ({locked}, where it would be "))
    for out, message in cases:
        assert main(["--assemble", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1
