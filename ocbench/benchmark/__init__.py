"""The benchmark itself: train/test splits, embedding extraction and caching, result entries.

Kept light on purpose: importing ``ocbench.benchmark`` imports nothing heavy; torch is only
imported by the modules that need it (e.g. ``ocbench.benchmark.embeddings``).
"""
