"""`python -m suites` (`nox -s bench`): run the benchmark suites, write results.json, build the report.

    python -m suites                       # the device's profile: quick on a CPU, full on a GPU
    python -m suites --profile full -k lora
    python -m suites -n 4                  # pytest-xdist: one GPU per worker
    python -m suites --assemble            # rebuild results.json (and the report) from a killed run's parts

Steps: (1) the static kernel audit, unless --no-audit or its JSON is already there (--audit-again redoes it);
(2) pytest on suites/ in a child process, each case appended to <out>/parts/*.jsonl as it finishes; (3) the parts
assembled into <out>/results.json (pytest-benchmark's schema), whatever the child's fate; (4) <out>/report.md and
<out>/index.html from it. Arguments after `--` go to pytest unchanged.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from suites.record import assemble, parts_dir

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m suites", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("quick", "full"), help="the sweep (default: full on a GPU, else quick)")
    parser.add_argument("-k", dest="keyword", help="run only the cases matching this pytest -k expression")
    parser.add_argument("-n", dest="workers", help="pytest-xdist workers (one GPU each)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "latest", help="results and report folder")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay launch-bound cases from CUDA graphs")
    parser.add_argument("--no-audit", action="store_true", help="skip the static kernel audit")
    parser.add_argument("--audit-again", action="store_true", help="redo the audit even if its JSON exists")
    parser.add_argument("--no-report", action="store_true", help="stop after results.json")
    parser.add_argument("--assemble", action="store_true", help="only assemble <out>/parts and build the report")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    return parser


def _audit(out: Path, again: bool) -> Path | None:
    path = out / "audit.json"
    if path.exists() and not again:
        print(f"static audit: using {path} (--audit-again to redo it)", flush=True)
        return path
    print("static audit: compiling every kernel config for sm_80 and sm_90 ...", flush=True)
    done = subprocess.run([sys.executable, "-m", "kernels.audit", "--json", str(path)], cwd=ROOT, check=False)
    if done.returncode != 0:
        print(f"static audit: exit code {done.returncode} (see above); the report flags it", flush=True)
    return path if path.exists() else None


def _pytest(args: argparse.Namespace) -> int:
    command = [sys.executable, "-m", "pytest", str(ROOT / "suites"), "-p", "no:cacheprovider", "-v", "-rfE"]
    command += ["--qkbench-out", str(args.out), "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=name"]
    if args.profile:
        command += ["--qkbench-profile", args.profile]
    if args.keyword:
        command += ["-k", args.keyword]
    if args.workers:
        command += ["-n", args.workers]
    if args.cuda_graphs:
        command.append("--qkbench-cuda-graphs")
    print("running:", " ".join(command[1:]), flush=True)
    return subprocess.run([*command, *args.pytest_args], cwd=ROOT, check=False).returncode


def _results(out: Path) -> Path | None:
    try:
        path, count, problems = assemble(out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    import json

    statuses = Counter(b["extra_info"].get("status", "ok") for b in json.loads(path.read_text())["benchmarks"])
    summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
    print(f"wrote {path}: {count} cases ({summary})", flush=True)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return path


def _history(results: Path, db: Path) -> None:
    """Append the run to the history store (reports/history.py); a store that cannot take it is said, not fatal."""
    from reports import ReportError
    from reports.history import append

    try:
        added = append(results, db)
    except (ReportError, OSError) as exc:
        print(f"history: not appended ({exc})", file=sys.stderr)
        return
    print(f"history: {added} cases appended to {db}" if added else f"history: {db} already holds this run", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    code = 0
    audit = args.out / "audit.json"
    if not args.assemble:
        if not args.no_audit:
            audit = _audit(args.out, args.audit_again) or audit
        shutil.rmtree(parts_dir(args.out), ignore_errors=True)  # a new run: the last run's parts go
        start = time.perf_counter()
        try:
            code = _pytest(args)
        finally:  # even on Ctrl-C: what was measured is assembled
            print(f"suites ran for {time.perf_counter() - start:.0f} s (pytest exit code {code})", flush=True)
            results = _results(args.out)
    else:
        results = _results(args.out)
    if results is None:
        return code or 1
    history = args.out / "history.sqlite"  # each run's cases over the commits (reports/history.py)
    _history(results, history)
    if not args.no_report:
        from reports import ReportError, build

        try:
            markdown, html = build(
                [results],
                args.out,
                audit=audit if audit.exists() else None,
                history=history if history.exists() else None,
            )
        except ReportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {markdown} and {html}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
