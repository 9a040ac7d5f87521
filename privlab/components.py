"""What `privlab show` prints beside the scenario: every component's params with defaults.

Built from a prepared `ScenarioRun` (preparing validates everything and refuses unknown params,
but trains nothing), so what is shown is exactly what a run would use.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from privlab import registry


def _params(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def resolved_components(prepared: list[tuple]) -> dict[str, Any]:
    """Per variant: the topology's, attacks' and defenses' params, defaults filled in."""
    out: dict[str, Any] = {}
    for variant, vs, defenses, attacks, dataset, clients in prepared:
        topology_cls = registry.topologies.get(vs.topology.name, "topology.name")
        check = getattr(topology_cls, "check_setting", None)
        topo = None
        if check is not None:
            topo = check(vs, dataset.input_shape, dataset.num_classes, len(clients))
        out[variant.name] = {
            "topology": {
                "name": vs.topology.name,
                "params": _params(topo) if isinstance(topo, BaseModel) else vs.topology.params,
            },
            "attacks": {
                a.id: {"name": a.spec.name, "family": a.family, "params": _params(a.params)}
                for a in attacks
            },
            "defenses": [
                {
                    "name": d.spec.name,
                    "id": d.spec.key,
                    "placement": str(d.placement),
                    "params": _params(d.params),
                }
                for d in defenses.all()
            ],
        }
    return out
