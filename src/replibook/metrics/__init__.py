"""Metrics, one family per module, each with known-answer tests."""
