"""Shared fixtures for the report tests: the committed results files and reports built from them once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reports.files import AUDIT, CPU, EVIL, RUN_A, RUN_B


@pytest.fixture(scope="session")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """report.md and index.html comparing run A (baseline) with run B, with the audit."""
    from reports import build

    return build([RUN_A, RUN_B], tmp_path_factory.mktemp("compared"), audit=AUDIT)


@pytest.fixture(scope="session")
def cpu_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """report.md and index.html of the CPU run alone."""
    from reports import build

    return build([CPU], tmp_path_factory.mktemp("cpu"))


@pytest.fixture(scope="session")
def evil_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU run with markup and Markdown syntax in its device, shape, impl and error strings."""
    data = json.loads(CPU.read_text())
    data["machine_info"]["qkbench"]["device"] = EVIL
    for bench in data["benchmarks"]:
        bench["extra_info"]["shape"] = EVIL
        bench["extra_info"]["error"] = EVIL if bench["extra_info"]["status"] != "ok" else None
    data["benchmarks"][0]["extra_info"]["impl"] = EVIL
    data["benchmarks"][1]["extra_info"]["impl"] = r"a$\frac{b$_^c"  # mathtext that matplotlib cannot parse
    path = tmp_path_factory.mktemp("evil") / "evil.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def evil_report(evil_results: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """report.md and index.html built from `evil_results`."""
    from reports import build

    return build([evil_results], tmp_path_factory.mktemp("evil_out"))
