"""qkbench formats: NF4/FP4 (blockwise, double quantization), int8 (row-wise, LLM.int8()), fp16/bf16.

Plain torch on any device; the reference that kernels/ is tested against and bitsandbytes is checked against.

    qt = quant.quantize(w, "nf4", blocksize=64, double_quant=True)
    w_hat = qt.dequantize()            # original dtype
    qt.bits_per_param                  # 4.127 (QLoRA)
"""

from quant.bnb import from_bnb, to_bnb
from quant.tensor import BLOCKSIZES, FORMATS, FieldError, Format, QuantizedTensor, quantize

__all__ = ["BLOCKSIZES", "FORMATS", "FieldError", "Format", "QuantizedTensor", "from_bnb", "quantize", "to_bnb"]
