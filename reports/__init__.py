"""reports/: benchmark results (pytest-benchmark JSON) -> one tidy DataFrame -> report.md + index.html.

`build(paths, out_dir)` is the entry point (also `python -m reports FILE [FILE ...] --out DIR`). Importing
this package is light: pandas, seaborn, matplotlib and jinja2 load inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reports.load import ReportError

if TYPE_CHECKING:
    from reports.gate import Gate

__all__ = ["ReportError", "build"]


def build(
    paths: str | Path | list[str | Path] | tuple[str | Path, ...],
    out_dir: str | Path,
    audit: str | Path | None = None,
    threshold: float = 0.05,
    gate: Gate | None = None,
    history: str | Path | None = None,
) -> tuple[Path, Path]:
    """Read results files, write `out_dir`/report.md (with figures/) and `out_dir`/index.html; return both paths.

    paths: one or several results files; the first is the baseline when comparing. audit: kernels/audit.py's
    JSON. threshold: the fraction past which a slower (or bigger, or less accurate) case is a regression.
    gate: reports.gate.judge's verdicts on these runs, shown first. history: a history store (reports/history.py)
    whose figure and steps end the report.

    Raises:
        ReportError: a results, audit or history file that is missing, empty, corrupt or not in the expected schema.
        ValueError: a threshold that is negative or not finite.
    """
    import math

    from reports import assemble, derive
    from reports.compare import compare
    from reports.load import load, load_audit
    from reports.render import write_html, write_markdown

    if isinstance(paths, str | Path):  # one file given bare
        paths = [paths]
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold: {threshold!r}; expected a finite fraction >= 0 (0.05 is 5%)")
    results = load(paths)
    audit_rows = load_audit(audit) if audit is not None else None
    cases = derive.derive(results.cases)
    runs = [str(r) for r in results.runs["run"]]
    comparison = compare(cases, runs, threshold) if len(runs) > 1 else None
    missing = derive.missing(results)
    flags = assemble.flags(results, comparison, missing, audit_rows)
    sections = assemble.sections(results, cases, comparison, audit_rows, missing)
    if gate is not None:  # reports/gate.py: the regression gate's verdicts first
        from reports import gate as gating

        flags = [*gating.flags(gate), *flags]
        sections.insert(0, gating.section(gate))
    if history is not None:  # reports/history.py: each case's median over the commits
        from reports.history import section as history_section

        sections.append(history_section(history))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / "figures").glob("*.png"):  # a previous build's figures: this one may draw fewer
        stale.unlink()
    devices = ", ".join(
        dict.fromkeys(str(d) if isinstance(d, str) else "unknown device" for d in results.runs["device"])
    )
    title = f"qkbench report: {devices}"
    return write_markdown(out / "report.md", title, flags, sections), write_html(
        out / "index.html", title, flags, sections
    )
