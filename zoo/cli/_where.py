"""What `zoo --where` and `zoo info --paths` print: which catalog and cache are in use, and why."""
from __future__ import annotations


def where_text(catalog: str | None = None, cache: str | None = None) -> str:
    """Which catalog and cache are in use and why, one fact a line."""
    from zoo.config import where

    found = where(catalog, cache)
    lines = []
    for key in ("catalog", "cache", "home", "legacy_cache"):
        if key in found:
            fact = found[key]
            lines.append(f"{key.replace('_', ' ') + ':':14}{fact['path']}")
            lines.append(f"{'':14}({fact['why']})")
            if key == "catalog" and fact["exists"] != "yes":
                lines.append(f"{'':14}exists: {fact['exists']}")
    return "\n".join(lines)
