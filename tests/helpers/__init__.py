"""Test helpers: model builders, servers and fixtures (tests/ is on sys.path through pytest's `pythonpath`)."""
