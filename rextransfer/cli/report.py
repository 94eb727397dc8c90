"""Tables that more than one command prints."""

from __future__ import annotations

METRICS = ("top1", "top5", "mean_class_acc", "loss")


def metrics_table(title: str, columns: dict[str, dict], headline: str):
    """A rich table: one row per metric (the headline marked), one column per {name: metrics}."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for key in METRICS:
        cells = []
        for values in columns.values():
            value = values.get(key)
            cells.append("—" if value is None else f"{value:.4f}" if key == "loss" else f"{value:.2f}")
        table.add_row(key + (" (headline)" if key == headline else ""), *cells)
    return table
