"""Errors, output streams, atomic files, the reachability probe and plots: used by every layer."""
