"""privlab: privacy attack-and-defense evaluation for distributed machine learning.

Heavy libraries (torch, opacus, tenseal) are imported where they are used so that the CLI's
`--help` and `list` stay fast; the Python API below is imported on first use as well:

- `privlab.run(scenario, overrides=..., seed=..., out=...)` -> `privlab.Results`
- `privlab.load_results(path)`, `privlab.report(results, path)`
- the figure functions of `privlab.plots` (e.g. `privlab.roc_plot(results, "mia")`)
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


FIGURE_MODULES = ("privlab.plots", "privlab.figures")
"""Where figure functions live: their `__all__` (or, without one, every public `*_plot`
function) is re-exported here, so `privlab.roc_plot(results, "mia")` works in a notebook."""


def __getattr__(name: str) -> Any:
    """Lazy exports: the API from privlab.api, figure functions from the figure modules."""
    if name == "report":  # the module privlab.report, callable as privlab.api.report
        import importlib

        return importlib.import_module("privlab.report")
    if name in _API:
        from privlab import api

        return getattr(api, name)
    if not name.startswith("_"):
        import importlib

        for module_name in FIGURE_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            public = getattr(module, "__all__", None)
            value = getattr(module, name, None)
            if callable(value) and (name in public if public else name.endswith("_plot")):
                return value
    raise AttributeError(f"module 'privlab' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
