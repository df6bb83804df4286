"""`python -m reports FILE [FILE ...] --out DIR [--audit PATH] [--threshold 0.05]`: build the report.

`python -m reports BASE NEW --fail-on-regression 5%`: the regression gate (reports/gate.py) first in the report and
on stdout; exit 1 when a case is SLOWER. `--history DB`: each case's median over the commits (reports/history.py),
alone or after the results' report.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from reports import ReportError, build
from reports.render import check_folder


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def _threshold(text: str) -> float:
    """--threshold: a finite fraction >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}; expected a finite fraction >= 0 (0.05 is 5%)")
    return value


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build the report (and judge the regression gate), print where it is; exit 1 when the
    gate finds a case SLOWER, 2 (one line on stderr) on a bad argument, a bad results, audit or history file, or an
    output folder that cannot be written."""
    parser = _Parser(prog="python -m reports", description=__doc__)
    parser.add_argument("files", nargs="*", metavar="FILE", help="pytest-benchmark JSON (the first is the baseline)")
    parser.add_argument("--out", default="reports/latest", help="output folder (default: reports/latest)")
    parser.add_argument("--audit", default=None, help="static kernel audit JSON (kernels/audit.py)")
    parser.add_argument("--threshold", type=_threshold, default=0.05, help="regression threshold as a fraction (0.05)")
    parser.add_argument("--fail-on-regression", metavar="PCT", help="gate BASE NEW: exit 1 if a case is SLOWER by PCT")
    parser.add_argument("--history", metavar="DB", help="history store (SQLite) to draw: python -m suites appends one")
    args = parser.parse_args(argv)
    if not args.files and args.history is None:
        parser.error("give results FILEs, --history DB, or both")
    if args.fail_on_regression is not None and len(args.files) != 2:
        parser.error(f"--fail-on-regression compares two results files (BASE NEW), got {len(args.files)}")
    gate = None
    try:
        check_folder(args.out)
    except ValueError as exc:
        print(f"error: --out {exc}", file=sys.stderr)
        return 2
    try:
        if not args.files:
            from reports.history import write_report

            markdown, html = write_report(args.history, args.out)
        else:
            if args.fail_on_regression is not None:
                from reports import gate as gating
                from reports.load import load

                gate = gating.judge(load(args.files), gating.parse_threshold(args.fail_on_regression))
                print(gating.text(gate))
            markdown, html = build(
                args.files, args.out, audit=args.audit, threshold=args.threshold, gate=gate, history=args.history
            )
    except (ReportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the folder passed check_folder, yet writing failed (a full disk, a race)
        print(f"error: --out {args.out}: cannot write the report ({exc})", file=sys.stderr)
        return 2
    print(f"wrote {markdown} and {html}")
    return 1 if gate is not None and gate.failed else 0


if __name__ == "__main__":
    sys.exit(main())
