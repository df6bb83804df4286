"""`python -m reports FILE [FILE ...] --out DIR [--audit PATH] [--threshold 0.05]`: build the report."""

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
    """Parse the command line, build the report, print where it is; exit 2 (one line on stderr) on a bad argument,
    a bad results or audit file, or an output folder that cannot be written."""
    parser = _Parser(prog="python -m reports", description=__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE", help="pytest-benchmark JSON (the first is the baseline)")
    parser.add_argument("--out", default="reports/latest", help="output folder (default: reports/latest)")
    parser.add_argument("--audit", default=None, help="static kernel audit JSON (kernels/audit.py)")
    parser.add_argument("--threshold", type=_threshold, default=0.05, help="regression threshold as a fraction (0.05)")
    args = parser.parse_args(argv)
    try:
        check_folder(args.out)
    except ValueError as exc:
        print(f"error: --out {exc}", file=sys.stderr)
        return 2
    try:
        markdown, html = build(args.files, args.out, audit=args.audit, threshold=args.threshold)
    except (ReportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the folder passed check_folder, yet writing failed (a full disk, a race)
        print(f"error: --out {args.out}: cannot write the report ({exc})", file=sys.stderr)
        return 2
    print(f"wrote {markdown} and {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
