"""Conversion (needs the `convert` extra: torch, transformers, nncf). Nothing here is imported by serving."""
