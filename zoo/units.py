"""Sizes in words, one unit system everywhere: binary prefixes (KiB, MiB, GiB), as the limits count.

Every size zoo prints (cache listings, fetch reports, archive limits, index limits, free space)
goes through `human_size`, so "1.0 MiB" in one message is 1,048,576 bytes in every other.
Ground floor: imports nothing of zoo.
"""
from __future__ import annotations

__all__ = ["human_size"]

_UNITS = ("B", "KiB", "MiB", "GiB")  # past GiB still GiB: "1024.0 GiB" reads at a glance


def human_size(n: float) -> str:
    """A byte count in words: 1536 -> '1.5 KiB', 64 << 20 -> '64.0 MiB', 512 -> '512 B'.

    >>> human_size(1536)
    '1.5 KiB'
    """
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
