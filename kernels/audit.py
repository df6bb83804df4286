"""Static audit: compile every kernel config the launchers may pick, ahead of time, for sm_80 and sm_90.

CONTRACT (shared by every kernel module; the compile logic below is filled in by the kernels work):
each module in MODULES defines `audit_cases() -> list[AuditCase]`, one case per (kernel, config) that its
launcher may select. `python -m kernels.audit` compiles each case for each target with
`triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", cc, 32))`, reads registers,
spills, shared memory and tensor-core instructions, prints a table, writes JSON, and exits non-zero on a
compile error or a spill.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MODULES: tuple[str, ...] = ("kernels.dequant", "kernels.matmul", "kernels.lora", "kernels.adamw")
TARGETS: tuple[int, ...] = (80, 90)


@dataclass(frozen=True)
class AuditCase:
    """One compilable specialization of a kernel.

    kernel: the @triton.jit function; config: a short readable name (e.g. "BM64-BN64-BK32-w4-s3");
    signature: argument name -> Triton type string ("*fp16", "i32", "fp32", "constexpr");
    constexprs: argument name -> value for the constexpr arguments; num_warps / num_stages as launched;
    options: any other compile option the launch passes (e.g. {"enable_fp_fusion": False}).
    """

    kernel: Any
    config: str
    signature: dict[str, str]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    options: dict[str, Any] = field(default_factory=dict)
    launch: Any = None  # a kernels.launch.Launch: compiled as the JIT would specialize its arguments


def launch_cases(workloads: list[Any]) -> list[AuditCase]:
    """One AuditCase per distinct (kernel, config name) among the workloads' launches, in order of appearance."""
    seen: dict[tuple[str, str], AuditCase] = {}
    for load in workloads:
        for launch in load.launches:
            key = (launch.kernel_name, launch.name)
            if key not in seen:
                kernel = (
                    getattr(launch.kernel, "fn", launch.kernel)
                    if not hasattr(launch.kernel, "params")
                    else launch.kernel
                )
                seen[key] = AuditCase(kernel, launch.name, {}, {}, launch.num_warps, launch.num_stages,
                                      dict(launch.options), launch)  # fmt: skip
    return list(seen.values())


def module_cases(mod: Any) -> list[AuditCase]:
    """A kernel module's cases: from its workloads (the launchers' own launches) or its older audit_cases()."""
    if hasattr(mod, "audit_workloads"):
        return launch_cases(mod.audit_workloads())
    return list(mod.audit_cases())


@dataclass(frozen=True)
class AuditRow:
    """One compiled (kernel, config, target): resources from ptxas/cuobjdump, tensor-core instruction counts."""

    kernel: str
    config: str
    target: str
    registers: int | None = None
    spill_bytes: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    mma: int | None = None
    wgmma: int | None = None
    status: str = "ok"
    error: str = ""


# The most shared memory one block may use (opt-in): A100 163 KiB, H100 227 KiB (CUDA guide, compute capabilities).
SHARED_LIMIT: dict[int, int] = {80: 163 * 1024, 90: 227 * 1024}
_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_case(case: AuditCase, cc: int) -> AuditRow:
    """Compile one case for sm_<cc> (no GPU needed) and read its resources.

    Registers, stack and static shared memory come from `cuobjdump --dump-resource-usage` on the cubin; spill
    bytes from ptxas' own -v report (spill stores + loads), captured while Triton compiles (always fresh, never
    from Triton's cache, so the report exists); shared memory adds Triton's dynamic allocation; mma / wgmma count
    the tensor-core instructions in the PTX.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name = getattr(case.kernel, "__name__", str(case.kernel))
    row = {"kernel": name, "config": case.config, "target": f"sm_{cc}"}
    try:
        options = {"num_warps": case.num_warps, "num_stages": case.num_stages, **case.options}
        if case.launch is not None:  # the JIT's own specialization of the launch's arguments
            from kernels.launch import specialize

            spec = specialize(case.launch, cc)
            src = ASTSource(case.kernel, spec.signature, spec.constexprs, spec.attrs)
            options = {k: spec.options[k] for k in ("num_warps", "num_stages", "enable_fp_fusion")}
        else:
            src = ASTSource(case.kernel, case.signature, case.constexprs)
        log = io.StringIO()
        with triton.knobs.compilation.scope(), triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            triton.knobs.compilation.always_compile = True
            triton.knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", cc, 32),
                options=options,
            )
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "kernel.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            usage = subprocess.run(
                [_cuobjdump(), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
            ).stdout
        found = _RESOURCE.search(usage)
        if found is None:
            raise RuntimeError(f"cuobjdump printed no resource usage: {usage!r}")
        regs, stack, static_shared, _local = (int(v) for v in found.groups())
        spills = sum(int(a) + int(b) for a, b in _SPILLS.findall(log.getvalue()))
        ptx = compiled.asm["ptx"]
        shared = static_shared + int(compiled.metadata.shared)
        status = "spill" if spills else "ok"
        if shared > SHARED_LIMIT.get(cc, shared):
            status = f"smem>{SHARED_LIMIT[cc]}"
        return AuditRow(
            **row,
            registers=regs,
            spill_bytes=spills,
            stack_bytes=stack,
            shared_bytes=shared,
            mma=len(re.findall(r"^\s*mma\.sync", ptx, re.MULTILINE)),
            wgmma=len(re.findall(r"^\s*wgmma\.mma_async", ptx, re.MULTILINE)),
            status=status,
        )
    except Exception as exc:  # a compile error is a result of the audit, reported per row
        return AuditRow(**row, status="error", error=f"{type(exc).__name__}: {_last_line(exc)}")


def _last_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def collect(modules: tuple[str, ...] = MODULES) -> tuple[list[tuple[str, int, AuditCase]], list[str]]:
    """(module, index, case) for every module's audit_cases(); a module not written yet is skipped with a note."""
    cases: list[tuple[str, int, AuditCase]] = []
    notes: list[str] = []
    for module in modules:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module.startswith(exc.name):
                notes.append(f"{module}: not present, skipped")
                continue
            raise
        cases.extend((module, i, case) for i, case in enumerate(module_cases(mod)))
    return cases, notes


def _compile_job(job: tuple[str, int, int]) -> AuditRow:
    """Worker: compile case `index` of `module` for sm_<cc>. Workers start with TRITON_INTERPRET=0, so their
    kernels are compilable JITFunctions (the parent's may be the interpreter's wrappers)."""
    module, index, cc = job
    case = module_cases(importlib.import_module(module))[index]
    return compile_case(case, cc)


def audit(cases: list[tuple[str, int, AuditCase]], targets: tuple[int, ...] = TARGETS, jobs: int = 0) -> list[AuditRow]:
    """Compile every case for every target in `jobs` fresh worker processes (default: one per CPU)."""
    work = [(module, index, cc) for module, index, _ in cases for cc in targets]
    jobs = min(jobs or os.cpu_count() or 1, len(work)) or 1
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"  # inherited by the spawned workers only; this process keeps its kernels
    rows: list[AuditRow] = []
    start, step = time.perf_counter(), max(1, -(-len(work) // 10))
    try:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for row in pool.imap(_compile_job, work, chunksize=1):  # in order, as they finish
                rows.append(row)
                if len(rows) % step == 0 or len(rows) == len(work):  # progress: minutes on a small machine
                    done = f"audit: {len(rows)}/{len(work)} configs compiled ({time.perf_counter() - start:.0f} s)"
                    print(done, file=sys.stderr, flush=True)
        return rows
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def table(rows: list[AuditRow]) -> str:
    """A fixed-width text table of the rows."""
    heads = ("kernel", "config", "target", "regs", "spill", "stack", "smem", "mma", "wgmma", "status")
    body = [
        (r.kernel, r.config, r.target, r.registers, r.spill_bytes, r.stack_bytes, r.shared_bytes, r.mma, r.wgmma,
         r.status if not r.error else f"{r.status}: {r.error}")
        for r in rows
    ]  # fmt: skip
    cells = [tuple("-" if v is None else str(v) for v in line) for line in (heads, *body)]
    widths = [max(len(c[i]) for c in cells[:]) if i < 9 else 0 for i in range(len(heads))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def main(argv: list[str] | None = None) -> int:
    """`python -m kernels.audit [--json PATH] [--jobs N] [--module NAME ...]`: 1 on a compile error, a spill or
    more shared memory than the target has."""
    parser = argparse.ArgumentParser(prog="python -m kernels.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("reports/latest/audit.json"), help="where the rows go")
    parser.add_argument("--jobs", type=int, default=0, help="compile processes (default: one per CPU)")
    parser.add_argument("--module", action="append", help="audit only these modules (default: all of MODULES)")
    args = parser.parse_args(argv)
    cases, notes = collect(tuple(args.module) if args.module else MODULES)
    start = time.perf_counter()
    rows = audit(cases, jobs=args.jobs)
    print(table(rows))
    for note in notes:
        print(f"note: {note}")
    bad = [r for r in rows if r.status != "ok"]
    print(f"{len(rows)} compiled in {time.perf_counter() - start:.0f} s; {len(bad)} with a compile error or a spill")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(f"wrote {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
