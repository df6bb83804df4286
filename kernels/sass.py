"""Read a kernel's machine code: the main loop, its instructions, loads, gathers and tensor-core operations.

Input: the text of `cuobjdump -sass` on a cubin (one kernel) and the PTX it was assembled from. The facts
`kernels.audit` models time from, each a static count (what the code holds, not what runs):

- main loop: among the loops (a `BRA` to an earlier address; a branch to itself, the padding after `EXIT`, is
  not a loop) that hold a global memory or tensor-core instruction, the innermost ones (holding no other such
  loop); of those, the one with the most instructions. A spin-wait loop on a barrier holds neither and never
  counts. ptxas unrolls some loops (a runtime trip count: four copies of the body and a remainder); the PTX
  keeps one copy, so `unroll` = the SASS loop's global memory and tensor-core instructions ÷ those of the PTX
  main loop (same rule) when that divides evenly; otherwise 1, with `unroll_known` False (no PTX given, or a
  PTX instruction that ptxas splits, such as a tf32 mma). Counts per iteration are per pass ÷ unroll.
- global load widths: LDG (and LDGSTS, cp.async) by width: .128, .64, 32-bit, .U16/.S16, .U8/.S8; UTMALDG (TMA).
- global gather: an LDG or LDGSTS in the main loop whose address registers hold a value computed from loaded
  data (a forward data-flow over the whole kernel: loads taint their destinations, any instruction reading a
  tainted register taints what it writes, an unpredicated write of untainted values clears; branch targets join
  the states that reach them). A code-book look-up indexed by loaded nibbles is one; a pointer walk is not.
- shared memory: LDS, STS and LDSM (ldmatrix) in the main loop.
- tensor cores: HGMMA (wgmma; A from registers when its second operand is a register, else both operands from
  shared memory through descriptors), HMMA/IMMA (mma.sync); flops per warp from the shape; the smallest
  `WARPGROUP.DEPBAR.LE gsb0, N` in the loop (N = 0 waits for every wgmma: no overlap across iterations).
- STL/LDL: local memory, the spill traffic.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Instr", "SassStats", "analyze", "main_loop", "parse_ptx_loop_ops", "parse_sass"]

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
_REG = re.compile(r"\b(U?R\d+|U?P\d+)(\.64|\.128)?\b")
_TARGET = re.compile(r"^(0x[0-9a-f]+)")
_GLOBAL = ("LDG", "STG", "LDGSTS", "ATOMG", "REDG", "RED", "UTMALDG", "UTMASTG", "LD", "ST", "ATOM")
_MMA = ("HGMMA", "IGMMA", "QGMMA", "HMMA", "IMMA")
_LOADS = ("LDG", "LDS", "LDSM", "LD", "ATOMG", "ATOM", "ATOMS")  # data they write is loaded data


@dataclass(frozen=True)
class Instr:
    """One SASS instruction: address, guard predicate ("" / "@P0" / "@!P1"), opcode with modifiers, operands."""

    addr: int
    guard: str
    opcode: str
    operands: tuple[str, ...]

    @property
    def base(self) -> str:
        return self.opcode.split(".", 1)[0]

    @property
    def mods(self) -> tuple[str, ...]:
        return tuple(self.opcode.split(".")[1:])

    @property
    def dead(self) -> bool:
        """`@!PT`: never executes (scheduling filler)."""
        return self.guard == "@!PT"


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """The instructions of each `Function :` in a `cuobjdump -sass` listing (encodings and comments dropped)."""
    functions: dict[str, list[Instr]] = {}
    current: list[Instr] | None = None
    for line in text.splitlines():
        if "Function :" in line:
            current = functions.setdefault(line.split("Function :", 1)[1].strip(), [])
            continue
        found = _LINE.search(line)
        if found is None or current is None:
            continue
        addr, guard, opcode, rest = found.groups()
        operands = tuple(op.strip() for op in rest.split(",") if op.strip()) if rest.strip() else ()
        current.append(Instr(int(addr, 16), (guard or "").strip(), opcode, operands))
    return functions


def _branch_target(ins: Instr) -> int | None:
    if ins.base not in ("BRA", "CALL") or not ins.operands:
        return None
    found = _TARGET.match(ins.operands[-1])
    return int(found.group(1), 16) if found else None


def _is_work(ins: Instr) -> bool:
    return not ins.dead and (ins.base in _GLOBAL or ins.base in _MMA)


def _loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """(first, last) instruction indices of each backward branch's range."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    out = []
    for i, ins in enumerate(instrs):
        target = _branch_target(ins)
        if ins.base == "BRA" and target is not None and target < ins.addr and target in index:
            out.append((index[target], i))
    return out


def _pick_main(ranges: list[tuple[int, int]], work: list[int]) -> tuple[int, int] | None:
    """The main-loop rule over ranges of items, `work[i]` = 1 where item i is global memory or tensor core."""

    def has_work(r: tuple[int, int]) -> bool:
        return sum(work[r[0] : r[1] + 1]) > 0

    candidates = [r for r in ranges if has_work(r)]
    inner = [r for r in candidates if not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in candidates)]
    return max(inner, key=lambda r: (r[1] - r[0], -r[0]), default=None)


def main_loop(instrs: list[Instr]) -> tuple[int, int] | None:
    """(first, last) indices of the main loop (module docstring), or None for a kernel without a loop."""
    return _pick_main(_loops(instrs), [int(_is_work(ins)) for ins in instrs])


_PTX_WORK = re.compile(
    r"^\s*(@%?!?\w+\s+)?(ld\.global|st\.global|cp\.async\.(?!commit|wait|bulk\.commit|bulk\.wait)|"
    r"atom\.global|red\.global|wgmma\.mma_async|mma\.sync|cp\.async\.bulk\.tensor)"
)
_PTX_LABEL = re.compile(r"^(\$L__\w+):")
_PTX_BRA = re.compile(r"^\s*(@%?!?\w+\s+)?bra(\.uni)?\s+(\$L__\w+);")


def parse_ptx_loop_ops(ptx: str) -> int | None:
    """Global memory and tensor-core instructions in the PTX main loop (the same rule as `main_loop`)."""
    lines = [line.split("//", 1)[0] for line in ptx.splitlines()]
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _PTX_LABEL.match(line))}
    ranges = []
    for i, line in enumerate(lines):
        found = _PTX_BRA.match(line)
        if found and found.group(3) in labels and labels[found.group(3)] < i:
            ranges.append((labels[found.group(3)], i))
    work = [int(bool(_PTX_WORK.match(line))) for line in lines]
    best = _pick_main(ranges, work)
    return None if best is None else sum(work[best[0] : best[1] + 1])


@dataclass(frozen=True)
class SassStats:
    """Static facts of one kernel's SASS (module docstring); loop counts are per pass of the compiled loop."""

    instructions: int  # every instruction but NOPs and the trailing self-branch
    loop_instructions: int = 0  # one pass of the main loop (0: no loop)
    unroll: int = 1  # source iterations per pass
    unroll_known: bool = True  # False: no PTX loop, or its count does not divide the SASS loop's (unroll 1 assumed)
    loop_span: tuple[int, int] | None = None  # addresses of its first and last instruction
    loads: dict[str, int] = field(default_factory=dict)  # "LDG.128", "LDG.U8", "LDGSTS.128", "TMA" -> in loop
    global_gathers: int = 0
    lds: int = 0
    sts: int = 0
    ldsm: int = 0
    mma: int = 0  # tensor-core instructions in the loop
    mma_total: int = 0
    mma_flops_loop: float = 0.0  # per warp, per pass
    mma_flops_rest: float = 0.0  # per warp, outside the loop
    mma_dtype: str = ""  # operand type of the tensor-core instructions: bf16, fp16, tf32, int8, fp8
    mma_sync: bool = False  # mma.sync (HMMA/IMMA) rather than wgmma
    hgmma_a_registers: int = 0
    hgmma_a_shared: int = 0
    wgmma_wait: int | None = None
    local_accesses: int = 0

    def per_iteration(self, value: float) -> float:
        """A per-pass count of the main loop per source iteration."""
        return value / self.unroll


def _width(ins: Instr) -> str:
    for mod in ins.mods:
        if mod in ("128", "64", "U8", "S8", "U16", "S16"):
            return mod
    return "32"


def _mma_shape(ins: Instr) -> tuple[float, str]:
    """(flops per warp, operand type) of a tensor-core instruction: HGMMA.64x128x16 is one warpgroup's (4 warps)
    64x128x16 product; HMMA.16816 one warp's m16n8k16."""
    wgmma = next((m for m in ins.mods if re.fullmatch(r"\d+x\d+x\d+", m)), None)
    if wgmma is not None:
        m, n, k = (int(v) for v in wgmma.split("x"))
        flops = 2.0 * m * n * k / 4
    else:
        sync = next((found for mod in ins.mods if (found := re.fullmatch(r"(16|8)(8)(\d+)", mod))), None)
        m, n, k = (int(v) for v in sync.groups()) if sync else (16, 8, 16)
        flops = 2.0 * m * n * k
    mods = set(ins.mods)
    return flops, next((t for t, names in _DTYPES if mods & names), "bf16")


_DTYPES = (("bf16", {"BF16"}), ("fp16", {"F16"}), ("tf32", {"TF32"}), ("int8", {"S8", "U8"}),
           ("fp8", {"E4M3", "E5M2"}))  # fmt: skip


def _regs(operand: str) -> list[str]:
    """Register names an operand reads or writes (R4.64 is R4 and R5)."""
    out = []
    for name, wide in _REG.findall(operand):
        count = {"": 1, ".64": 2, ".128": 4}[wide]
        prefix, num = re.match(r"(U?[RP])(\d+)", name).groups()  # type: ignore[union-attr]
        out += [f"{prefix}{int(num) + i}" for i in range(count)]
    return out


def _dest_width(ins: Instr) -> int:
    if ins.base in _LOADS:
        width = _width(ins)
        if ins.base == "LDSM":
            return int(ins.mods[-1]) if ins.mods and ins.mods[-1] in ("1", "2", "4") else 1
        return {"128": 4, "64": 2}.get(width, 1)
    if "WIDE" in ins.mods or ins.base in ("CS2R", "DADD", "DMUL", "DFMA", "MOV64"):
        return 2
    return 1


def _split(ins: Instr) -> tuple[list[str], list[str]]:
    """(registers written, registers read). Written: the first operand when it is a register (an address is
    not), every register of a wide result, and a predicate in second place (IADD3's carry, ISETP's pair); SHFL
    writes its first two operands. Read: every register of the other operands."""
    ops = list(ins.operands)
    lead = 2 if ins.base == "SHFL" else 1
    if not ops or "[" in ops[0] or not _regs(" ".join(ops[:lead])):
        return [], [r for op in ops for r in _regs(op)]
    dests = []
    for op in ops[:lead]:
        regs = _regs(op)
        if regs and regs[0].startswith(("R", "UR")):
            prefix = regs[0].rstrip("0123456789")
            start = int(regs[0][len(prefix) :])
            regs = [f"{prefix}{start + i}" for i in range(max(len(regs), _dest_width(ins)))]
        dests += regs
    if len(ops) > lead and re.fullmatch(r"U?P\d+", ops[lead]):
        dests.append(ops[lead])
        lead += 1
    return dests, [r for op in ops[lead:] for r in _regs(op)]


def _address(ins: Instr) -> list[str]:
    """Registers of a global access's address (the `desc[UR]` memory descriptor aside)."""
    brackets = [op for op in ins.operands if "[" in op]
    if not brackets:
        return []
    global_op = brackets[-1] if ins.base == "LDGSTS" else brackets[0]
    return _regs(re.sub(r"desc\[[^\]]*\]", "", global_op))


def _gathers(instrs: list[Instr], first: int, last: int) -> int:
    """Global loads in [first, last] whose address derives from loaded data (module docstring)."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    facts: list[tuple[set[str], set[str], set[str], int | None, bool]] = []
    for ins in instrs:
        written, read = _split(ins)
        target = _branch_target(ins)
        address = set(_address(ins)) if ins.base in ("LDG", "LDGSTS") else set()
        ends = ins.base in ("BRA", "EXIT", "RET") and not ins.guard
        facts.append((set(written), set(read), address, index.get(target) if target is not None else None, ends))
    pending: dict[int, set[str]] = {}
    found: set[int] = set()
    for _ in range(16):  # passes until the joins at branch targets stop growing
        before = sum(len(v) for v in pending.values())
        state: set[str] = set()
        for i, (dests, sources, address, target, ends) in enumerate(facts):
            state |= pending.get(i, set())
            if instrs[i].dead:
                continue
            if first <= i <= last and state & address:
                found.add(i)
            if instrs[i].base in _LOADS or sources & state:
                state |= dests
            elif not instrs[i].guard:
                state -= dests
            if target is not None:
                pending.setdefault(target, set()).update(state)
            if ends:
                state = set()
        if sum(len(v) for v in pending.values()) == before:
            break
    return len(found)


def analyze(sass: str, ptx: str = "") -> SassStats:
    """The facts of the one kernel in `sass` (a `cuobjdump -sass` listing), unrolling judged against `ptx`.

    Raises:
        ValueError: `sass` holds no instructions, or more than one function.
    """
    functions = parse_sass(sass)
    if len(functions) != 1 or not next(iter(functions.values())):
        raise ValueError(f"sass: {len(functions)} functions {sorted(functions)}; expected one kernel's listing")
    instrs = [ins for ins in next(iter(functions.values())) if ins.base != "NOP"]
    while instrs and _branch_target(instrs[-1]) == instrs[-1].addr:  # the self-branch after EXIT
        instrs.pop()
    mma_all = [ins for ins in instrs if ins.base in _MMA and not ins.dead]
    shapes = [_mma_shape(ins) for ins in mma_all]
    base = {
        "instructions": len(instrs),
        "mma_total": len(mma_all),
        "mma_dtype": Counter(t for _, t in shapes).most_common(1)[0][0] if shapes else "",
        "mma_sync": any(ins.base in ("HMMA", "IMMA") for ins in mma_all),
        "local_accesses": sum(ins.base in ("STL", "LDL") for ins in instrs),
    }
    loop = main_loop(instrs)
    if loop is None:
        return SassStats(**base, mma_flops_rest=sum(f for f, _ in shapes))  # type: ignore[arg-type]
    first, last = loop
    body = [ins for ins in instrs[first : last + 1] if not ins.dead]
    loads: Counter[str] = Counter()
    for ins in body:
        if ins.base in ("LDG", "LDGSTS", "LD"):
            loads[f"{'LDGSTS' if ins.base == 'LDGSTS' else 'LDG'}.{_width(ins)}"] += 1
        elif ins.base == "UTMALDG":
            loads["TMA"] += 1
    ptx_ops = parse_ptx_loop_ops(ptx) if ptx else None
    sass_ops = sum(_is_work(ins) for ins in body)
    known = bool(ptx_ops) and sass_ops % ptx_ops == 0
    unroll = sass_ops // ptx_ops if known and ptx_ops else 1
    hgmma = [ins for ins in body if ins.base in ("HGMMA", "IGMMA", "QGMMA")]
    waits = [int(ins.operands[-1], 16) for ins in body if ins.opcode == "WARPGROUP.DEPBAR.LE" and ins.operands]
    loop_flops = sum(_mma_shape(ins)[0] for ins in body if ins.base in _MMA)
    return SassStats(
        **base,  # type: ignore[arg-type]
        loop_instructions=last - first + 1,
        unroll=unroll,
        unroll_known=known,
        loop_span=(instrs[first].addr, instrs[last].addr),
        loads=dict(sorted(loads.items())),
        global_gathers=_gathers(instrs, first, last),
        lds=sum(ins.base == "LDS" for ins in body),
        sts=sum(ins.base == "STS" for ins in body),
        ldsm=sum(ins.base == "LDSM" for ins in body),
        mma=sum(ins.base in _MMA for ins in body),
        mma_flops_loop=loop_flops,
        mma_flops_rest=sum(f for f, _ in shapes) - loop_flops,
        hgmma_a_registers=sum(len(ins.operands) > 1 and ins.operands[1].startswith("R") for ins in hgmma),
        hgmma_a_shared=sum(len(ins.operands) > 1 and ins.operands[1].startswith("gdesc") for ins in hgmma),
        wgmma_wait=min(waits) if waits else None,
    )
