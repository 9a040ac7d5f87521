"""Risk grades for the report's verdict: one rule per attack family, with overridable bands.

A grade is the band a single headline number falls in. The number is chosen so that it reads
the same way across runs of different sizes:

- ``membership``: TPR at the lowest resolvable FPR (0.1 %, else 1 %) divided by that FPR, i.e.
  how many times more members than non-members the attack flags (Carlini et al. 2022,
  "Membership inference attacks from first principles"). high >= 10x, medium >= 3x, low >= 1.5x.
- ``reconstruction``: PSNR gain in dB over the know-nothing baseline (``psnr_gain``; else
  ``psnr - psnr_baseline``; else ``10 log10(mse_baseline / mse)``, the same quantity).
  high >= 10 dB, medium >= 3 dB, low >= 1 dB.
- ``backdoor``: backdoor success rate (triggered test inputs classified as the target).
  high >= 0.5, medium >= 0.2, low >= 0.05.
- ``label_leakage``: AUC of the recovered labels. high >= 0.9, medium >= 0.7, low >= 0.6.
- ``inference``: attacks that name a class or a property (multi-class label inference,
  property/route inference), graded by how much of the headroom above the class prior they
  take: ``(accuracy - prior) / (1 - prior)``, Cohen's kappa against a prior-following guesser
  (0: no better than the prior, 1: always right). high >= 0.5, medium >= 0.25, low >= 0.1.

Below the low band the grade is ``none``. A run can override any band in its scenario, e.g.
``[report.grading.membership] high = 20``; :func:`check_overrides` validates the keys and that
``high >= medium >= low`` still holds after the override. Where the run reports the metric's
confidence interval or ``leak_detected`` and it says the number is indistinguishable from chance,
the grade is ``none`` whatever the point estimate, with that reason as its rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LEVELS = ("high", "medium", "low")
"""Band names, strongest first; a value below every band grades ``none``."""

DEFAULT_BANDS: dict[str, dict[str, float]] = {
    "membership": {"high": 10.0, "medium": 3.0, "low": 1.5},
    "reconstruction": {"high": 10.0, "medium": 3.0, "low": 1.0},
    "backdoor": {"high": 0.5, "medium": 0.2, "low": 0.05},
    "label_leakage": {"high": 0.9, "medium": 0.7, "low": 0.6},
    "inference": {"high": 0.5, "medium": 0.25, "low": 0.1},
}
UNITS = {
    "membership": "x",
    "reconstruction": " dB",
    "backdoor": "",
    "label_leakage": "",
    "inference": "",
}
WHAT = {
    "membership": "TPR/FPR at low FPR",
    "reconstruction": "PSNR gain over the know-nothing baseline",
    "backdoor": "backdoor success rate",
    "label_leakage": "label-leak AUC",
    "inference": "share of the headroom above the class prior, (accuracy - prior) / (1 - prior)",
}
_FAMILY_OF_ATTACK = {
    "membership": "membership",
    "gradient_inversion": "reconstruction",
    "input_reconstruction": "reconstruction",
    "label_leakage": "label_leakage",
    "property_inference": "inference",
}
LOW_FPRS = (0.001, 0.01)
"""FPRs membership is graded at, lowest first (metrics tpr_at_0.1pct_fpr, tpr_at_1pct_fpr)."""
_TPR_KEY = {0.001: "tpr_at_0.1pct_fpr", 0.01: "tpr_at_1pct_fpr"}
_TPR_AT = re.compile(r"^tpr_at_(\d+(?:\.\d+)?)pct_fpr$")


@dataclass(frozen=True)
class Grade:
    """A grade, the number behind it and the rule (in words) that gave it."""

    family: str  # grading family, "" when the attack's family has no rule
    level: str  # high | medium | low | none | not graded
    value: float | None
    rule: str
    below_resolution: bool = False
    fpr: float | None = None  # membership: the FPR the ratio was read at


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def check_overrides(grading: Mapping[str, Any]) -> None:
    """Raise ValueError naming the bad key (relative to ``report.grading``) when an override is
    not a valid band setting."""
    for family, bands in grading.items():
        if family not in DEFAULT_BANDS:
            raise ValueError(f"{family}: unknown family; allowed: {', '.join(DEFAULT_BANDS)}")
        if not isinstance(bands, Mapping):
            raise ValueError(f"{family}: expected a table of bands {LEVELS}")
        for band, value in bands.items():
            if band not in LEVELS:
                raise ValueError(f"{family}.{band}: unknown band; allowed: {', '.join(LEVELS)}")
            f = number(value)
            if f is None or f < 0:
                raise ValueError(f"{family}.{band}: expected a finite number >= 0, got {value!r}")
        merged = bands_for(family, grading)
        if not merged["high"] >= merged["medium"] >= merged["low"]:
            raise ValueError(
                f"{family}: bands must satisfy high >= medium >= low, got "
                + ", ".join(f"{k}={merged[k]:g}" for k in LEVELS)
            )


def overrides_of(results: Mapping[str, Any]) -> dict[str, Any]:
    """The scenario's ``report.grading`` table in a results.json ({} when absent or malformed:
    a hand-edited file must not break the report)."""
    scenario = results.get("scenario")
    report = scenario.get("report") if isinstance(scenario, Mapping) else None
    found = report.get("grading") if isinstance(report, Mapping) else None
    return dict(found) if isinstance(found, Mapping) else {}


def bands_for(family: str, overrides: Mapping[str, Any] | None = None) -> dict[str, float]:
    bands = dict(DEFAULT_BANDS[family])
    given = (overrides or {}).get(family) if isinstance(overrides, Mapping) else None
    for band, value in (given if isinstance(given, Mapping) else {}).items():
        if band in bands and (f := number(value)) is not None:
            bands[band] = f
    return bands


def grading_family(attack_family: str, metrics: Mapping[str, Any]) -> str:
    """The grading rule an attack falls under ("" when none applies)."""
    if attack_family == "poisoning":
        return "backdoor" if number(metrics.get("backdoor_success")) is not None else ""
    if attack_family == "label_leakage" and number(metrics.get("auc")) is None:
        return "inference" if number(metrics.get("accuracy")) is not None else "label_leakage"
    return _FAMILY_OF_ATTACK.get(attack_family, "")


def band(value: float, bands: Mapping[str, float]) -> str:
    for level in LEVELS:
        if value >= bands[level]:
            return level
    return "none"


def resolvable(fpr: float, n_nonmembers: float | None) -> bool:
    """An FPR can be read from n non-members only if at least one of them may be a false
    positive there: fpr >= 1/n."""
    return n_nonmembers is None or fpr * n_nonmembers >= 1 - 1e-9


def below_resolution(key: str, n_nonmembers: float | None) -> bool:
    """True when a ``tpr_at_<x>pct_fpr`` metric asks for an FPR below 1/n_nonmembers."""
    m = _TPR_AT.match(key)
    return bool(m and n_nonmembers and not resolvable(float(m.group(1)) / 100, n_nonmembers))


def membership_point(metrics: Mapping[str, Any]) -> tuple[float, float, bool] | None:
    """(FPR, TPR, below resolution) at the lowest FPR the challenge set resolves."""
    n_non = number(metrics.get("n_nonmembers"))
    available = [(f, t) for f in LOW_FPRS if (t := number(metrics.get(_TPR_KEY[f]))) is not None]
    if not available:
        return None
    for fpr, tpr in available:
        if resolvable(fpr, n_non):
            return fpr, tpr, False
    fpr, tpr = available[-1]
    return fpr, tpr, True


def reconstruction_gain(metrics: Mapping[str, Any]) -> float | None:
    """PSNR gain in dB over the know-nothing baseline; None without a baseline."""
    if (g := number(metrics.get("psnr_gain"))) is not None:
        return g
    psnr, base = number(metrics.get("psnr")), number(metrics.get("psnr_baseline"))
    if psnr is not None and base is not None:
        return psnr - base
    mse, mse_base = number(metrics.get("mse")), number(metrics.get("mse_baseline"))
    if mse is not None and mse_base is not None and mse > 0 and mse_base > 0:
        return 10 * math.log10(mse_base / mse)
    return None


def _no_leak_reason(metrics: Mapping[str, Any], key: str, chance: float | None) -> str:
    """Why the run itself says this number is indistinguishable from chance ("" otherwise)."""
    if metrics.get("leak_detected") is False:
        return "the run found no leak (leak_detected is false)"
    ci = metrics.get(f"{key}_ci")
    if chance is not None and isinstance(ci, list | tuple) and len(ci) == 2:
        lo, hi = number(ci[0]), number(ci[1])
        if lo is not None and hi is not None and lo <= chance <= hi:
            return f"the 95% CI of {key} [{lo:.3g}, {hi:.3g}] includes chance ({chance:.3g})"
    return ""


def grade(
    attack_family: str, metrics: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> Grade:
    """Grade one attack result by its family's rule (see the module docstring)."""
    family = grading_family(attack_family, metrics)
    if not family:
        return Grade("", "not graded", None, f"no grading rule for the {attack_family} family")
    bands = bands_for(family, overrides)
    unit = UNITS[family]
    below = False
    fpr = None
    if family == "membership":
        point = membership_point(metrics)
        if point is None:
            return Grade(family, "not graded", None, "no TPR at 0.1% or 1% FPR in the results")
        fpr, tpr, below = point
        value = tpr / fpr
        key, chance = _TPR_KEY[fpr], fpr
        what = f"TPR/FPR at {fpr:.1%} FPR".replace(".0%", "%")
    elif family == "reconstruction":
        gain = reconstruction_gain(metrics)
        if gain is None:
            return Grade(family, "not graded", None, "no know-nothing baseline in the results")
        value, what = gain, WHAT[family]
        key = "psnr_gain" if "psnr_gain" in metrics else "psnr"
        chance = 0.0 if key == "psnr_gain" else number(metrics.get("psnr_baseline"))
    elif family == "backdoor":
        value, what, key = float(metrics["backdoor_success"]), WHAT[family], "backdoor_success"
        chance = number(metrics.get("backdoor_success_baseline"))
    elif family == "inference":
        acc, prior = number(metrics.get("accuracy")), number(metrics.get("accuracy_baseline"))
        if acc is None or prior is None or prior >= 1:
            return Grade(family, "not graded", None, "no class-prior baseline in the results")
        value, what, key, chance = (acc - prior) / (1 - prior), WHAT[family], "accuracy", prior
    else:
        auc = number(metrics.get("auc"))
        if auc is None:
            return Grade(family, "not graded", None, "no AUC in the results")
        value, what, key, chance = auc, WHAT[family], "auc", 0.5
    level = band(value, bands)
    rule = "; ".join(f"{lvl} if ≥ {bands[lvl]:g}{unit}" for lvl in LEVELS)
    rule = f"{what} = {value:.3g}{unit} ({rule})"
    if reason := _no_leak_reason(metrics, key, chance):
        level, rule = "none", f"{rule}; graded none because {reason}"
    if below:
        at = f"{fpr:.1%}".replace(".0%", "%")
        rule += f"; below resolution: {1 / fpr:.0f} non-members are needed to read {at} FPR"
    return Grade(family, level, value, rule, below, fpr)
