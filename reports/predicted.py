"""The audit's static model beside the measurements: what `python -m kernels.audit` predicts per workload for an
H100 SXM and an H200 ("predicted (static)"), the time measured for the same op, precision and shape on such a GPU
when the results hold one, and their ratio: the model's calibration (1.0: the prediction held)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PREDICTED_FIELDS", "predicted"]

PREDICTED_FIELDS = ("op", "shape", "M", "N", "K", "precision", "predicted_us_h100", "predicted_frac_h100",
                    "predicted_us_h200", "predicted_frac_h200", "frac_of", "bound", "instr_per_weight", "waves",
                    "gate")  # fmt: skip
_GPUS = {"h100": "H100", "h200": "H200"}


def _key(precision: object) -> str:
    return str(precision).replace("-", "").lower()  # suites' "nf4-dq" is the audit's "nf4dq"


def predicted(audit: pd.DataFrame, cases: pd.DataFrame) -> pd.DataFrame:
    """One row per audited workload (sm_90 rows, which carry the predictions): the predicted µs and fraction on
    each GPU, what bounds it, and, per GPU that ran it, the measured median µs of qkbench's case with the same op,
    precision, M, N and K and the ratio measured / predicted. Empty when the audit has no predictions."""
    import pandas as pd

    if "predicted_us_h100" not in audit.columns:
        return pd.DataFrame(columns=list(PREDICTED_FIELDS))
    rows = audit[(audit["target"] == "sm_90") & audit["predicted_us_h100"].notna()]
    out = rows[[c for c in PREDICTED_FIELDS if c in rows.columns]].copy().reset_index(drop=True)
    ours = cases[(cases.get("impl") == "qkbench") & (cases.get("status") == "ok")] if len(cases) else cases
    for tag, label in _GPUS.items():
        on_gpu = ours[ours["device"].astype(str).str.contains(label, case=False, na=False)] if len(ours) else ours
        measured = {
            (str(r.op), _key(r.precision), int(r.M), int(r.N), int(r.K)): float(r.time_s) * 1e6
            for r in on_gpu.itertuples()
            if pd.notna(r.M) and pd.notna(r.N) and pd.notna(r.K) and pd.notna(r.time_s)
        }
        keys = zip(out["op"], out["precision"].map(_key), out["M"], out["N"], out["K"], strict=True)
        out[f"measured_us_{tag}"] = [measured.get((str(o), p, int(m), int(n), int(k))) for o, p, m, n, k in keys]
        out[f"measured/predicted_{tag}"] = out[f"measured_us_{tag}"] / out[f"predicted_us_{tag}"]
    return out
