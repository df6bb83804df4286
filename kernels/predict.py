"""The audit's rows: each workload's compiled launches through the model (`kernels.perf`), and the text tables.

Inputs: `WorkloadPlan`s (a Workload without its kernels and tensors: its launches as `LaunchPlan`s, each with
its binary's key per target) and the compiled `Binary` per key; both plain data, passed between processes and
cached as JSON by `kernels.audit`.

One row per workload and compile target. The resource fields (kernel, config, registers, spills, shared memory,
tensor-core counts) and the SASS fields are those of the workload's main launch: the one with the largest
predicted H100 time (the first launch where there is no prediction); `status` is the worst of all its launches
("error" > "smem>..." > "spill" > "ok"). Loop counts are per source iteration of the main loop, one warp:
    instr_per_weight  warp instructions of the main loop, all trips, per element the program consumes
                      (all of the program's instructions where the kernel has no loop)
    ldg128            128-bit global loads (LDG.128 and cp.async LDGSTS.128); ldg_u8: 8-bit (LDG.U8, LDG.S8)
    global_gathers    global loads whose address derives from loaded data (kernels.sass)
    ctas_per_sm, waves  occupancy of the main launch's binary; waves = programs ÷ (132 SMs × ctas_per_sm)
    programs          the main launch's program (CTA) count
Predictions (sm_90 rows only; None on sm_80, and where a launch failed): predicted_us_h100/_h200, their
fraction (`frac_of` says of what: the memory roofline or cuBLAS bf16), both fractions on the H100, `bound`
(H100) and `bound_h200`, and `gate` ("" where no goal applies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kernels.perf import GPUS, LaunchCost, ctas_per_sm, launch_cost, predict
from kernels.sass import SassStats

__all__ = ["Binary", "LaunchPlan", "WorkloadPlan", "binary_table", "launch_totals", "workload_rows", "workload_table"]


@dataclass(frozen=True)
class Binary:
    """One compiled specialization on one target: resources, PTX tensor-core counts and its SASS facts.

    status: "ok", "spill", "smem>LIMIT" or "error" (then `error` says why and the counts are None).
    """

    kernel: str
    config: str
    target: str
    key: str
    num_warps: int
    registers: int | None = None
    spill_bytes: int | None = None
    stack_bytes: int | None = None
    shared_bytes: int | None = None
    mma: int | None = None
    wgmma: int | None = None
    status: str = "ok"
    error: str = ""
    sass: SassStats | None = None

    @staticmethod
    def from_json(data: dict[str, Any]) -> Binary:
        sass = data.pop("sass")
        if sass is not None:
            span = sass.pop("loop_span")
            sass = SassStats(**sass, loop_span=tuple(span) if span else None)
        return Binary(**data, sass=sass)


@dataclass(frozen=True)
class LaunchPlan:
    """One launch of a workload as the parent process needs it (picklable; no kernel, no tensors)."""

    kernel: str
    config: str
    programs: int
    num_warps: int
    trips: int
    elements: int
    bytes: int  # every tensor argument once, in full
    keys: dict[int, str]  # compute capability -> Binary.key


@dataclass(frozen=True)
class WorkloadPlan:
    """A Workload without its kernels: what the model needs."""

    module: str
    index: int
    op: str
    shape: str
    precision: str
    m: int
    n: int
    k: int
    bytes: int
    flops: int
    torch_ops: tuple[str, ...]
    launches: tuple[LaunchPlan, ...]


_SEVERITY = {"ok": 0, "spill": 1, "smem": 2, "error": 3}


def launch_totals(launch: LaunchPlan, binary: Binary) -> tuple[float, float]:
    """(warp instructions, tensor-core flops) over all programs: programs × warps × (main loop per iteration ×
    trips + the rest of the code once).

    Raises:
        ValueError: the binary has no SASS facts (it failed to compile).
    """
    s = binary.sass
    if s is None:
        raise ValueError(f"binary {binary.kernel} {binary.config} {binary.target}: no SASS ({binary.status})")
    per_warp = s.per_iteration(s.loop_instructions) * launch.trips + (s.instructions - s.loop_instructions)
    flops = s.per_iteration(s.mma_flops_loop) * launch.trips + s.mma_flops_rest
    scale = launch.programs * launch.num_warps
    return scale * per_warp, scale * flops


def _cost(gpu: str, launch: LaunchPlan, binary: Binary) -> LaunchCost:
    instructions, flops = launch_totals(launch, binary)
    s = binary.sass
    assert s is not None
    return launch_cost(GPUS[gpu], launch.programs, launch.num_warps, launch.bytes, instructions, flops,
                       s.mma_dtype or "bf16", s.mma_sync)  # fmt: skip


_LOOP_FIELDS = ("instr_per_weight", "loop_instructions", "unroll", "ldg128", "ldg_u8", "global_gathers", "lds", "sts",
                "ldsm", "hgmma_a_registers", "hgmma_a_shared", "wgmma_wait", "ctas_per_sm", "waves",
                "programs")  # fmt: skip


def _loop_fields(launch: LaunchPlan, b: Binary, cc: int) -> dict[str, Any]:
    s = b.sass
    ctas = ctas_per_sm(b.registers, b.shared_bytes or 0, launch.num_warps, cc) if b.registers is not None else None
    waves = launch.programs / (GPUS["h100"].sms * ctas) if ctas else None
    if s is None:
        return {"ctas_per_sm": ctas, "waves": waves, "programs": launch.programs}
    loop = s.loop_instructions or s.instructions
    trips = launch.trips if s.loop_instructions else 1
    per = s.per_iteration
    return {
        "instr_per_weight": launch.num_warps * per(loop) * trips / launch.elements if launch.elements else None,
        "loop_instructions": per(s.loop_instructions),
        "unroll": s.unroll,
        "ldg128": per(s.loads.get("LDG.128", 0) + s.loads.get("LDGSTS.128", 0)),
        "ldg_u8": per(s.loads.get("LDG.U8", 0) + s.loads.get("LDG.S8", 0)),
        "global_gathers": per(s.global_gathers),
        "lds": per(s.lds),
        "sts": per(s.sts),
        "ldsm": per(s.ldsm),
        "hgmma_a_registers": per(s.hgmma_a_registers),
        "hgmma_a_shared": per(s.hgmma_a_shared),
        "wgmma_wait": s.wgmma_wait,
        "ctas_per_sm": ctas,
        "waves": waves,
        "programs": launch.programs,
    }


_RESOURCES = ("registers", "spill_bytes", "stack_bytes", "shared_bytes", "mma", "wgmma")


def _predictions(w: WorkloadPlan, costs: dict[str, list[LaunchCost]]) -> dict[str, Any]:
    """The prediction fields of one workload (all None without launch costs: sm_80, or a launch that failed)."""
    out: dict[str, Any] = {}
    for g, gpu in GPUS.items():
        p = None
        if costs:
            try:
                p = predict(gpu, costs[g], w.torch_ops, w.bytes, w.flops, (w.m, w.n, w.k))
            except ValueError as exc:
                raise ValueError(f"{w.module} workload {w.index} ({w.op} {w.shape} M={w.m}): {exc}") from exc
        out[f"predicted_us_{g}"] = p.seconds * 1e6 if p else None
        out[f"predicted_frac_{g}"] = p.frac if p else None
        if g == "h100":
            out["memory_frac_h100"] = p.memory_frac if p else None
            out["cublas_frac_h100"] = p.cublas_frac if p else None
            out["frac_of"] = p.frac_of if p else None
        out["bound" if g == "h100" else f"bound_{g}"] = p.bound if p else None
    return out


def workload_rows(
    workloads: list[WorkloadPlan], binaries: dict[str, Binary], targets: tuple[int, ...] = (80, 90)
) -> list[dict[str, Any]]:
    """A row per workload and target (module docstring), in the order given and of `targets`.

    Raises:
        ValueError: a workload's torch op does not follow the grammar (kernels.perf.torch_op_seconds).
    """
    rows = []
    for w in workloads:
        for cc in targets:
            bins = [binaries[la.keys[cc]] for la in w.launches]
            costs: dict[str, list[LaunchCost]] = {}
            if cc == 90 and all(b.sass is not None for b in bins):
                costs = {g: [_cost(g, la, b) for la, b in zip(w.launches, bins, strict=True)] for g in GPUS}
            main = max(range(len(bins)), key=lambda i: costs["h100"][i].seconds) if costs and bins else 0
            b = bins[main] if bins else None
            la = w.launches[main] if bins else None
            row: dict[str, Any] = {
                "kernel": b.kernel if b else "",
                "config": b.config if b else "",
                "target": f"sm_{cc}",
            }
            row.update({f: getattr(b, f) if b else None for f in _RESOURCES})
            row["status"] = max((x.status for x in bins), key=lambda s: _SEVERITY[s.split(">")[0]], default="ok")
            row["error"] = next((x.error for x in bins if x.error), "")
            row.update(op=w.op, shape=w.shape, M=w.m, N=w.n, K=w.k, precision=w.precision, bytes=w.bytes,
                       flops=w.flops, torch_ops=list(w.torch_ops), launches=len(w.launches),
                       programs=la.programs if la else 0, num_warps=la.num_warps if la else None,
                       trips=la.trips if la else None)  # fmt: skip
            row.update(dict.fromkeys(_LOOP_FIELDS))
            if b is not None and la is not None:
                row.update(_loop_fields(la, b, cc))
            row.update(_predictions(w, costs), gate="")
            rows.append(row)
    return rows


def _fixed(heads: tuple[str, ...], body: list[tuple[Any, ...]]) -> str:
    cells = [tuple("-" if v is None else str(v) for v in line) for line in (heads, *body)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(heads) - 1)] + [0]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def _num(value: float | None, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def binary_table(binaries: list[Binary]) -> str:
    """A row per compiled binary: resources, the main loop (instructions per pass / unroll, "?" where the PTX
    could not confirm the unroll) and occupancy."""
    heads = ("kernel", "config", "target", "regs", "spill", "stack", "smem", "mma", "wgmma", "loop", "ctas", "status")
    body = []
    for b in sorted(binaries, key=lambda b: (b.kernel, b.config, b.target)):
        cc = int(b.target.removeprefix("sm_"))
        ctas = ctas_per_sm(b.registers, b.shared_bytes or 0, b.num_warps, cc) if b.registers is not None else None
        loop = f"{b.sass.loop_instructions}/{b.sass.unroll}{'' if b.sass.unroll_known else '?'}" if b.sass else None
        status = f"{b.status}: {b.error}" if b.error else b.status
        body.append((b.kernel, b.config, b.target, b.registers, b.spill_bytes, b.stack_bytes, b.shared_bytes,
                     b.mma, b.wgmma, loop, ctas, status))  # fmt: skip
    return _fixed(heads, body)


def workload_table(rows: list[dict[str, Any]]) -> str:
    """A row per workload (sm_90 rows): the main launch's SASS facts, occupancy and the predictions."""
    heads = ("op", "shape", "M", "precision", "launches", "main launch", "instr/w", "ldg128", "ldg_u8", "gathers",
             "ctas", "waves", "H100 µs", "frac", "H200 µs", "frac", "of", "bound", "gate")  # fmt: skip
    body = [
        (r["op"], r["shape"], r["M"], r["precision"], r["launches"], f"{r['kernel']}:{r['config']}",
         _num(r.get("instr_per_weight"), 3), _num(r.get("ldg128"), 1), _num(r.get("ldg_u8"), 1),
         _num(r.get("global_gathers"), 1), r.get("ctas_per_sm"), _num(r.get("waves")), _num(r["predicted_us_h100"], 1),
         _num(r["predicted_frac_h100"]), _num(r["predicted_us_h200"], 1), _num(r["predicted_frac_h200"]),
         r["frac_of"], r["bound"], r["gate"] or ("" if r["status"] == "ok" else r["status"]))
        for r in rows
        if r["target"] == "sm_90"
    ]  # fmt: skip
    return _fixed(heads, body)
