"""privlab: privacy attack-and-defense evaluation for distributed machine learning.

Heavy libraries (torch, opacus, tenseal) are imported where they are used so that the CLI's
`--help` and `list` stay fast; the Python API below is imported on first use as well:

- `privlab.run(scenario, overrides=..., seed=..., out=...)` -> `privlab.Results`
- `privlab.load_results(path)`, `privlab.report(results, path)`
- every public function of `privlab.plots` (e.g. `privlab.roc_plot(results, "mia")`)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = (
    "run",
    "execute",
    "load_results",
    "report",
    "Results",
    "VariantResult",
    "AttackOutcome",
    "StrongestAttack",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    """Lazy exports: the API from privlab.api, plot functions from privlab.plots."""
    if name in _API:
        from privlab import api

        return getattr(api, name)
    if not name.startswith("_"):
        import importlib

        plots = importlib.import_module("privlab.plots")
        if name in getattr(plots, "__all__", ()) or (
            callable(getattr(plots, name, None)) and name.endswith(("_plot", "_figure", "_svg"))
        ):
            return getattr(plots, name)
    raise AttributeError(f"module 'privlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
