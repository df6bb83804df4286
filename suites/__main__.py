"""`python -m suites` (`nox -s bench`): run the benchmark suites, write results.json, build the report.

    python -m suites                       # the device's profile: quick on a CPU, full on a GPU
    python -m suites --profile full -k lora
    python -m suites -n 4                  # pytest-xdist: one GPU per worker
    python -m suites --assemble            # rebuild results.json (and the report) from a killed run's parts

Steps: (1) the static kernel audit, unless --no-audit or its JSON is already there (--audit-again redoes it);
(2) pytest on suites/ in a child process, each case appended to <out>/parts/*.jsonl as it finishes; (3) the parts
assembled into <out>/results.json (pytest-benchmark's schema), whatever the child's fate; (4) <out>/report.md and
<out>/index.html from it. Arguments after `--` go to pytest unchanged.

One run at a time per output folder: a run holds <out>/run.lock (its PID inside) and another run, or --assemble,
refuses to start there while it lives. Children (the audit, pytest and its xdist workers) run in their own process
group and die with this process, however it ends; Ctrl-C and SIGTERM are passed on to them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from reports.render import check_folder
from suites.record import assemble, parts_dir

ROOT = Path(__file__).resolve().parent.parent
LOCK = "run.lock"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The child's first process: `_guard` in this module, which runs the real command and takes its group down.
GUARD = "import sys; from suites.__main__ import _guard; sys.exit(_guard(int(sys.argv[1]), sys.argv[2:]))"


class Refused(Exception):
    """The run cannot start: a bad argument, an unusable output folder, or another run holding it."""


class Stopped(Exception):
    """This process got SIGINT, SIGTERM or SIGHUP while a child ran; the child's group was told and has ended."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def _workers(text: str) -> str:
    """-n: a count of pytest-xdist workers (>= 0), or xdist's 'auto' / 'logical'."""
    if text not in ("auto", "logical") and not (text.isdecimal() and int(text) >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}; expected a number of workers >= 0, 'auto' or 'logical'")
    return text


def _keyword(text: str) -> str:
    """-k: checked with pytest's own parser, so a typo fails now rather than after the audit's minutes."""
    try:
        from _pytest.mark import expression  # private, hence the fallbacks: pytest checks it again anyway
    except ImportError:
        return text
    errors: tuple[type[Exception], ...] = (SyntaxError, getattr(expression, "ParseError", SyntaxError))  # 9, 8
    try:
        expression.Expression.compile(text)
    except errors as exc:
        why = getattr(exc, "msg", None) or getattr(exc, "message", None) or exc  # SyntaxError.msg, ParseError.message
        raise argparse.ArgumentTypeError(f"{text!r} is not a pytest -k expression ({why})") from None
    return text


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m suites", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("quick", "full"), help="the sweep (default: full on a GPU, else quick)")
    parser.add_argument("-k", dest="keyword", type=_keyword, help="run only the cases matching this pytest -k")
    parser.add_argument("-n", dest="workers", type=_workers, help="pytest-xdist workers (one GPU each)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "latest", help="results and report folder")
    parser.add_argument("--cuda-graphs", action="store_true", help="replay launch-bound cases from CUDA graphs")
    audit = parser.add_mutually_exclusive_group()
    audit.add_argument("--no-audit", action="store_true", help="skip the static kernel audit")
    audit.add_argument("--audit-again", action="store_true", help="redo the audit even if its JSON exists")
    parser.add_argument("--no-report", action="store_true", help="stop after results.json")
    parser.add_argument("--assemble", action="store_true", help="only assemble <out>/parts and build the report")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> None:
    """Refuse combinations that would be silently ignored or misread (parser.error: one line, exit 2)."""
    if args.pytest_args and "--" not in argv:  # `python -m suites lora`: meant -k lora, pytest would look for a file
        parser.error(f"unexpected argument {args.pytest_args[0]!r}; arguments for pytest go after --")
    if args.assemble:
        ignored = [
            option
            for option, value in (
                ("--profile", args.profile),
                ("-k", args.keyword),
                ("-n", args.workers),
                ("--cuda-graphs", args.cuda_graphs),
                ("--no-audit", args.no_audit),
                ("--audit-again", args.audit_again),
                ("pytest arguments", args.pytest_args),
            )
            if value
        ]
        if ignored:
            parser.error(f"--assemble runs nothing, so {', '.join(ignored)} would be ignored; drop them")
    if args.workers is not None:
        import importlib.util

        if importlib.util.find_spec("xdist") is None:
            parser.error(f"-n {args.workers} needs pytest-xdist, which is not installed (pip install pytest-xdist)")


@contextlib.contextmanager
def _hold(out: Path) -> Iterator[int]:
    """Hold `<out>/run.lock` for this run (an flock, released by the kernel when its holders die); yields its fd.

    Raises:
        Refused: another live run holds it, or its filesystem cannot lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield -1
        return
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise Refused(f"{out} is in use by another run (PID {holder} holds {path}); wait for it or stop it") from None
    except OSError as exc:  # a filesystem without locks
        os.close(fd)
        raise Refused(f"{path}: cannot lock it ({exc.strerror or exc}); use an --out on a local disk") from None
    left = os.read(fd, 64).decode(errors="replace").strip()
    if left:  # nobody holds the lock, yet a PID is written: its run died without releasing it
        print(f"note: taking over the stale lock {path} of PID {left} (no longer running)", file=sys.stderr)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield fd
    finally:
        os.ftruncate(fd, 0)  # a clean end leaves no PID behind, so the next run has nothing to take over
        os.close(fd)


def _die_with(parent: int) -> Callable[[], None]:
    """A preexec_fn: the child gets SIGTERM when `parent` dies (Linux prctl), or kills itself if it already has."""
    prctl: Any = None
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: nothing to import after it

    def preexec() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody would ever signal us
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def _status(returncode: int) -> int:
    """An exit status: a child killed by signal N counts as 128 + N, as a shell reports it."""
    return 128 - returncode if returncode < 0 else returncode


def _guard(parent: int, command: list[str]) -> int:
    """The child's group leader: run `command` and wait for it; if `parent` dies or sends SIGTERM/SIGHUP, kill the
    whole process group (the command, pytest-xdist's workers, this guard). A forwarded SIGINT reaches the command
    directly (same group) and the guard waits for it to stop."""

    def kill_group(signum: int, frame: object) -> None:
        os.killpg(0, signal.SIGKILL)

    signal.signal(signal.SIGTERM, kill_group)  # PR_SET_PDEATHSIG, or the parent passing on its own SIGTERM
    signal.signal(signal.SIGHUP, kill_group)
    signal.signal(signal.SIGINT, lambda signum, frame: None)  # a handler, not SIG_IGN, which exec would keep
    child = subprocess.Popen(command, preexec_fn=_die_with(os.getpid()))
    while child.poll() is None:
        if os.getppid() != parent:  # also where prctl does not exist: the parent is gone, we were re-parented
            kill_group(signal.SIGKILL, None)
        time.sleep(0.2)
    return _status(child.returncode)


def _spawn(command: list[str], lock: int) -> int:
    """Run `command` from the checkout in its own process group under `_guard` and return its exit status.

    SIGINT, SIGTERM and SIGHUP sent to this process are passed on to the group; if this process dies, the group
    dies too. The guard inherits the lock, so the folder stays held until the last child is gone.

    Raises:
        Stopped: such a signal came; the group has ended.
    """
    if os.name != "posix":  # no process groups: a plain child
        return subprocess.run(command, cwd=ROOT, check=False).returncode
    boot = [sys.executable, "-c", GUARD, str(os.getpid()), *command]
    child = subprocess.Popen(boot, cwd=ROOT, process_group=0, pass_fds=(lock,), preexec_fn=_die_with(os.getpid()))

    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = _status(child.wait())
        if received:  # the run ends here, whatever the child made of the signal
            raise Stopped(received[0])
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if child.poll() is None:  # this process is unwinding (an exception): the group goes with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()


# The quick profile audits the shapes the audit's goals name (kernels/perf.py) and one of each other op: minutes on
# two cores instead of the whole grid's (`python -m kernels.audit` alone audits every shape).
QUICK_AUDIT_SHAPES = ("llama2-7b.q_proj", "llama2-70b.down_proj", "lora-r8.*", "param-4096x4096")


def _audit(out: Path, again: bool, lock: int, profile: str) -> Path | None:
    path = out / "audit.json"
    if path.exists() and not again:
        print(f"static audit: using {path} (--audit-again to redo it)", flush=True)
        return path
    command = [sys.executable, "-m", "kernels.audit", "--json", str(path)]
    if profile == "quick":
        command += [arg for shape in QUICK_AUDIT_SHAPES for arg in ("--shapes", shape)]
    which = "the quick profile's shapes" if profile == "quick" else "every shape"
    print(f"static audit: compiling the launchers' kernels for sm_80 and sm_90 ({which}) ...", flush=True)
    code = _spawn(command, lock)
    if code != 0:
        print(f"static audit: exit code {code} (see above); the report flags it", flush=True)
    return path if path.exists() else None


def _pytest(args: argparse.Namespace, lock: int) -> int:
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
    return _spawn([*command, *args.pytest_args], lock)


def _results(out: Path) -> Path | None:
    try:
        path, count, problems = assemble(out)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
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


def _run(args: argparse.Namespace, lock: int) -> int:
    """Steps (1)-(4) of the module docstring in a folder this process holds."""
    code = 0
    audit = args.out / "audit.json"
    if not args.assemble:
        if not args.no_audit:
            if args.profile is None:
                from kernels.device import default_profile  # the device decides (torch imported only here)

                profile = default_profile()
            else:
                profile = args.profile
            audit = _audit(args.out, args.audit_again, lock, profile) or audit
        shutil.rmtree(parts_dir(args.out), ignore_errors=True)  # a new run: the last run's parts go
        start = time.perf_counter()
        outcome = "pytest did not start"
        try:
            code = _pytest(args, lock)
            outcome = f"pytest exit code {code}"
        except Stopped as stop:
            outcome = str(stop)
            raise
        finally:  # even when stopped: what was measured is assembled
            print(f"suites ran for {time.perf_counter() - start:.0f} s ({outcome})", flush=True)
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


def _prepare(out: Path) -> None:
    """Create the output folder.

    Raises:
        Refused: `out` is a file, under a file, or not writable.
    """
    try:
        check_folder(out)
        out.mkdir(parents=True, exist_ok=True)
    except ValueError as exc:
        raise Refused(f"--out {exc}") from None
    except OSError as exc:
        raise Refused(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run; exit 2 (one line on stderr) when the run cannot start."""
    argv = sys.argv[1:] if argv is None else argv
    parser = _parser()
    args = parser.parse_args(argv)
    _check(parser, args, argv)
    args.out = args.out.absolute()  # the children run from the checkout, not from here
    try:
        _prepare(args.out)
        with _hold(args.out) as lock:
            return _run(args, lock)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Stopped as stop:  # what was measured is in results.json; `--assemble` builds its report
        print(f"{stop}: no report (python -m suites --assemble builds it from the parts)", file=sys.stderr)
        return 128 + stop.signum


if __name__ == "__main__":
    sys.exit(main())
