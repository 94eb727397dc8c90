"""`rextransfer datasets` and `rextransfer download`: what is built in, what is on disk, and fetching it.

Parses and reports only; the registry and the downloaders live in `rextransfer.data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DATA = "Data"
ROOT_HELP = "Where built-in datasets live [env REXTRANSFER_DATA; default ~/.cache/rextransfer/data]."


def register(app: typer.Typer) -> None:
    app.command("datasets", rich_help_panel=DATA)(datasets)
    app.command("download", rich_help_panel=DATA, no_args_is_help=True)(download)


def datasets(
    data_root: Annotated[Optional[Path], typer.Option(help=ROOT_HELP)] = None,
) -> None:
    """List the built-in datasets: classes, standard split sizes, headline metric, and whether they are on disk."""
    from rich.table import Table

    from ..core.console import out
    from ..data import data_root as resolve_root
    from ..data import registry
    from ..data.fgvc import hub_present

    root = resolve_root(str(data_root) if data_root else "")
    table = Table(title=f"built-in datasets (data root {root})", title_justify="left")
    for column in ("name", "aliases", "classes", "train", "test", "metric", "Hub copy", "present"):
        table.add_column(column, justify="right" if column in ("classes", "train", "test") else "left",
                         no_wrap=column != "aliases", overflow="fold")
    for name, info in sorted(registry().items()):
        if info.present(root):
            here = "yes"
        elif name != "demo" and hub_present(name, root):
            here = "yes (hub copy)"
        else:
            here = "no"
        table.add_row(name, "\n".join(info.aliases), str(info.num_classes), f"{info.train_size:,}",
                      f"{info.test_size:,}", info.metric, info.hub_id or "—", here)
    out.print(table)
    for name, info in sorted(registry().items()):  # where each comes from, and whom to cite
        out.print(f"{name}: {info.citation}" + (f" {info.url}" if info.url else ""), markup=False, highlight=False)


def download(
    name: Annotated[str, typer.Argument(help="A built-in dataset: food101, cars, aircraft, flowers102 (or an alias).")],
    data_root: Annotated[Optional[Path], typer.Option(help=ROOT_HELP)] = None,
    source: Annotated[str, typer.Option(help="original (checksummed archives) | hub (Hugging Face copy) | auto "
                                        "(original where its URLs still work; Stanford Cars' are dead, so hub).")] = "auto",
) -> None:
    """Fetch a built-in dataset into the data root (resumable; offline it says where to put the files by hand)."""
    from ..core.console import out
    from ..data import data_root as resolve_root
    from ..data import lookup, registry
    from ..core.errors import DataError, UsageError

    if source not in ("original", "hub", "auto"):
        raise UsageError(f"--source must be original, hub or auto; got {source!r}")
    info = lookup(name)
    if info is None or info.download is None:
        names = ", ".join(n for n, i in sorted(registry().items()) if i.download is not None)
        raise DataError(f"no downloadable dataset named {name!r}; choose one of {names}")
    root = resolve_root(str(data_root) if data_root else "")
    path = info.download(root, source=source)
    out.print(f"{info.name}: ready at {path}")
