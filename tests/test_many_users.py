"""Many users on one PostgreSQL catalog at once, the short form of bench/bench_many_users.py.

Separate processes, each with its own catalog and connection pool, search and add at the same
time on a real server: no error, and afterwards every add is visible to every reader, in its
listing and by search.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.slow  # six processes and a server on a busy 2-core machine: about 15 s
def test_searchers_and_adders_at_once_see_every_add(postgres_server):
    sys.path.insert(0, str(BENCH))  # kept: the user processes (spawned) import the module from there
    from bench_many_users import run

    from zoo.catalog import Catalog

    name = postgres_server.create_database()
    url = postgres_server.url(name)
    try:
        Catalog(url)  # the built-in zoos: something to find
        load = run(url, searchers=4, adders=2, seconds=3)
        assert load.errors == [], load.errors[0]
        assert load.missing == [], load.missing[:5]
        assert len(load.adds) >= 2 and len(load.searches) >= 8
        assert len({n.split("-")[0] for n in load.adds}) == 2  # both adders got their writes in
    finally:
        from zoo.catalog import REGISTRY

        REGISTRY.close(url)
        postgres_server.drop_database(name)
