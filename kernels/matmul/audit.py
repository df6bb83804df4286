"""What kernels.audit compiles for the matmul: `audit_workloads()` (the launcher's own `prepare` on meta tensors over
the audit grid) and `audit_key()`, the audit row a suite's measurement joins."""

from __future__ import annotations

import math

import torch

from kernels.launch import AUDIT_M, Workload, audit_shapes
from kernels.matmul.configs import Plan
from kernels.matmul.launcher import prepare
from kernels.matmul.naive import LoRAEpilogue
from kernels.weight import precision_of
from quant import QuantizedTensor
from quant.blockwise import DoubleQuantState

__all__ = ["AUDIT_PRECISIONS", "audit_key", "audit_workloads", "meta_weight"]

AUDIT_PRECISIONS: tuple[str, ...] = ("nf4dq", "nf4", "fp4", "int8", "bf16")
AUDIT_LORA_RANKS: tuple[int, ...] = (16, 64)


def meta_weight(precision: str, n: int, k: int, blocksize: int = 64) -> QuantizedTensor | torch.Tensor:
    """W (N, K) in `precision` on the meta device: the exact storage sizes and dtypes, no memory."""

    def meta(size: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(size, dtype=dtype, device="meta")

    shape = torch.Size((n, k))
    if precision in ("bf16", "fp16", "fp32"):
        return torch.empty(n, k, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32),
                           device="meta")  # fmt: skip
    if precision == "int8":
        return QuantizedTensor("int8", shape, torch.bfloat16, torch.empty(n, k, dtype=torch.int8, device="meta"),
                               meta(n, torch.float32))  # fmt: skip
    fmt = precision.removesuffix("dq")
    blocks = math.ceil(n * k / blocksize)
    data, code = meta(math.ceil(n * k / 2), torch.uint8), meta(16, torch.float32)
    if precision.endswith("dq"):
        dq = DoubleQuantState(meta(blocks, torch.uint8), meta(math.ceil(blocks / 256), torch.float32), 0.0,
                              meta(256, torch.float32), 256)  # fmt: skip
        return QuantizedTensor(fmt, shape, torch.bfloat16, data, None, blocksize, code, dq)  # type: ignore[arg-type]
    return QuantizedTensor(fmt, shape, torch.bfloat16, data, meta(blocks, torch.float32), blocksize, code)  # type: ignore[arg-type]


def _storage_bytes(w: QuantizedTensor | torch.Tensor) -> int:
    return w.nbytes if isinstance(w, QuantizedTensor) else w.numel() * w.element_size()


def audit_workloads() -> list[Workload]:
    """matmul (y = x W^T + bias, bf16 activations) for every audit shape, M and precision, and the fused LoRA forward
    (NF4 + double quant base) at each rank; bytes = W's storage + x + y (+ A, B), flops = 2 M N K (+ LoRA's)."""
    loads = []
    for shape, n, k in audit_shapes():
        for precision in AUDIT_PRECISIONS:
            w = meta_weight(precision, n, k)
            for m in AUDIT_M:
                x = torch.empty(m, k, dtype=torch.bfloat16, device="meta")
                bias = torch.empty(n, dtype=torch.bfloat16, device="meta")
                run = prepare(x, w, bias)
                moved = _storage_bytes(w) + 2 * (m * k + m * n + n)
                loads.append(Workload("matmul", shape, precision, m, n, k, moved, 2 * m * n * k,
                                      tuple(run.launches), tuple(run.torch_ops)))  # fmt: skip
                if precision != "nf4dq" or shape != "llama2-7b.q_proj":
                    continue
                for r in AUDIT_LORA_RANKS:
                    a = torch.empty(r, k, dtype=torch.bfloat16, device="meta")
                    b = torch.empty(n, r, dtype=torch.bfloat16, device="meta")
                    run = prepare(x, w, bias, LoRAEpilogue(a, b, 2.0))
                    moved_lora = moved + 2 * r * (k + n)
                    flops = 2 * m * n * k + 2 * m * r * (k + n)
                    loads.append(Workload(f"lora_fwd_r{r}", shape, precision, m, n, k, moved_lora, flops,
                                          tuple(run.launches), tuple(run.torch_ops)))  # fmt: skip
    return loads


def audit_key(x_dtype: torch.dtype, w: QuantizedTensor | torch.Tensor, p: Plan) -> str:
    """ "<kernel>:<config>" of the audit rows that cover what `matmul` runs for `p = plan(...)` (the suites record
    it so the report joins a measurement to its compiled kernel); "torch:<config>" where torch runs the product."""
    del x_dtype  # the config name carries what the specialization depends on
    kernel = {"gemv": "_gemv_kernel", "gemm": "_gemm_kernel"}.get(p.path, "torch")
    return f"{kernel}:{precision_of(w)}-{p.name}"
