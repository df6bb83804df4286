"""The committed results files the report tests read (tests/reports/data/), and a hostile string."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"
RUN_A = DATA / "h100_a.json"  # H100, full profile, every group, one OOM case
RUN_B = DATA / "h100_b.json"  # the same machine later: slower qkbench cases, one error, no optim group
CPU = DATA / "cpu_quick.json"  # a CPU quick-profile run: no GPU, partial, a skipped case
AUDIT = DATA / "audit.json"
EVIL = '<script>alert("x")</script> | `pipe` **bold** <img src=x onerror=alert(1)>'
