"""Static audit: compile what the launchers launch, for sm_80 and sm_90, and model its time from the machine code.

Each module in MODULES exposes `audit_workloads() -> list[kernels.launch.Workload]`: the op on each shape of
the audit grid as its launcher plans it (the launcher's own plan function on meta tensors). Every launch is
compiled as Triton's JIT would compile it: `kernels.launch.specialize` asks Triton's binder for the
signature, constexprs and divisibility attributes those arguments produce (16-byte alignment, arguments equal to
1 folded in), so the registers, spills and shared memory are those of the binary that runs. (The audit used to
compile each config once with generic arguments: its numbers differed from what ran, e.g. 161 registers where
the JIT's GEMV binary has 88.) Launches that specialize alike compile once per target (`Binary.key`), in
spawned workers; results are cached on disk by that key, the kernel's source hash, the Triton version and this
analysis' source, so a second run compiles nothing new. From each sm_90 binary's SASS (`kernels.sass`) and the
datasheet table (`kernels.perf`) it predicts each workload's time on an H100 SXM and an H200, prints a row per
workload and a row per binary, writes JSON, and gates: exit 1 on a compile error, a spill, shared memory over
the target's limit, or a workload that misses its goal (`kernels.perf.GOALS`, less the documented EXEMPTIONS);
`--no-gate` reports without failing.

Modules not yet converted expose `audit_cases() -> list[AuditCase]` (a config compiled with the signature it
names); those are compiled and reported per case and target exactly as before, without a prediction.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import hashlib
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

from kernels.perf import SHARED_LIMIT
from kernels.predict import Binary, LaunchPlan, WorkloadPlan, binary_table, workload_rows, workload_table
from kernels.sass import analyze

__all__ = ["MODULES", "SHARED_LIMIT", "TARGETS", "AuditCase", "AuditPlan", "AuditRow", "Binary", "LaunchPlan",
           "WorkloadPlan", "case_rows", "compile_all", "main", "plan", "run"]  # fmt: skip

MODULES: tuple[str, ...] = ("kernels.dequant", "kernels.matmul", "kernels.lora", "kernels.adamw")
TARGETS: tuple[int, ...] = (80, 90)


@dataclass(frozen=True)
class AuditCase:
    """One compilable config of a kernel (the interface before `audit_workloads`).

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


@dataclass(frozen=True)
class AuditRow:
    """One compiled AuditCase on one target: resources from ptxas/cuobjdump, tensor-core instruction counts."""

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


_RESOURCE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_ANALYSIS = hashlib.sha256(b"".join((Path(__file__).parent / f).read_bytes() for f in ("sass.py", "audit.py")))


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _key(kernel: Any, cc: int, what: str) -> str:
    """Binary key: the specialization (or case) text, the kernel's source hash (its own and every @jit it calls),
    the Triton version, the target and this module's analysis."""
    import triton

    text = "|".join((what, kernel.cache_key, triton.__version__, str(cc), _ANALYSIS.hexdigest()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _spec_text(spec: Any) -> str:
    options = sorted((k, repr(v)) for k, v in spec.options.items() if k != "extern_libs")
    return repr((spec.key, options))


def _compile(kernel: Any, src: Any, cc: int, options: dict[str, Any], config: str, key: str) -> Binary:
    """Compile for sm_<cc> (no GPU needed) and read the binary.

    Registers, stack and static shared memory come from `cuobjdump --dump-resource-usage` on the cubin; spill
    bytes from ptxas' own -v report (always compiled fresh, never from Triton's cache, so the report exists);
    shared memory adds Triton's dynamic allocation; mma / wgmma count tensor-core instructions in the PTX; the
    SASS facts from `cuobjdump -sass` (kernels.sass).
    """
    import triton
    from triton.backends.compiler import GPUTarget

    name = getattr(kernel, "__name__", str(kernel))
    row = {"kernel": name, "config": config, "target": f"sm_{cc}", "key": key, "num_warps": options["num_warps"]}
    try:
        log = io.StringIO()
        with triton.knobs.compilation.scope(), triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
            triton.knobs.compilation.always_compile = True
            triton.knobs.nvidia.dump_ptxas_log = True
            compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=options)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "kernel.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            usage, listing = (
                subprocess.run(
                    [_tool("cuobjdump"), flag, str(cubin)], capture_output=True, text=True, check=True
                ).stdout
                for flag in ("--dump-resource-usage", "-sass")
            )
        found = _RESOURCE.search(usage)
        if found is None:
            raise RuntimeError(f"cuobjdump printed no resource usage: {usage!r}")
        regs, stack, static_shared, _local = (int(v) for v in found.groups())
        reports = _SPILLS.findall(log.getvalue())
        if not reports:  # ptxas -v always prints one; without it a spill would pass unseen
            raise RuntimeError(f"ptxas printed no spill report: {log.getvalue()[-300:]!r}")
        spills = sum(int(a) + int(b) for a, b in reports)
        ptx = compiled.asm["ptx"]
        shared = static_shared + int(compiled.metadata.shared)
        status = "spill" if spills else "ok"
        if shared > SHARED_LIMIT.get(cc, shared):
            status = f"smem>{SHARED_LIMIT[cc]}"
        return Binary(
            **row, registers=regs, spill_bytes=spills, stack_bytes=stack, shared_bytes=shared,
            mma=len(re.findall(r"^\s*mma\.sync", ptx, re.MULTILINE)),
            wgmma=len(re.findall(r"^\s*wgmma\.mma_async", ptx, re.MULTILINE)),
            status=status, sass=analyze(listing, ptx),
        )  # fmt: skip
    except Exception as exc:  # a compile error is a result of the audit, reported per binary
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        return Binary(**row, status="error", error=f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}")


def _case_source(case: AuditCase) -> tuple[Any, dict[str, Any], str]:
    from triton.compiler import ASTSource

    options = {"num_warps": case.num_warps, "num_stages": case.num_stages, **case.options}
    what = repr((sorted(case.signature.items()), sorted((k, repr(v)) for k, v in case.constexprs.items()), options))
    return ASTSource(case.kernel, case.signature, case.constexprs), options, what


def _launch_source(launch: Any, cc: int) -> tuple[Any, dict[str, Any], str]:
    from triton.compiler import ASTSource

    from kernels.launch import specialize

    spec = specialize(launch, cc)
    return ASTSource(launch.kernel, spec.signature, spec.constexprs, spec.attrs), spec.options, _spec_text(spec)


def _tensor_bytes(args: dict[str, Any]) -> int:
    import torch

    return sum(v.numel() * v.element_size() for v in args.values() if isinstance(v, torch.Tensor))


def _plan_module(job: tuple[str, tuple[int, ...]]) -> tuple[str, list[Any], str]:
    """Worker: ("workloads", [WorkloadPlan]) or ("cases", [(index, name, config, {cc: key})]) for one module,
    or ("missing", [], note). Workers start with TRITON_INTERPRET=0, so kernels are compilable JITFunctions."""
    module, targets = job
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return "missing", [], f"{module}: not present, skipped"
        raise
    if hasattr(mod, "audit_workloads"):
        plans = []
        for i, w in enumerate(mod.audit_workloads()):
            launches = []
            for la in w.launches:
                try:
                    keys = {cc: _key(la.kernel, cc, _launch_source(la, cc)[2]) for cc in targets}
                except Exception as exc:  # a launch Triton cannot bind is the module's bug: say which
                    raise ValueError(f"{module}: workload {i} ({w.op} {w.shape} {w.precision} M={w.m}) launch "
                                     f"{la.kernel_name} {la.name!r}: {type(exc).__name__}: {exc}") from exc  # fmt: skip
                launches.append(LaunchPlan(la.kernel_name, la.name, la.programs, la.num_warps, la.trips,
                                           la.elements, la.bytes or _tensor_bytes(la.args), keys))  # fmt: skip
            plans.append(WorkloadPlan(module, i, w.op, w.shape, w.precision, w.m, w.n, w.k, w.bytes, w.flops,
                                      tuple(w.torch_ops), tuple(launches)))  # fmt: skip
        return "workloads", plans, ""
    cases = []
    for i, c in enumerate(mod.audit_cases()):
        keys = {cc: _key(c.kernel, cc, _case_source(c)[2]) for cc in targets}
        cases.append((i, getattr(c.kernel, "__name__", str(c.kernel)), c.config, keys))
    return "cases", cases, ""


def _compile_batch(job: tuple[str, list[tuple[int, int, int, str]]]) -> list[Binary]:
    """Worker: compile items (index, launch index or -1 for a case, cc, key) of one module."""
    module, items = job
    mod = importlib.import_module(module)
    workloads = mod.audit_workloads() if hasattr(mod, "audit_workloads") else None
    cases = mod.audit_cases() if workloads is None else None
    out = []
    for index, launch_index, cc, key in items:
        if workloads is not None:
            launch = workloads[index].launches[launch_index]
            src, options, _ = _launch_source(launch, cc)
            out.append(_compile(launch.kernel, src, cc, options, launch.name, key))
        else:
            assert cases is not None
            src, options, _ = _case_source(cases[index])
            out.append(_compile(cases[index].kernel, src, cc, options, cases[index].config, key))
    return out


@dataclass
class AuditPlan:
    """Everything the modules ask for: workloads, old-style cases, notes, and one compile item per key."""

    workloads: list[WorkloadPlan] = field(default_factory=list)
    cases: list[tuple[str, int, str, str, dict[int, str]]] = field(default_factory=list)  # module, index, name, ...
    notes: list[str] = field(default_factory=list)
    items: dict[str, tuple[str, int, int, int]] = field(default_factory=dict)  # key -> module, index, launch, cc


def _pool(jobs: int) -> Any:
    return multiprocessing.get_context("spawn").Pool(jobs)


@contextlib.contextmanager
def _compilable() -> Any:
    """Spawned workers inherit TRITON_INTERPRET=0 (their kernels compile); this process keeps its own."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def plan(pool: Any, modules: tuple[str, ...], targets: tuple[int, ...], shapes: tuple[str, ...] = ()) -> AuditPlan:
    """Ask each module (in `pool`'s workers) for its workloads or cases; one compile item per distinct key.
    shapes: fnmatch patterns; when given, only the workloads of matching shapes (e.g. "llama2-7b.*")."""
    out = AuditPlan()
    for module, (kind, found, note) in zip(modules, pool.map(_plan_module, [(m, targets) for m in modules]),
                                           strict=True):  # fmt: skip
        if kind == "missing":
            out.notes.append(note)
        elif kind == "workloads":
            if shapes:
                found = [w for w in found if any(fnmatch.fnmatch(w.shape, p) for p in shapes)]
            out.workloads += found
            for w in found:
                for li, la in enumerate(w.launches):
                    for cc, key in la.keys.items():
                        out.items.setdefault(key, (module, w.index, li, cc))
        else:
            for index, name, config, keys in found:
                out.cases.append((module, index, name, config, keys))
                for cc, key in keys.items():
                    out.items.setdefault(key, (module, index, -1, cc))
    return out


def _cached(path: Path | None) -> Binary | None:
    """The Binary cached at `path`, or None: absent, or unreadable (then compiled again and rewritten)."""
    if path is None or not path.exists():
        return None
    try:
        return Binary.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def compile_all(pool: Any, the_plan: AuditPlan, cache: Path | None, jobs: int) -> dict[str, Binary]:
    """Binary per key: from `cache` where present, else compiled in `pool` (progress on stderr) and cached."""
    binaries: dict[str, Binary] = {}
    todo: dict[str, list[tuple[int, int, int, str]]] = {}
    for key, (module, index, launch, cc) in the_plan.items.items():
        found = _cached(cache / f"{key}.json" if cache else None)
        if found is not None:
            binaries[key] = found
        else:
            todo.setdefault(module, []).append((index, launch, cc, key))
    total = sum(len(v) for v in todo.values())
    size = max(1, min(8, -(-total // (4 * max(jobs, 1)))))
    batches = [(m, items[i : i + size]) for m, items in todo.items() for i in range(0, len(items), size)]
    print(f"audit: {len(the_plan.items)} binaries, {len(binaries)} cached, {total} to compile", file=sys.stderr)
    start = time.perf_counter()
    for done in pool.imap_unordered(_compile_batch, batches):
        for binary in done:
            binaries[binary.key] = binary
            if cache is not None and binary.status != "error":
                cache.mkdir(parents=True, exist_ok=True)
                tmp = cache / f"{binary.key}.{os.getpid()}.tmp"  # another audit may share the folder
                tmp.write_text(json.dumps(asdict(binary)))
                tmp.replace(cache / f"{binary.key}.json")
        compiled = len(binaries) - (len(the_plan.items) - total)
        print(f"audit: {compiled}/{total} compiled ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    return binaries


def case_rows(the_plan: AuditPlan, binaries: dict[str, Binary]) -> list[AuditRow]:
    """The rows of the `audit_cases()` interface, as before: one per case and target."""
    rows = []
    for _module, _index, name, config, keys in the_plan.cases:
        for cc, key in sorted(keys.items()):
            b = binaries[key]
            rows.append(AuditRow(name, config, f"sm_{cc}", b.registers, b.spill_bytes, b.stack_bytes,
                                 b.shared_bytes, b.mma, b.wgmma, b.status, b.error))  # fmt: skip
    return rows


def run(modules: tuple[str, ...] = MODULES, targets: tuple[int, ...] = TARGETS, jobs: int = 0,
        cache: Path | None = None, shapes: tuple[str, ...] = ()) -> tuple[AuditPlan, dict[str, Binary]]:  # fmt: skip
    """Plan and compile every module's workloads (or cases) for every target in `jobs` spawned workers."""
    jobs = max(1, jobs or os.cpu_count() or 1)
    with _compilable(), _pool(jobs) as pool:
        the_plan = plan(pool, modules, targets, shapes)
        return the_plan, compile_all(pool, the_plan, cache, jobs)


def main(argv: list[str] | None = None) -> int:
    """`python -m kernels.audit [--json PATH] [--jobs N] [--module NAME ...] [--cache DIR | --no-cache]
    [--no-gate]`: 1 on a compile error, a spill, shared memory over the target's limit or a missed goal."""
    from kernels.perf import gate

    parser = argparse.ArgumentParser(prog="python -m kernels.audit", description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("reports/latest/audit.json"), help="where the rows go")
    parser.add_argument("--jobs", type=int, default=0, help="compile processes (default: one per CPU)")
    parser.add_argument("--module", action="append", help="audit only these modules (default: all of MODULES)")
    parser.add_argument("--cache", type=Path, help="compiled-binary cache (default: audit-cache/ beside --json)")
    parser.add_argument("--no-cache", action="store_true", help="compile everything, read and write no cache")
    parser.add_argument("--no-gate", action="store_true", help="report only: exit 0 whatever the audit finds")
    parser.add_argument(
        "--shapes",
        action="append",
        default=[],
        metavar="PATTERN",
        help="audit only the workloads of these shapes (fnmatch, e.g. 'llama2-7b.*'; default: all)",
    )
    args = parser.parse_args(argv)
    cache = None if args.no_cache else (args.cache or args.json.parent / "audit-cache")
    start = time.perf_counter()
    the_plan, binaries = run(tuple(args.module) if args.module else MODULES, TARGETS, args.jobs, cache,
                             tuple(args.shapes))  # fmt: skip
    cases = case_rows(the_plan, binaries)
    rows = workload_rows(the_plan.workloads, binaries, TARGETS)
    misses, notes = gate(rows)
    print(binary_table(list(binaries.values())))
    if rows:
        print()
        print(workload_table(rows))
    for note in the_plan.notes:
        print(f"note: {note}")
    bad = sorted({f"{b.kernel} {b.config} {b.target}: {b.status} {b.error}".rstrip() for b in binaries.values()
                  if b.status != "ok"})  # fmt: skip
    for line in (*notes, *(f"binary {b}" for b in bad), *(f"missed {m}" for m in misses)):
        print(f"gate: {line}")
    print(f"{len(binaries)} binaries for {len(rows) // max(len(TARGETS), 1)} workloads and {len(cases)} case rows in "
          f"{time.perf_counter() - start:.0f} s; {len(bad)} binaries bad, {len(misses)} goals missed")  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps([*(asdict(r) for r in cases), *rows], indent=1))
    print(f"wrote {args.json}")
    return 0 if args.no_gate else int(bool(bad or misses))


if __name__ == "__main__":
    sys.exit(main())
