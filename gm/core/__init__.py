"""Primitives every layer may use: typed-config building, registries, files, numerics, layout."""
