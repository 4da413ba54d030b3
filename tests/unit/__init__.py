"""Tests that need no registry, server or skopeo: they run alone in seconds
(`python -m pytest tests/unit`)."""
