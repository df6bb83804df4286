"""reports.predicted: the audit's static predictions beside measured GPU times, and the calibration ratio.

The audit rows and the measured case below are synthetic (hand-made numbers), named so."""

from __future__ import annotations

import pandas as pd

from reports.predicted import predicted


def _synthetic_audit() -> pd.DataFrame:
    base = {"kernel": "_gemv_kernel", "config": "M1-BN8", "op": "matmul", "shape": "llama2-7b.q_proj", "M": 1,
            "N": 4096, "K": 4096, "precision": "nf4dq", "frac_of": "memory", "bound": "issue", "gate": "",
            "instr_per_weight": 0.23, "waves": 1.3}  # fmt: skip
    return pd.DataFrame(
        [
            {**base, "target": "sm_90", "predicted_us_h100": 5.0, "predicted_frac_h100": 0.7,
             "predicted_us_h200": 4.0, "predicted_frac_h200": 0.6},
            {**base, "target": "sm_80", "predicted_us_h100": None, "predicted_frac_h100": None,
             "predicted_us_h200": None, "predicted_frac_h200": None},
        ]
    )  # fmt: skip


def _synthetic_case(device: str, precision: str = "nf4-dq", impl: str = "qkbench") -> dict[str, object]:
    return {"op": "matmul", "impl": impl, "status": "ok", "precision": precision, "M": 1, "N": 4096, "K": 4096,
            "time_s": 7.5e-6, "device": device}  # fmt: skip


def test_measured_beside_predicted_gives_the_calibration() -> None:
    cases = pd.DataFrame([_synthetic_case("NVIDIA H100 80GB HBM3"), _synthetic_case("cpu (2 threads)")])
    out = predicted(_synthetic_audit(), cases)
    assert len(out) == 1  # the sm_90 row carries the predictions
    row = out.iloc[0]
    assert row["measured_us_h100"] == 7.5 and abs(row["measured/predicted_h100"] - 1.5) < 1e-12
    assert pd.isna(row["measured_us_h200"]) and pd.isna(row["measured/predicted_h200"])  # no H200 run


def test_only_qkbench_cases_of_the_same_problem_count() -> None:
    cases = pd.DataFrame([_synthetic_case("NVIDIA H200", impl="torch"), _synthetic_case("NVIDIA H200", "int8")])
    out = predicted(_synthetic_audit(), cases)
    assert out["measured_us_h200"].isna().all()


def test_an_audit_without_predictions_gives_nothing() -> None:
    audit = _synthetic_audit().drop(columns=["predicted_us_h100"])
    assert predicted(audit, pd.DataFrame([_synthetic_case("NVIDIA H100")])).empty
