"""The UP-Person search demo: ``python -m demo`` (see the README's Demo section)."""
