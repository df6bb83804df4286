"""`Launch`: one kernel launch as a launcher decides it, run by the launcher and compiled by the audit.

A launcher's plan (kernel, grid, every argument by name, warps, stages, compile options) is a `Launch`. The
launcher calls `launch.run()`; `kernels.audit` builds the same Launch on meta tensors (shapes without memory:
a 70B layer at M = 131,072 costs nothing) and compiles it ahead of time with `specialize(launch, cc)`, which
asks Triton's own binder for the signature, constexprs and attributes that its JIT would derive from those
arguments (pointer dtypes, i32/i64, 16-divisibility, arguments equal to 1 folded into constants). One code
path decides what runs and what is audited.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Launch", "Specialization", "specialize"]


@dataclass(frozen=True)
class Launch:
    """One launch: `kernel[grid](**args, num_warps=..., num_stages=..., **options)`.

    kernel: the @triton.jit function; grid: program counts per axis; args: every kernel argument by name
    (tensors, ints, floats and the constexpr values); name: a readable config name, e.g. "BN64-BK256-w4-s2";
    trips: iterations of the kernel's main loop per program (the audit's model multiplies the loop body's
    machine instructions by it); elements: the operand elements one program's main loop consumes in all
    (e.g. the W elements of its tile range), so the audit can report instructions per element; bytes: the device
    memory the launch moves, where it touches only part of its tensors (0: every tensor argument once, in full).
    """

    kernel: Any
    grid: tuple[int, ...]
    args: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    trips: int = 1
    elements: int = 0
    bytes: int = 0

    @property
    def kernel_name(self) -> str:
        fn = getattr(self.kernel, "fn", self.kernel)
        return str(getattr(fn, "__name__", self.kernel))

    @property
    def programs(self) -> int:
        total = 1
        for g in self.grid:
            total *= g
        return total

    def run(self) -> None:
        """Launch it (compiled on a GPU, through the interpreter on a CPU). An empty grid launches nothing."""
        if self.programs == 0:
            return
        self.kernel[self.grid](**self.args, num_warps=self.num_warps, num_stages=self.num_stages, **self.options)


@dataclass(frozen=True)
class Specialization:
    """What Triton's JIT compiles for a Launch on one target: the inputs of `triton.compile(ASTSource(...))`."""

    signature: dict[str, str]  # argument -> "*bf16", "i32", "i64", "fp32", "constexpr"
    constexprs: dict[tuple[int, ...], Any]  # argument path -> value (declared constexprs and arguments == 1)
    attrs: dict[tuple[int, ...], Any]  # argument path -> [["tt.divisibility", 16]] where the JIT assumes it
    options: dict[str, Any]  # the parsed compile options (num_warps, num_stages, enable_fp_fusion, ...)

    @property
    def key(self) -> str:
        """A stable text key: two launches with the same key compile to the same binary."""
        consts = sorted((k, repr(v)) for k, v in self.constexprs.items())
        attrs = sorted((k, repr(v)) for k, v in self.attrs.items())
        opts = (self.options.get("num_warps"), self.options.get("num_stages"), self.options.get("enable_fp_fusion"))
        return repr((sorted(self.signature.items()), consts, attrs, opts))


def specialize(launch: Launch, cc: int) -> Specialization:
    """The JIT's specialization of `launch` for sm_<cc>, computed without a GPU (meta tensors are fine).

    Needs a compilable kernel (a JITFunction: TRITON_INTERPRET=0 when the module was imported).
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {"num_warps": launch.num_warps, "num_stages": launch.num_stages, **launch.options}
    bound, spec, opts = binder(**launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, opts, bound, spec, opts)
    return Specialization(dict(signature), dict(constexprs), dict(attrs), dict(options.__dict__))


@dataclass(frozen=True)
class Workload:
    """An op on one shape as its launcher runs it: the launches, and the least work the op must do.

    op: "matmul", "lora_fwd", "dequantize", "adamw", ...; shape: e.g. "llama2-7b.q_proj"; precision: the weight
    (or state) format, e.g. "nf4dq", "fp4", "int8", "bf16"; m, n, k: the problem (k = 0 where meaningless);
    bytes: the bytes the op must read and write in device memory at least (operands once, results once);
    flops: its arithmetic (2 M N K for a matmul). `kernels.audit` compiles every launch and models the time.
    """

    op: str
    shape: str
    precision: str
    m: int
    n: int
    k: int
    bytes: int
    flops: int
    launches: tuple[Launch, ...]
    torch_ops: tuple[str, ...] = ()  # work done by torch around the launches (e.g. "matmul:bf16" via cuBLAS)


# The audit's shape grid (issue: real projections of Llama-2-7B, Llama-3-8B and Llama-2-70B; batch rows M).
AUDIT_MODELS: tuple[str, ...] = ("llama2-7b", "llama3-8b", "llama2-70b")
AUDIT_M: tuple[int, ...] = (1, 4, 16, 64, 256, 1024, 4096)


def audit_shapes() -> list[tuple[str, int, int]]:
    """(name, N, K) of each distinct projection of the audit models, e.g. ("llama2-7b.q_proj", 4096, 4096)."""
    from quant.memory import MODELS

    seen: set[tuple[int, int]] = set()
    shapes = []
    for model in AUDIT_MODELS:
        for proj, (n, k) in MODELS[model].linears().items():
            if (n, k) not in seen:
                seen.add((n, k))
                shapes.append((f"{model}.{proj}", n, k))
    return shapes
