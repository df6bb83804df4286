"""Kernel tests see what users see: no test-only patch. The interpreter's bf16 fix lives in the library
(kernels/interpreter.py, installed by kernels/device.py whenever the interpreter runs)."""
