"""What this machine's CPU is, for choices that depend on it (MKL's code path, a compiled
kernel's cache key)."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path


@cache
def cpuinfo(*fields: str) -> dict[str, str]:
    """The first processor's `fields` from /proc/cpuinfo (Linux), e.g. "vendor_id"; on other
    systems {"processor": platform.processor()}."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"processor": platform.processor()}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in fields and key not in out:
            out[key] = value.strip()
        if not line.strip() and out:  # the end of the first processor's block
            break
    return out
