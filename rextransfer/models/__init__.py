"""Backbones: the registry of names, widths and weights (registry.py, no heavy imports), building a
model with a new head and loading weights files (build.py)."""
