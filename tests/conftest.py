"""Shared test setup: offline, quiet, deterministic, on 2 CPU cores, caches in a temp folder."""

import os
import tempfile

# Tests never touch the network: Hub libraries must not retry for ~25 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Pixel/scan caches and built-in data roots live in a throwaway folder, never in the user's ~/.cache.
_TMP = tempfile.mkdtemp(prefix="rextransfer-tests-")
os.environ.setdefault("REXTRANSFER_CACHE", os.path.join(_TMP, "cache"))
os.environ.setdefault("REXTRANSFER_DATA", os.path.join(_TMP, "data"))
os.environ.setdefault("COLUMNS", "200")  # rich tables and one-line errors unwrapped in captured output
