"""`python -m reports FILE [FILE ...] --out DIR [--audit PATH] [--threshold 0.05]`: build the report."""

from __future__ import annotations

import argparse
import sys

from reports import ReportError, build


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, build the report, print where it is; exit 2 on a bad results file."""
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    parser.add_argument("files", nargs="+", metavar="FILE", help="pytest-benchmark JSON (the first is the baseline)")
    parser.add_argument("--out", default="reports/latest", help="output folder (default: reports/latest)")
    parser.add_argument("--audit", default=None, help="static kernel audit JSON (kernels/audit.py)")
    parser.add_argument("--threshold", type=float, default=0.05, help="regression threshold as a fraction (0.05)")
    args = parser.parse_args(argv)
    try:
        markdown, html = build(args.files, args.out, audit=args.audit, threshold=args.threshold)
    except (ReportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {markdown} and {html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
