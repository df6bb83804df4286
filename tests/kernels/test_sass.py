"""kernels.sass against real disassembly committed under data/ (regenerate: `TRITON_INTERPRET=0 python
tests/kernels/test_sass.py`, from the repository root; the kernels below are their source). Expected values
were read off the listings by hand (addresses, opcodes), not computed by the parser."""

from __future__ import annotations

from pathlib import Path

import pytest
import triton
import triton.language as tl
from audit_kernels import _dot_kernel  # tests/kernels/audit_kernels.py (pytest puts this folder on sys.path)

from kernels.sass import analyze, main_loop, parse_ptx_loop_ops, parse_sass

DATA = Path(__file__).parent / "data"


@triton.jit
def _nibble_kernel(packed_ptr, code_ptr, scale_ptr, y_ptr, n, iters, BLOCK: tl.constexpr):
    """y[i], y[n + i] = code[q_i & 15] * scale[i], code[q_i >> 4] * scale[i]: a 4-bit code-book decode whose
    code look-ups are global gathers (their address is a loaded byte), in a runtime loop ptxas unrolls."""
    for i in range(iters):  # blocks [pid * iters, (pid + 1) * iters)
        offs = (tl.program_id(0) * iters + i) * BLOCK + tl.arange(0, BLOCK)
        q = tl.load(packed_ptr + offs)
        s = tl.load(scale_ptr + offs)
        lo = tl.load(code_ptr + (q & 15).to(tl.int32))
        hi = tl.load(code_ptr + (q >> 4).to(tl.int32))
        tl.store(y_ptr + offs, lo * s)
        tl.store(y_ptr + n + offs, hi * s)


def _read(name: str) -> str:
    return (DATA / name).read_text()


def test_parse_reads_every_instruction_of_the_listing() -> None:
    functions = parse_sass(_read("nibble_sm90.sass"))
    assert list(functions) == ["_nibble_kernel"]
    instrs = functions["_nibble_kernel"]
    assert (instrs[0].addr, instrs[0].opcode, instrs[0].operands) == (0, "LDC", ("R1", "c[0x0][0x28]"))
    assert [i.addr for i in instrs] == list(range(0, instrs[-1].addr + 16, 16))  # every 16-byte slot, no gaps
    guarded = next(i for i in instrs if i.guard)
    assert guarded.guard.startswith("@")


def test_main_loop_and_unroll_of_the_nibble_kernel() -> None:
    sass, ptx = _read("nibble_sm90.sass"), _read("nibble_sm90.ptx")
    instrs = [i for i in parse_sass(sass)["_nibble_kernel"] if i.base != "NOP"]
    first, last = main_loop(instrs)  # type: ignore[misc]
    assert (hex(instrs[first].addr), hex(instrs[last].addr)) == NIBBLE_LOOP
    assert parse_ptx_loop_ops(ptx) == NIBBLE_PTX_OPS
    stats = analyze(sass, ptx)
    assert stats.loop_span == (int(NIBBLE_LOOP[0], 16), int(NIBBLE_LOOP[1], 16))
    assert stats.loop_instructions == NIBBLE_LOOP_INSTRUCTIONS and stats.unroll == NIBBLE_UNROLL
    assert stats.loads == NIBBLE_LOADS
    assert stats.global_gathers == NIBBLE_GATHERS
    assert (stats.mma, stats.mma_total, stats.lds, stats.sts, stats.local_accesses) == (0, 0, 0, 0, 0)


def test_without_the_ptx_the_unroll_is_not_guessed() -> None:
    stats = analyze(_read("nibble_sm90.sass"))
    assert stats.unroll == 1 and not stats.unroll_known
    other = "$L__BB0_1:\n\tld.global.b32 %r1, [%rd1];\n\tst.global.b32 [%rd2], %r1;\n\tld.global.b32 %r2, [%rd1];\n"
    other += "\tst.global.b32 [%rd2], %r1;\n\tld.global.b32 %r2, [%rd1];\n\t@%p1 bra $L__BB0_1;\n"
    assert parse_ptx_loop_ops(other) == 5  # 24 SASS loop operations are not a multiple of 5
    stats = analyze(_read("nibble_sm90.sass"), other)
    assert stats.unroll == 1 and not stats.unroll_known
    assert analyze(_read("nibble_sm90.sass"), _read("nibble_sm90.ptx")).unroll_known


def test_wgmma_loop_of_the_dot_kernel_on_sm90() -> None:
    stats = analyze(_read("dot_sm90.sass"), _read("dot_sm90.ptx"))
    assert stats.loop_span == (int(DOT90_LOOP[0], 16), int(DOT90_LOOP[1], 16)) and stats.unroll == 1
    assert stats.mma == stats.mma_total == DOT90_HGMMA and not stats.mma_sync and stats.mma_dtype == "bf16"
    assert stats.mma_flops_loop == DOT90_HGMMA * 2 * DOT90_SHAPE[0] * DOT90_SHAPE[1] * DOT90_SHAPE[2] / 4
    assert (stats.hgmma_a_shared, stats.hgmma_a_registers) == (DOT90_HGMMA, 0)
    assert stats.wgmma_wait == DOT90_WAIT
    assert stats.loads == DOT90_LOADS and stats.global_gathers == 0


def test_mma_sync_loop_of_the_dot_kernel_on_sm80() -> None:
    stats = analyze(_read("dot_sm80.sass"))
    assert stats.mma_sync and stats.mma == DOT80_HMMA and stats.ldsm == DOT80_LDSM
    assert stats.mma_flops_loop == DOT80_HMMA * 2 * 16 * 8 * 16  # HMMA.16816: one warp's m16n8k16
    assert stats.wgmma_wait is None and stats.hgmma_a_shared == 0


def test_a_listing_of_two_functions_is_refused() -> None:
    text = _read("nibble_sm90.sass")
    with pytest.raises(ValueError, match="expected one kernel"):
        analyze(text + text.replace("Function : _nibble_kernel", "Function : _other"))
    with pytest.raises(ValueError, match="expected one kernel"):
        analyze("")


# A hand-written listing in cuobjdump's format, one loop (0x0..0x120), for the data-flow rules one by one.
SYNTHETIC = """
\t\tFunction : _k
        /*0000*/                   LDG.E R2, desc[UR4][R10.64] ;
        /*0010*/                   IMAD.WIDE R4, R2, 0x4, R12 ;
        /*0020*/                   MOV R6, R14 ;
        /*0030*/                   MOV R7, R15 ;
        /*0040*/               @P0 IMAD.WIDE R6, R2, 0x4, R12 ;
        /*0050*/                   LDG.E R8, desc[UR4][R4.64] ;
        /*0060*/                   LDG.E R9, desc[UR4][R6.64] ;
        /*0070*/                   MOV R4, R14 ;
        /*0080*/                   MOV R5, R15 ;
        /*0090*/                   LDG.E R9, desc[UR4][R4.64] ;
        /*00a0*/                   LDGSTS.E.128 [R20], desc[UR4][R6.64] ;
        /*00b0*/                   LDG.E.128 R40, desc[UR4][R10.64] ;
        /*00c0*/                   LEA R30, P2, R43, UR6, 0x2 ;
        /*00d0*/                   LEA.HI.X R31, R43, UR7, RZ, 0x2, P2 ;
        /*00e0*/                   LDG.E R1, desc[UR4][R30.64] ;
        /*00f0*/                   HGMMA.64x128x16.F32.BF16 R24, R16, gdesc[UR8], R24 ;
        /*0100*/                   IGMMA.64x128x32.S32.S8.S8 R24, gdesc[UR8], R24 ;
        /*0110*/                   WARPGROUP.DEPBAR.LE gsb0, 0x0 ;
        /*0120*/               @P1 BRA 0x0 ;
        /*0130*/                   EXIT ;
        /*0140*/                   BRA 0x140;
"""


def test_data_flow_rules_on_a_hand_written_loop() -> None:
    stats = analyze(SYNTHETIC)
    assert stats.loop_span == (0x0, 0x120) and stats.instructions == 20  # the self-branch at 0x140 is padding
    # gathers: 0x50 (R4:R5 from the loaded R2), 0x60 (a predicated write adds taint, never clears it), 0xa0
    # (cp.async from R6:R7), 0xe0 (R43 is the last register of the 128-bit load at 0xb0); not 0x90 (R4:R5
    # rewritten from R14:R15) nor 0x0 (R10:R11 never written)
    assert stats.global_gathers == 4
    assert stats.loads == {"LDG.128": 1, "LDG.32": 5, "LDGSTS.128": 1}  # 32-bit at 0x0 0x50 0x60 0x90 0xe0
    assert (stats.hgmma_a_registers, stats.hgmma_a_shared, stats.wgmma_wait) == (1, 1, 0)
    assert stats.mma_flops_loop == 2 * 64 * 128 * 16 / 4 + 2 * 64 * 128 * 32 / 4  # per warp of a warpgroup


# Read off the committed listings (see the module docstring).
# nibble_sm90: ptxas unrolled the loop 4x (0x3c0..0x940, counter stepped by -0x4) and left a 1x remainder loop
# (0xcf0..0xe80, 26 instructions); per copy LDG.E.U8 (packed byte), LDG.E (scale) and two LDG.E of the code book
# whose address registers come from the byte (LOP3/SHF/LEA of it): the gathers. The PTX loop holds 4 ld.global
# and 2 st.global; the SASS loop 16 LDG and 8 STG.
NIBBLE_LOOP = ("0x3c0", "0x940")
NIBBLE_PTX_OPS = 6
NIBBLE_LOOP_INSTRUCTIONS = (0x940 - 0x3C0) // 16 + 1  # 89
NIBBLE_UNROLL = 4
NIBBLE_LOADS = {"LDG.32": 12, "LDG.U8": 4}
NIBBLE_GATHERS = 8  # at 0x480 0x490 0x5d0 0x5e0 0x720 0x730 0x870 0x880
# dot_sm90: loop 0x7a0..0xb20: two HGMMA.64x64x16.F32.BF16 from gdesc (A and B in shared memory), then
# WARPGROUP.DEPBAR.LE gsb0, 0x1 and four LDGSTS.E.BYPASS.128 (cp.async) for the next stage.
DOT90_LOOP = ("0x7a0", "0xb20")
DOT90_HGMMA = 2
DOT90_SHAPE = (64, 64, 16)
DOT90_WAIT = 1
DOT90_LOADS = {"LDGSTS.128": 4}
# dot_sm80: loop 0x7a0..0xba0: 16 HMMA.16816.F32.BF16, 8 LDSM, 4 LDGSTS.
DOT80_HMMA = 16
DOT80_LDSM = 8


def _write_fixtures() -> None:
    """Compile the two kernels as the JIT would and write their listings (needs TRITON_INTERPRET=0)."""
    import re
    import subprocess
    import tempfile

    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from kernels.audit import _tool
    from kernels.launch import Launch, specialize

    def meta(*shape: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(*shape, dtype=dtype, device="meta")

    nibble = Launch(_nibble_kernel, (132,), {"packed_ptr": meta(1 << 20, dtype=torch.uint8),
                    "code_ptr": meta(16, dtype=torch.float32), "scale_ptr": meta(1 << 20, dtype=torch.float32),
                    "y_ptr": meta(1 << 21, dtype=torch.float32), "n": 1 << 20, "iters": 62, "BLOCK": 128})  # fmt: skip
    bf16 = torch.bfloat16
    dot = Launch(_dot_kernel, (8, 8), {"a_ptr": meta(512, 512, dtype=bf16), "b_ptr": meta(512, 512, dtype=bf16),
                 "c_ptr": meta(512, 512, dtype=bf16), "K": 512, "stride_am": 512, "stride_bk": 512,
                 "stride_cm": 512, "BM": 64, "BN": 64, "BK": 32}, num_warps=4, num_stages=2)  # fmt: skip
    for name, launch, cc in (("nibble_sm90", nibble, 90), ("dot_sm90", dot, 90), ("dot_sm80", dot, 80)):
        spec = specialize(launch, cc)
        src = ASTSource(launch.kernel, spec.signature, spec.constexprs, spec.attrs)
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=spec.options)
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            listing = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                                     check=True).stdout  # fmt: skip
        if name.startswith("dot"):  # keep them small: drop the encoding comments (nibble_sm90 stays verbatim)
            listing = re.sub(r"\s*/\* 0x[0-9a-f]+ \*/", "", listing)
            listing = "\n".join(line.rstrip() for line in listing.splitlines() if line.strip()) + "\n"
        (DATA / f"{name}.sass").write_text(listing)
        if cc == 90:
            (DATA / f"{name}.ptx").write_text(compiled.asm["ptx"])


if __name__ == "__main__":
    _write_fixtures()
