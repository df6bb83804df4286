"""Entry points: `nox -s tests`, `nox -s bench`, `nox -s report -- FILES`, `nox -s audit`, `nox -s lint`, `nox -s gpu`.

Sessions run from the repository root; the packages import from the checkout (pytest's pythonpath, or
PYTHONPATH below). Each session's virtualenv sees the interpreter's own site-packages, so a GPU box keeps
the CUDA torch it has: the CPU build torch==2.13.0 is installed only where no torch is importable at all.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES: list[str] = PYPROJECT["project"]["dependencies"]
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
CPU_TORCH = "torch==2.13.0"

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"
VENV = {"venv_params": ["--system-site-packages"]}


def _install(session: nox.Session, *extras: str) -> None:
    """The project's dependencies, never replacing an importable torch (a GPU box's CUDA build)."""
    probe = session.run(
        "python", "-c", "import importlib.util as u; print(bool(u.find_spec('torch')))", silent=True, log=False
    )
    if "True" not in str(probe):
        session.install(CPU_TORCH)
    requirements = [d for d in DEPENDENCIES if not d.startswith("torch")]
    for extra in extras:
        requirements += EXTRAS[extra]
    session.install(*requirements)
    session.env["PYTHONPATH"] = str(ROOT)


@nox.session(**VENV)
def tests(session: nox.Session) -> None:
    """Correctness tests: the CPU with Triton's interpreter, or the GPU (with its `gpu` sweeps) when present."""
    _install(session, "test")
    session.run("python", "-m", "pytest", *(session.posargs or ["tests"]))


@nox.session(**VENV)
def audit(session: nox.Session) -> None:
    """Compile what the launchers launch for sm_80 and sm_90 and model its time on an H100/H200; fail on a compile
    error, a spill, shared memory over the limit or a missed goal (`-- --no-gate` reports only)."""
    _install(session)
    session.run("python", "-m", "kernels.audit", *session.posargs)


@nox.session(**VENV)
def bench(session: nox.Session) -> None:
    """Benchmark suites -> reports/latest/results.json -> report.md + index.html."""
    _install(session, "test")
    session.run("python", "-m", "suites", *session.posargs)


@nox.session(**VENV)
def gpu(session: nox.Session) -> None:
    """One short call on a GPU: the GPU tests, the matmul/LoRA/AdamW suites on the quick grid, and the report with
    the audit's predictions beside the measurements, under reports/reference/<gpu>/ (or `-- --out DIR`)."""
    _install(session, "test")
    probe = session.run("python", "-c", GPU_NAME, silent=True, log=False)
    name = str(probe).strip().splitlines()[-1] if probe else ""
    if not name or name == "none":
        session.error("nox -s gpu needs a CUDA device (torch.cuda.is_available() is False)")
    out = session.posargs[session.posargs.index("--out") + 1] if "--out" in session.posargs else None
    out = out or str(ROOT / "reports" / "reference" / name)
    session.run("python", "-m", "pytest", "tests/kernels", "-m", "gpu or not gpu", "-q", "-x")
    session.run("python", "-m", "suites", "--profile", "quick", "-k", "matmul or lora or optim", "--out", out)


# The GPU's folder name under reports/reference/, e.g. "nvidia-h200" ("none" without a CUDA device).
GPU_NAME = (
    "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-')"
    " if torch.cuda.is_available() else 'none')"
)


@nox.session(**VENV)
def report(session: nox.Session) -> None:
    """Build a report from results files: `nox -s report -- FILE [FILE ...] [--out DIR]`."""
    _install(session)
    session.run("python", "-m", "reports", *session.posargs)


@nox.session(**VENV)
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy on quant/ suites/ reports/, and the module size budget."""
    session.install(*EXTRAS["lint"])
    session.run("python", "-m", "ruff", "check", ".")
    session.run("python", "-m", "ruff", "format", "--check", ".")
    _install(session)
    session.run("python", "-m", "mypy")
    size(session)


MODULE_LINES_MAX = 600  # STYLE §2: 150-400 lines a module, a hard ceiling of 600


@nox.session(python=False)
def size(session: nox.Session) -> None:
    """Fail when a module passes the line budget."""
    folders = ("quant", "kernels", "suites", "reports", "tests")
    too_long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for folder in folders
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > MODULE_LINES_MAX
    ]
    if too_long:
        session.error(f"modules over {MODULE_LINES_MAX} lines: " + "; ".join(too_long))
