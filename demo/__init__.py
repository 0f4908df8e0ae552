"""The UP-Person search demo: ``python -m demo`` (see docs/DEMO.md)."""
