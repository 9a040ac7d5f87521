"""Communication cost: bytes per round on each client's link and the simulated round latency.

A synchronous round waits for its slowest party, so a round's latency is the maximum over
parties of the time its own link needs: per message one latency, plus bytes received over the
downlink and bytes sent over the uplink (1 Mbps = 1000 bits per millisecond). The server and
the key authority sit in a data centre: their links are not the bottleneck and are not
modelled. Everything here is computed from the bytes the wire counted, so it is deterministic
(hence `_ms`, not a wall-clock `_seconds` field); local computation is not included (the
critical path of secure aggregation adds it, measured).
"""

from __future__ import annotations

from typing import Any

INFRASTRUCTURE = frozenset({"server", "key_authority"})


def link_ms(
    sent: int,
    received: int,
    messages: int,
    *,
    uplink_mbps: float,
    downlink_mbps: float,
    latency_ms: float,
) -> float:
    """Milliseconds one party's link needs for a round's traffic."""
    return (
        messages * latency_ms
        + 8 * received / (downlink_mbps * 1e3)
        + 8 * sent / (uplink_mbps * 1e3)
    )


def network_cost(
    traffic: dict[int, dict[str, list[int]]], rounds: int, network: Any | None
) -> dict[str, Any]:
    """`cost.network` of a variant: client-side bytes up and down per round and, given a
    NetworkSpec, each round's simulated latency and the party that set it."""
    up, down, latency, slowest = [], [], [], []
    for r in range(rounds + 1):
        parties = {p: row for p, row in traffic.get(r, {}).items() if p not in INFRASTRUCTURE}
        up.append(sum(row[0] for row in parties.values()))
        down.append(sum(row[1] for row in parties.values()))
        if network is None:
            continue
        times = {
            p: link_ms(
                row[0],
                row[1],
                row[2] + row[3],
                uplink_mbps=network.uplink_mbps,
                downlink_mbps=network.downlink_mbps,
                latency_ms=network.latency_ms,
            )
            for p, row in parties.items()
        }
        worst = max(times, key=lambda p: (times[p], p), default=None)
        latency.append(round(times[worst], 3) if worst is not None else 0.0)
        slowest.append(worst)
    out: dict[str, Any] = {"client_bytes_up_per_round": up, "client_bytes_down_per_round": down}
    if network is not None:
        out.update(
            {
                "link": network.model_dump(mode="json"),
                "round_latency_ms": latency,
                "total_latency_ms": round(sum(latency), 3),
                "slowest_party_per_round": slowest,
            }
        )
    return out
