"""Helpers for tests and end-to-end checks against a real cluster (like kopf.testing)."""
