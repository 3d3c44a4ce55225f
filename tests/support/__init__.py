"""Test-only helpers shared across the suite (importable as `support.*`: pytest puts tests/ on the path)."""
