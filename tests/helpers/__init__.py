"""Test-only helpers (builders of small real models that need no network)."""
