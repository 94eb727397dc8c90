"""Typed settings (settings.py), recipe files and their resolution (recipes.py)."""
