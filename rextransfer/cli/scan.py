"""`rextransfer scan PATH`: find unusable images in a folder or built-in dataset before training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

MAX_ROWS = 50  # bad files listed in the table; --csv writes them all


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def scan(
        path: Annotated[str, typer.Argument(help="An image folder (one sub-folder per class) or a dataset name.")],
        strict: Annotated[bool, typer.Option("--strict", help="Exit with code 3 if any image is unusable.")] = False,
        csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Write every unusable file and its reason to this CSV.")] = None,
        workers: Annotated[int, typer.Option(help="Decoding processes (-1 = auto).")] = -1,
        data_root: Annotated[Optional[Path], typer.Option(help="Where built-in datasets live (default: $REXTRANSFER_DATA or ~/.cache/rextransfer/data).")] = None,
        source: Annotated[str, typer.Option(help="Built-in datasets: original | hub | auto.")] = "auto",
    ) -> None:
        """Decode every image once and report the unusable ones (results are cached per file)."""
        from rich.table import Table

        from ..config.settings import Config
        from ..core.console import out
        from ..data import get_splits
        from ..core.errors import DataError

        cfg = Config(dataset=path, data_root=str(data_root) if data_root else "", source=source)
        splits = get_splits(cfg)  # before importing torch (via data.scan): a wrong path fails at once
        from ..data.scan import ScanResult, scan_samples, write_bad_files_csv

        results: list[ScanResult] = [scan_samples(s, policy="skip", workers=workers) for s in (splits.train, splits.eval)]
        for result in results:
            out.print(result.summary())
        bad = [(key, reason, r.split) for r in results for key, reason in r.bad]
        if bad:
            table = Table("file", "reason", "split", title=f"{len(bad)} unusable images", title_justify="left")
            for key, reason, split in bad[:MAX_ROWS]:
                table.add_row(key, reason, split)
            out.print(table)
            if len(bad) > MAX_ROWS:
                out.print(f"... and {len(bad) - MAX_ROWS} more (--csv FILE lists them all)")
        if csv_out is not None:
            write_bad_files_csv(results, csv_out)
            out.print(f"wrote {csv_out}")
        if bad and strict:
            raise DataError(f"{len(bad)} unusable images in {path} (--strict); training would skip them")
        if not bad:
            out.print("all images are usable")

