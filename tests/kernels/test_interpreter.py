"""The library's interpreter fix (kernels/interpreter.py): bf16 dots and casts exact on a CPU for every caller.

Triton's interpreter as shipped multiplies bf16 bit patterns as integers in tl.dot (triton#11584) and reinterprets
bit patterns in casts between bf16 and integers; `import kernels` installs the fix once, so these tests, like a
user's code, run with no test-only patch.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import triton
import triton.language as tl

from kernels.device import INTERPRET

pytestmark = pytest.mark.skipif(not INTERPRET, reason="the interpreter runs only without a GPU")


@triton.jit
def _dot_kernel(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
    b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
    tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))


@triton.jit
def _cast_kernel(q_ptr, out_ptr, back_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    q = tl.load(q_ptr + offs)
    as_bf16 = q.to(tl.bfloat16)
    tl.store(out_ptr + offs, as_bf16)
    tl.store(back_ptr + offs, as_bf16.to(tl.int32))


def test_bf16_dot_is_exact() -> None:
    a, b = (torch.randn(16, 16).bfloat16() for _ in range(2))
    c = torch.empty(16, 16)
    _dot_kernel[(1,)](a, b, c, BLOCK=16)
    torch.testing.assert_close(c, a.float() @ b.float(), rtol=1e-5, atol=1e-5)


def test_int_bf16_casts_keep_values() -> None:
    q = torch.arange(-64, 64, dtype=torch.int8)
    out, back = torch.empty(128, dtype=torch.bfloat16), torch.empty(128, dtype=torch.int32)
    _cast_kernel[(1,)](q, out, back, BLOCK=128)
    torch.testing.assert_close(out, q.to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(back, q.to(torch.int32), rtol=0, atol=0)


def test_fp32_to_bf16_rounds_to_nearest_even() -> None:
    x = torch.randn(1024)
    out = torch.empty(1024, dtype=torch.bfloat16)

    @triton.jit
    def _round(x_ptr, out_ptr, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, tl.load(x_ptr + offs).to(tl.bfloat16))

    _round[(1,)](x, out, BLOCK=1024)
    torch.testing.assert_close(out, x.bfloat16(), rtol=0, atol=0)


def test_the_shipped_interpreter_gets_bf16_dot_wrong() -> None:
    """Without the fix (a fresh process that never imports kernels) the gap is real: this is what it repairs."""
    script = textwrap.dedent(
        """
        import os; os.environ["TRITON_INTERPRET"] = "1"
        import torch, triton, triton.language as tl
        @triton.jit
        def k(a_ptr, b_ptr, c_ptr, BLOCK: tl.constexpr):
            offs = tl.arange(0, BLOCK)
            a = tl.load(a_ptr + offs[:, None] * BLOCK + offs[None, :])
            b = tl.load(b_ptr + offs[:, None] * BLOCK + offs[None, :])
            tl.store(c_ptr + offs[:, None] * BLOCK + offs[None, :], tl.dot(a, b))
        a, b = (torch.randn(16, 16).bfloat16() for _ in range(2))
        c = torch.empty(16, 16)
        k[(1,)](a, b, c, BLOCK=16)
        print(torch.allclose(c, a.float() @ b.float(), rtol=1e-2, atol=1e-2))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
