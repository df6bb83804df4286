"""`matmul()`: the launcher of the fused dequant-matmul, and `prepare()`, the one place that turns a plan into
launches (kernels.audit builds the same launches on meta tensors)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import triton

from kernels.launch import Launch
from kernels.matmul.configs import LORA_MAX_FUSED_R, Plan, plan
from kernels.matmul.fwd import _gemm_kernel
from kernels.matmul.gemv import _gemv_kernel
from kernels.matmul.naive import LoRAEpilogue
from kernels.weight import DTYPE_NAMES, outlier_fixup, weight_operand
from quant import QuantizedTensor

__all__ = ["MatmulRun", "matmul", "prepare"]

_FLOAT = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class MatmulRun:
    """What one `matmul` call runs: its plan, outputs, and its steps in order: kernel launches and torch's parts.

    torch_ops names the torch work for the audit's model, e.g. "matmul:bf16:M:N:K" (cuBLAS in x's dtype)."""

    plan: Plan
    y: torch.Tensor  # (M, N)
    xa: torch.Tensor | None  # (M, R) with LoRA
    steps: list[Launch | Callable[[], None]] = field(default_factory=list)
    torch_ops: list[str] = field(default_factory=list)

    @property
    def launches(self) -> list[Launch]:
        return [step for step in self.steps if isinstance(step, Launch)]

    def run(self) -> None:
        for step in self.steps:
            if isinstance(step, Launch):
                step.run()
            else:
                step()


def _check(x: torch.Tensor, w: QuantizedTensor | torch.Tensor, bias: torch.Tensor | None, lora: LoRAEpilogue | None):
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError(f"x: {type(x).__name__}; expected a tensor (..., K)")
    if x.dtype not in _FLOAT:
        raise ValueError(f"x: dtype {x.dtype}; expected torch.float16, torch.bfloat16 or torch.float32")
    k = x.shape[-1]
    if isinstance(w, QuantizedTensor):
        if w.fmt not in ("nf4", "fp4", "int8"):
            raise ValueError(f"w: QuantizedTensor format {w.fmt!r}; expected 'nf4', 'fp4' or 'int8' (or pass a tensor)")
        if w.fmt == "int8" and w.data.stride(-1) != 1:
            raise ValueError(f"w.data: strides {w.data.stride()}; expected a unit stride along K")
    elif not isinstance(w, torch.Tensor) or w.dtype not in _FLOAT:
        raise ValueError(
            f"w: {getattr(w, 'dtype', type(w).__name__)}; expected an fp16|bf16|fp32 tensor or a QuantizedTensor"
        )
    elif w.dim() == 2 and w.shape[0] > 1 and w.stride(-1) != 1:
        raise ValueError(f"w: strides {w.stride()}; expected a unit stride along K")
    if len(w.shape) != 2 or w.shape[1] != k:
        raise ValueError(f"w: shape {tuple(w.shape)}; expected (N, {k}) to match x {tuple(x.shape)}")
    n = w.shape[0]
    if w.device != x.device:
        raise ValueError(f"w: device {w.device}; expected x's device {x.device}")
    if bias is not None and (tuple(bias.shape) != (n,) or bias.dtype not in _FLOAT):
        raise ValueError(f"bias: {bias.dtype} {tuple(bias.shape)}; expected a float tensor ({n},)")
    if bias is not None and bias.device != x.device:
        raise ValueError(f"bias: device {bias.device}; expected x's device {x.device}")
    if lora is not None:
        a, b = lora.a, lora.b
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != k or b.shape[0] != n or a.shape[0] != b.shape[1]:
            raise ValueError(f"lora: a {tuple(a.shape)}, b {tuple(b.shape)}; expected (R, {k}) and ({n}, R)")
        if a.dtype != x.dtype or b.dtype != x.dtype:
            raise ValueError(f"lora: a {a.dtype}, b {b.dtype}; expected x's dtype {x.dtype}")
        for name, t in (("lora.a", a), ("lora.b", b)):
            if t.device != x.device:
                raise ValueError(f"{name}: device {t.device}; expected x's device {x.device}")
        if a.shape[0] < 1:
            raise ValueError(f"lora: rank {a.shape[0]}; expected R >= 1")


def prepare(
    x2: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    bias: torch.Tensor | None = None,
    lora: LoRAEpilogue | None = None,
) -> MatmulRun:
    """The launches (and torch steps) of y = x2 W^T (+ bias) (+ s (x2 A^T) B^T) for x2 (M, K), inputs checked.
    Allocates y (M, N) in x2's dtype and, with LoRA, xa (M, R)."""
    m, k = x2.shape
    n = w.shape[0]
    rank = lora.a.shape[0] if lora is not None else 0
    fused_rank = rank if rank <= LORA_MAX_FUSED_R else 0
    p = plan(m, n, k, w, fused_rank)
    y = torch.empty((m, n), dtype=x2.dtype, device=x2.device)
    run = MatmulRun(p, y, None)
    if m == 0 or n == 0:
        return run
    if k == 0:  # an empty sum: y = bias (or 0); xa = 0
        run.steps.append(lambda: y.copy_(bias.expand(m, n) if bias is not None else torch.zeros_like(y)))
        if lora is not None:
            run.xa = torch.zeros((m, rank), dtype=x2.dtype, device=x2.device)
        return run
    if p.path in ("dequant", "torch"):
        return _torch_path(run, x2, w, bias, lora)
    if lora is not None:  # xa = x A^T once, by cuBLAS (a thin product: M x R x K, R <= a few hundred)
        xa_out = torch.empty((m, rank), dtype=x2.dtype, device=x2.device)
        run.xa = xa_out
        run.steps.append(lambda: torch.mm(x2, lora.a.T, out=xa_out))
        run.torch_ops.append(f"matmul:{DTYPE_NAMES[x2.dtype]}:{m}:{rank}:{k}")
    op = weight_operand(w)
    fused = lora is not None and fused_rank > 0
    xa = run.xa if fused and run.xa is not None else y
    b = lora.b if fused and lora is not None else y
    common = dict(
        x_ptr=x2, **op.args, bias_ptr=bias if bias is not None else y, xa_ptr=xa, b_ptr=b, y_ptr=y,
        lora_scale=float(lora.scale) if fused and lora is not None else 0.0, M=m, N=n, K=k, R=max(fused_rank, 1),
        stride_xm=x2.stride(0), stride_xam=xa.stride(0), stride_bn=b.stride(0), stride_ym=y.stride(0),
        **op.consts, HAS_BIAS=bias is not None, HAS_LORA=fused, R_PAD=max(16, triton.next_power_of_2(fused_rank)),
    )  # fmt: skip
    if p.path == "gemv":
        assert x2.stride(1) == 1 and (not fused or (xa.stride(1) == 1 and b.stride(1) == 1))
        row = op.args["stride_wn"] if op.consts["IS_4BIT"] else k  # storage elements a row
        even = n % p.block_n == 0 and row % p.step == 0
        common.update(BLOCK_M=p.block_m, BLOCK_N=p.block_n, STEP=p.step, CHUNK=max(p.chunk, 1), EVEN=even)
        steps = triton.cdiv(row, p.step)
        grid = (triton.cdiv(n, p.block_n),)
        run.steps.append(
            Launch(_gemv_kernel, grid, common, p.num_warps, 1, name=p.name, trips=steps, elements=p.block_n * k)
        )
    else:
        cfg = p.config
        assert cfg is not None and (not fused or (xa.stride(1) == 1 and b.stride(1) == 1))
        bs = op.consts["BLOCKSIZE"]
        row_scale = bool(op.consts["IS_4BIT"]) and k % bs == 0 and cfg.block_k <= bs  # one scale a row and tile
        common.update(stride_xk=x2.stride(1), ROW_SCALE=row_scale, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                      BLOCK_K=cfg.block_k)  # fmt: skip
        grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n))
        trips = triton.cdiv(k, cfg.block_k)
        run.steps.append(
            Launch(_gemm_kernel, grid, common, cfg.num_warps, cfg.num_stages, name=p.name, trips=trips,
                   elements=cfg.block_n * k)
        )  # fmt: skip
    if lora is not None and not fused:  # a rank past the epilogue's registers: + s xa B^T in torch
        assert run.xa is not None
        xa_full = run.xa
        run.steps.append(lambda: y.add_(xa_full @ lora.b.T, alpha=lora.scale))
        run.torch_ops.append(f"matmul:{DTYPE_NAMES[x2.dtype]}:{m}:{n}:{rank}")
    run.steps.append(lambda: outlier_fixup(y, x2, w))
    return run


def _torch_path(
    run: MatmulRun, x2: torch.Tensor, w: QuantizedTensor | torch.Tensor, bias: torch.Tensor | None,
    lora: LoRAEpilogue | None,
) -> MatmulRun:  # fmt: skip
    """Large M: dequantize W once into x's dtype (kernels.dequant) and let torch.matmul (cuBLAS) multiply."""
    from kernels.dequant import prepare_dequantize

    m, k = x2.shape
    n = w.shape[0]
    y = run.y
    if isinstance(w, QuantizedTensor):
        w_hat, launch = prepare_dequantize(w, x2.dtype)
        run.steps.append(launch)
    else:
        w_hat = w.to(x2.dtype)  # the kernels multiply a dense W in x's dtype too
    run.torch_ops.append(f"matmul:{DTYPE_NAMES[x2.dtype]}:{m}:{n}:{k}")

    def finish() -> None:
        if bias is not None:
            torch.addmm(bias.to(y.dtype), x2, w_hat.T, out=y)
        else:
            torch.mm(x2, w_hat.T, out=y)
        if lora is not None:
            xa = x2 @ lora.a.T
            run.xa = xa
            y.add_(xa @ lora.b.T, alpha=lora.scale)

    run.steps.append(finish)
    if lora is not None:
        r = lora.a.shape[0]
        run.torch_ops += [f"matmul:{DTYPE_NAMES[x2.dtype]}:{m}:{r}:{k}", f"matmul:{DTYPE_NAMES[x2.dtype]}:{m}:{n}:{r}"]
    return run


def matmul(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    lora: LoRAEpilogue | None = None,
    return_xa: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x W^T (+ bias) (+ lora.scale (x A^T) B^T), W dequantized on chip; `plan()` names the path.

    x: (..., K) fp16|bf16|fp32, any strides; w: (N, K) QuantizedTensor nf4|fp4 (± double quant) | int8 (row-wise
    or per-tensor; LLM.int8() outlier columns are added back in torch), or a dense fp16|bf16|fp32 tensor;
    bias: (N,) or None; lora: LoRAEpilogue(a (R, K), b (N, R) in x's dtype, scale); R <= LORA_MAX_FUSED_R is
    added in the kernel's epilogue, a larger rank by torch. Returns y (..., N) in x's dtype; with lora and
    return_xa, (y, xa) with xa = x A^T (..., R) in x's dtype. Any K; M = 0, N = 0 give empty results and K = 0
    gives y = bias (or zeros). Offsets are 64-bit: M K, M N and N K may pass 2^31.

    Raises:
        ValueError: a dtype, shape, device or format that does not match (the message names the argument).
    """
    # (1) check constraints
    _check(x, w, bias, lora)
    if return_xa and lora is None:
        raise ValueError("return_xa: True needs lora (xa = x A^T)")
    lead, k, n = x.shape[:-1], x.shape[-1], w.shape[0]
    x2 = x.reshape(math.prod(lead), k)
    if x2.stride(-1) != 1 and x2.shape[0] > 0:
        x2 = x2.contiguous()
    # (2) allocate outputs and (3) launch
    run = prepare(x2, w, bias, lora)
    run.run()
    y = run.y.view(*lead, n)
    if not return_xa:
        return y
    r = lora.a.shape[0] if lora is not None else 0
    xa = run.xa if run.xa is not None else torch.empty((x2.shape[0], r), dtype=x.dtype, device=x.device)
    return y, xa.view(*lead, r)
