"""Fetching datasets: original archives (checksummed, resumable) and Hub copies, with safe extraction.

Every failure is one line that says what to do, including where to put the files by hand: many
training machines have no network. Offline is detected up front (a 3 s connection probe, or
REXTRANSFER_OFFLINE=1 / HF_HUB_OFFLINE=1) so nothing retries for half a minute.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from ..core import reach as net
from ..core.reach import hub_offline
from ..core.console import err, log
from ..core.errors import DataError, EnvironmentProblem
from .hub import HubSpec, cache_dir, local_copy, open_hub, save_copy

CHUNK = 1 << 20  # bytes per read
PROBE_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Archive:
    """One file of an original release: where it comes from, its md5, and where it goes."""

    url: str
    md5: str
    into: str = ""          # folder under the data root that receives the file (or its extracted contents)
    extract: bool = True    # tar archives are extracted into `into`, then deleted

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# --------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------
def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Can we reach the URL's server within `timeout` seconds? Never, under REXTRANSFER_OFFLINE=1."""
    if os.environ.get("REXTRANSFER_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    return net.reachable(url, timeout)


def md5sum(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, dest: Path, md5: str) -> Path:
    """Download `url` to `dest`, resuming a `<dest>.part` with an HTTP Range request, then verify md5."""
    if dest.exists() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "rextransfer"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urlopen(Request(url, headers=headers), timeout=READ_TIMEOUT_S)
    except HTTPError as e:
        if e.code != 416 or not have:  # 416: nothing left to send, the .part is complete
            raise EnvironmentProblem(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        response = None
    except (URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise EnvironmentProblem(f"cannot download {url}: {reason}; put {dest.name} at {dest} by hand and rerun") from None

    if response is not None:
        with response:
            if have and response.status != 206:  # server ignored the Range header: start again
                have = 0
            length = int(response.headers.get("Content-Length") or 0)
            total = have + length if length else None
            try:
                _copy_with_progress(response, part, have, total, dest.name)
            except OSError as e:
                raise EnvironmentProblem(
                    f"writing {part} failed ({e.strerror or e}); free some disk space and rerun to resume"
                ) from None
    got = md5sum(part)
    if got != md5:
        part.unlink()
        raise EnvironmentProblem(
            f"checksum mismatch for {dest.name} (md5 {got}, expected {md5}); the partial file was deleted, rerun to download again"
        )
    part.replace(dest)
    return dest


def _copy_with_progress(response, part: Path, have: int, total: int | None, label: str) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=True) as progress, open(part, "ab" if have else "wb") as f:
        task = progress.add_task(label, total=total, completed=have)
        for chunk in iter(lambda: response.read(CHUNK), b""):
            f.write(chunk)
            progress.advance(task, len(chunk))


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------
def extract_tar(archive: Path, target: Path) -> None:
    """Extract a tar archive into `target`, refusing links, special files and paths that leave it."""
    target = target.resolve()
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                if not (m.isfile() or m.isdir()):
                    raise DataError(f"refusing to extract {archive.name}: {m.name!r} is a link or special file")
                dest = (target / m.name).resolve()
                if dest != target and target not in dest.parents:
                    raise DataError(f"refusing to extract {archive.name}: {m.name!r} would be written outside {target}")
            # the "data" filter (Python >= 3.10.12 / 3.11.4) re-checks the same rules and drops owners/modes
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **extra)
    except tarfile.TarError as e:
        raise DataError(f"{archive} is not a readable tar archive ({e}); delete it and rerun") from None


# --------------------------------------------------------------------------------------------
# whole datasets
# --------------------------------------------------------------------------------------------
def download_archives(name: str, archives: tuple[Archive, ...], root: Path, manual: str) -> Path:
    """Fetch and unpack every archive of an original release under `root`. `manual` says what to do by hand."""
    if not archives:
        raise EnvironmentProblem(f"{name} has no downloadable original release: {manual}")
    if not reachable(archives[0].url):
        host = urlsplit(archives[0].url).hostname
        raise EnvironmentProblem(f"cannot reach {host} (offline?) to fetch {archives[0].url}: rerun when online, or {manual}")
    for archive in archives:
        folder = root / archive.into
        log(f"{name}: fetching {archive.url}")
        path = fetch(archive.url, root / ".downloads" / archive.filename, archive.md5)
        if archive.extract:
            log(f"{name}: extracting {archive.filename} into {folder}")
            extract_tar(path, folder)
            path.unlink()
        else:
            folder.mkdir(parents=True, exist_ok=True)
            path.replace(folder / archive.filename)
    return root


def download_hub(name: str, spec: HubSpec, root: Path, manual: str) -> Path:
    """Fetch a Hub copy with `datasets` (which resumes and verifies on its own) into <root>/hf-datasets
    and save the splits we use at <root>/<name>-hub: the copy the loader reads first, offline too.
    A download already in the datasets cache is saved without the network."""
    try:
        dataset_dict = local_copy(spec, root, name)
        if dataset_dict is None:
            if hub_offline(datasets=True):
                raise EnvironmentProblem(f"the Hugging Face Hub is switched off here (HF_HUB_OFFLINE=1): unset it to fetch {spec.hub_id}, or {manual}")
            if not reachable("https://huggingface.co"):
                raise EnvironmentProblem(f"cannot reach huggingface.co (offline?) to fetch {spec.hub_id}: rerun when online, or {manual}")
            log(f"{name}: fetching the Hub copy {spec.hub_id} into {cache_dir(root)}")
            dataset_dict = open_hub(spec, root, name)
        path = save_copy(dataset_dict, spec, root, name)
    except (ConnectionError, OSError) as e:
        raise EnvironmentProblem(f"fetching {spec.hub_id} failed ({first_line(e)}): rerun to resume, or {manual}") from None
    except (ValueError, RuntimeError) as e:  # e.g. "Dataset scripts are no longer supported", a changed card
        raise DataError(f"the Hub copy {spec.hub_id} cannot be loaded ({first_line(e)}); {manual}") from None
    log(f"{name}: saved at {path}; it loads offline ({cache_dir(root)} is no longer needed)")
    return path


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors run to many lines), or its type."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
