"""Catalog commands: search, info, add, scan, list, rm, source."""
from __future__ import annotations
