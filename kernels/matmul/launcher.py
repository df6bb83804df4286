"""`matmul()`: the launcher of the fused dequant-matmul (kernels in fwd.py, the choice of path in configs.py)."""

from __future__ import annotations

import torch
import triton

from kernels.matmul.configs import LORA_MAX_FUSED_R, plan
from kernels.matmul.fwd import _gemm_kernel, _gemv_kernel
from kernels.matmul.naive import LoRAEpilogue
from quant import QuantizedTensor

__all__ = ["matmul"]

_INDEX_LIMIT = 2**31
_FLOAT = (torch.float32, torch.float16, torch.bfloat16)


def _storage(w: QuantizedTensor | torch.Tensor, device: torch.device) -> tuple[list, dict, float, int, int]:
    """Kernel arguments of W: (pointers, format constexprs, dq offset, stride_wn, stride_sn)."""
    f32 = torch.empty(1, dtype=torch.float32, device=device)
    u8 = torch.empty(1, dtype=torch.uint8, device=device)
    flags = {"IS_4BIT": False, "IS_INT8": False, "DOUBLE_QUANT": False, "BLOCKSIZE": 64, "DQ_BLOCKSIZE": 256}
    if not isinstance(w, QuantizedTensor):
        return [w, f32, f32, u8, f32, f32], flags, 0.0, w.stride(0), 0
    if w.fmt == "int8":
        assert w.absmax is not None
        flags["IS_INT8"] = True
        return [w.data, w.absmax, f32, u8, f32, f32], flags, 0.0, w.data.stride(0), 1 if w.absmax.dim() else 0
    dq = w.state2
    flags.update(IS_4BIT=True, DOUBLE_QUANT=dq is not None, BLOCKSIZE=w.blocksize)
    if dq is None:
        assert w.absmax is not None and w.code is not None
        return [w.data, w.absmax, w.code, u8, f32, f32], flags, 0.0, 0, 0
    flags["DQ_BLOCKSIZE"] = dq.blocksize
    return [w.data, f32, w.code, dq.data, dq.absmax, dq.code], flags, dq.offset, 0, 0


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
    elif w.stride(-1) != 1:
        raise ValueError(f"w: strides {w.stride()}; expected a unit stride along K")
    if len(w.shape) != 2 or w.shape[1] != k:
        raise ValueError(f"w: shape {tuple(w.shape)}; expected (N, {k}) to match x {tuple(x.shape)}")
    n = w.shape[0]
    if n * k >= _INDEX_LIMIT:
        raise ValueError(f"w: shape {tuple(w.shape)} has >= 2^31 elements; the kernels index in int32")
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


def matmul(
    x: torch.Tensor,
    w: QuantizedTensor | torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    lora: LoRAEpilogue | None = None,
    return_xa: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = x W^T (+ bias) (+ lora.scale (x A^T) B^T), W dequantized on chip; `plan()` names the path and config.

    x: (..., K) fp16|bf16|fp32, any strides; w: (N, K) QuantizedTensor nf4|fp4 (± double quant) | int8 (row-wise
    or per-tensor; LLM.int8() outlier columns are added back in torch), or a dense fp16|bf16|fp32 tensor;
    bias: (N,) or None; lora: LoRAEpilogue(a (R, K), b (N, R) in x's dtype, scale); R <= LORA_MAX_FUSED_R runs
    in the fused epilogue, a larger rank as three launches (x A^T, x W^T + bias, then + s xa B^T).
    Returns y (..., N) in x's dtype; with lora and return_xa, (y, xa) with xa = x A^T (..., R) in x's dtype.
    Any K is accepted (kernels.lora passes odd K): a 4-bit W with K a multiple of its blocksize reads one scale
    per row and tile; otherwise a scale per element (a row may then start mid-byte), on the narrow gemv tile.

    Raises:
        ValueError: a dtype, shape, device or format that does not match (the message names the argument).
    """
    # (1) check constraints
    _check(x, w, bias, lora)
    if return_xa and lora is None:
        raise ValueError("return_xa: True needs lora (xa = x A^T)")
    lead, k, n = x.shape[:-1], x.shape[-1], w.shape[0]
    if lora is not None and lora.a.shape[0] > LORA_MAX_FUSED_R:
        xa = matmul(x, lora.a)
        y = matmul(x, w, bias=bias)
        y = y.add_(matmul(xa, lora.b), alpha=lora.scale)  # type: ignore[arg-type]
        return (y, xa) if return_xa else y  # type: ignore[return-value]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    p = plan(m, n, k, w, rank=lora.a.shape[0] if lora is not None else 0)
    cfg = p.tiles
    # (2) allocate output
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    r = lora.a.shape[0] if lora is not None else 0
    xa = torch.empty((m, r), dtype=x.dtype, device=x.device) if return_xa else y
    if m == 0 or n == 0:
        return (y.view(*lead, n), xa.view(*lead, r)) if return_xa else y.view(*lead, n)
    # (3) launch
    ptrs, flags, dq_offset, stride_wn, stride_sn = _storage(w, x.device)
    flags["ROW_SCALE"] = flags["IS_4BIT"] and k % flags["BLOCKSIZE"] == 0 and cfg.block_k <= flags["BLOCKSIZE"]
    if p.path == "gemv":
        part = torch.empty((p.split_k, m, n), dtype=torch.float32, device=x.device)
        _gemv_kernel[(triton.cdiv(n, cfg.block_n), p.split_k)](
            x2, *ptrs, part, dq_offset, m, n, k,
            x2.stride(0), x2.stride(1), stride_wn, stride_sn, part.stride(0), part.stride(1),
            **flags, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=p.split_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
        acc = part.sum(0) if p.split_k > 1 else part[0]
        if bias is not None:
            acc += bias.float()
        y.copy_(acc)
    else:
        a = lora.a if lora is not None else y
        b = lora.b if lora is not None else y
        grid = (triton.cdiv(m, cfg.block_m), triton.cdiv(n, cfg.block_n))
        _gemm_kernel[grid](
            x2, *ptrs, bias if bias is not None else y, a, b, y, xa,
            dq_offset, float(lora.scale) if lora is not None else 0.0, m, n, k, max(r, 1),
            x2.stride(0), x2.stride(1), stride_wn, stride_sn, a.stride(0), a.stride(-1), b.stride(0), b.stride(-1),
            y.stride(0), xa.stride(0),
            **flags, HAS_BIAS=bias is not None, HAS_LORA=lora is not None, RETURN_XA=return_xa,
            R_PAD=max(16, triton.next_power_of_2(r)), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    if isinstance(w, QuantizedTensor) and w.outlier_cols is not None and w.outlier_cols.numel():
        assert w.outliers is not None and w.absmax is not None
        cols = w.outlier_cols  # LLM.int8(): those columns of W are kept in fp16 beside the (zeroed) codes
        codes = w.data[:, cols].float() * (w.absmax.float().view(-1, 1) / 127.0)
        y += (x2[:, cols].float() @ (w.outliers.float() - codes).T).to(y.dtype)
    y = y.view(*lead, n)
    return (y, xa.view(*lead, r)) if return_xa else y
