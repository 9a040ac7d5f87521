"""Number and text formatting for the report (Jinja filters): a missing or non-finite number
shows as an em dash rather than failing the report."""

from __future__ import annotations

import json
import math
import re
from typing import Any

MISSING = "—"
_METRIC_LABELS = {
    "auc": "AUC",
    "tpr_at_1pct_fpr": "TPR@1%FPR",
    "tpr_at_0.1pct_fpr": "TPR@0.1%FPR",
    "advantage": "advantage",
    "psnr": "PSNR",
    "ssim": "SSIM",
    "mse": "MSE",
}
_TPR_AT = re.compile(r"^tpr_at_(\d+(?:\.\d+)?)pct_fpr$")


def as_number(value: Any) -> float | None:
    """A finite float, or None for anything that is not a real number (bools included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def fmt_fixed(value: Any, decimals: int = 3) -> str:
    f = as_number(value)
    return MISSING if f is None else f"{f:.{decimals}f}"


def fmt_sig(value: Any, digits: int = 3) -> str:
    """Significant digits, so small rates such as TPR 0.00123 keep their information."""
    f = as_number(value)
    if f is None:
        return MISSING
    if f == 0:
        return "0"
    text = f"{f:#.{digits}g}"
    return text.rstrip(".") if "e" not in text else text


def fmt_epsilon(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return "∞"
    return fmt_fixed(value, 2)


def fmt_delta(value: Any) -> str:
    f = as_number(value)
    if f is None:
        return MISSING
    if f == 0 or abs(f) >= 1e-3:
        return f"{f:g}"
    mantissa, _, exponent = f"{f:.2g}".partition("e")
    return f"{mantissa}e{int(exponent)}"


def fmt_int(value: Any) -> str:
    f = as_number(value)
    return MISSING if f is None else f"{round(f):,}"


def fmt_metric(value: Any, key: str = "") -> str:
    """Per-metric precision: AUC 3 decimals, rates 3 significant digits, counts as integers."""
    f = as_number(value)
    if f is None:
        return MISSING
    if key == "auc" or key.endswith("_auc") or key in {"accuracy", "advantage"}:
        return fmt_fixed(f, 3)
    if key.startswith(("tpr", "fpr")) or "_tpr" in key or "_fpr" in key:
        return fmt_sig(f, 3)
    if key.startswith("n_") or (isinstance(value, int) and not isinstance(value, bool)):
        return fmt_int(f)
    if abs(f) >= 1000:
        return fmt_int(f)
    return fmt_sig(f, 3)


def fmt_bytes(value: Any) -> str:
    """Binary units (KiB, MiB...), as message sizes are counted in bytes."""
    f = as_number(value)
    if f is None:
        return MISSING
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(f) < 1024 or unit == "TiB":
            return f"{f:.0f} {unit}" if unit == "B" else f"{f:.1f} {unit}"
        f /= 1024
    return MISSING  # pragma: no cover


def fmt_seconds(value: Any) -> str:
    f = as_number(value)
    if f is None:
        return MISSING
    if f < 60:
        return f"{f:.2f} s" if f < 10 else f"{f:.1f} s"
    minutes, seconds = divmod(round(f), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_value(value: Any) -> str:
    """Short display of a parameter value (a defense's noise multiplier, a list of layers)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def fmt_params(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return ", ".join(f"{k}={fmt_value(v)}" for k, v in params.items() if v is not None)


def metric_label(key: str) -> str:
    if key in _METRIC_LABELS:
        return _METRIC_LABELS[key]
    m = _TPR_AT.match(key)
    if m:
        return f"TPR@{m.group(1)}%FPR"
    return key.replace("_", " ")


def auc_class(value: Any) -> str:
    """CSS class by distance from chance: an AUC of 0.3 leaks as much as one of 0.7."""
    f = as_number(value)
    if f is None:
        return ""
    d = abs(f - 0.5)
    if d < 0.05:
        return "risk-chance"
    if d < 0.1:
        return "risk-low"
    if d < 0.2:
        return "risk-mid"
    return "risk-high"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def bound_text(expectation: dict[str, Any]) -> str:
    lo, hi = expectation.get("min"), expectation.get("max")
    if lo is not None and hi is not None:
        return f"{fmt_value(lo)} ≤ x ≤ {fmt_value(hi)}"
    if lo is not None:
        return f"≥ {fmt_value(lo)}"
    if hi is not None:
        return f"≤ {fmt_value(hi)}"
    return MISSING


FILTERS = {
    "fixed": fmt_fixed,
    "sig": fmt_sig,
    "accuracy": lambda v: fmt_fixed(v, 3),
    "auc": lambda v: fmt_fixed(v, 3),
    "epsilon": fmt_epsilon,
    "delta": fmt_delta,
    "int": fmt_int,
    "metric": fmt_metric,
    "bytes": fmt_bytes,
    "seconds": fmt_seconds,
    "value": fmt_value,
    "params": fmt_params,
    "metric_label": metric_label,
    "auc_class": auc_class,
    "pretty_json": pretty_json,
}
