"""qkbench benchmark suites: pytest-benchmark cases over precisions, shapes, batch sizes and LoRA ranks.

measure.py    the measurement core (Meter: first call, peak memory, error, the rounds, energy, roofline)
timing.py     the rounds: CUDA-event / perf_counter timers, the cache flush, the noise-based stopping rule
metrics.py    FLOPs and bytes of each op, by model
shapes.py     profiles (quick on a CPU, full on a GPU) and their grids: real layer shapes, M, ranks
telemetry.py  NVML sampling while a case runs
record.py     results as they come (JSONL parts) and results.json assembled from them
conftest.py   pytest plumbing: options, parametrization from the grid, the session's Meter
bench_*.py    the suites: quantize, matmul, lora, optim, memory
__main__.py   `python -m suites` (`nox -s bench`): audit, suites, results.json, report
"""
