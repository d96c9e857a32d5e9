"""Measurement: speed (bench) and, later, retrieval quality (eval)."""
