"""Downloads: checksums, resume with HTTP Range, safe extraction, fast one-line offline errors,
and the `datasets` / `download` commands. A local HTTP server stands in for the dataset hosts."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fgvc_trees import make_flowers_tree, need_fixtures, tiny_jpeg
from rextransfer.cli.app import app
from rextransfer.data import download as dl
from rextransfer.data import lookup
from rextransfer.core.errors import DataError, EnvironmentProblem

REPO = Path(__file__).resolve().parents[1]


class Server:
    """Serves `files` (name -> bytes) over HTTP with Range support; records the requests."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True):
        self.files, self.requests = files, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests.append((name, self.headers.get("Range")))
                if name not in server.files:
                    self.send_error(404)
                    return
                data, start = server.files[name], 0
                rng = self.headers.get("Range")
                if rng and honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload() -> bytes:
    return os.urandom(3 * 1024 * 1024 + 123)  # a few chunks


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_fetch_downloads_and_verifies_the_checksum(tmp_path, payload):
    server = Server({"a.bin": payload})
    try:
        path = dl.fetch(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload))
        assert path.read_bytes() == payload and not (tmp_path / "a.bin.part").exists()
        dl.fetch(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload))  # already there: no request
        assert len(server.requests) == 1
    finally:
        server.close()


def test_fetch_resumes_a_partial_download_with_a_range_request(tmp_path, payload):
    server = Server({"a.bin": payload})
    (tmp_path / "a.bin.part").write_bytes(payload[:1_000_000])
    try:
        dl.fetch(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload))
    finally:
        server.close()
    assert server.requests == [("a.bin", "bytes=1000000-")]
    assert (tmp_path / "a.bin").read_bytes() == payload


def test_fetch_starts_again_when_the_server_ignores_range(tmp_path, payload):
    server = Server({"a.bin": payload}, honour_range=False)
    (tmp_path / "a.bin.part").write_bytes(b"x" * 5000)
    try:
        dl.fetch(f"{server.url}/a.bin", tmp_path / "a.bin", md5(payload))
    finally:
        server.close()
    assert (tmp_path / "a.bin").read_bytes() == payload


def test_fetch_deletes_a_file_with_the_wrong_checksum(tmp_path, payload):
    server = Server({"a.bin": payload})
    try:
        with pytest.raises(EnvironmentProblem, match="checksum mismatch"):
            dl.fetch(f"{server.url}/a.bin", tmp_path / "a.bin", "0" * 32)
    finally:
        server.close()
    assert not (tmp_path / "a.bin").exists() and not (tmp_path / "a.bin.part").exists()


def test_fetch_from_an_unreachable_host_is_a_fast_one_line_error(tmp_path):
    start = time.monotonic()
    with pytest.raises(EnvironmentProblem) as e:
        dl.fetch("http://127.0.0.1:9/a.bin", tmp_path / "a.bin", "0" * 32)  # port 9: nothing listens
    assert time.monotonic() - start < 5 and "\n" not in str(e.value) and str(tmp_path / "a.bin") in str(e.value)


# --- extraction ----------------------------------------------------------------------------------
def make_tar(path: Path, members: list[tuple[str, bytes | None, str | None]]) -> Path:
    """members: (name, data, link_target); data None + link None = directory."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type, info.linkname = tarfile.SYMTYPE, link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_tar_unpacks_a_plain_archive(tmp_path):
    archive = make_tar(tmp_path / "ok.tgz", [("jpg", None, None), ("jpg/image_00001.jpg", b"abc", None)])
    dl.extract_tar(archive, tmp_path / "out")
    assert (tmp_path / "out" / "jpg" / "image_00001.jpg").read_bytes() == b"abc"


@pytest.mark.parametrize("members,why", [
    ([("../evil.txt", b"x", None)], "outside"),
    ([("/tmp/evil-absolute.txt", b"x", None)], "outside"),
    ([("jpg/link", None, "/etc/passwd")], "link"),
    ([("jpg/inner", None, "../../x")], "link"),
])
def test_extract_tar_refuses_paths_outside_the_target_and_links(tmp_path, members, why):
    archive = make_tar(tmp_path / "bad.tgz", [("jpg", None, None), ("jpg/fine.jpg", b"ok", None)] + members)
    with pytest.raises(DataError, match=why):
        dl.extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil-absolute.txt").exists()
    assert not (tmp_path / "out" / "jpg" / "fine.jpg").exists()  # nothing is extracted from a bad archive


# --- whole datasets --------------------------------------------------------------------------------
def test_download_archives_lays_out_flowers_from_its_three_files(tmp_path):
    """The Flowers archive set (102flowers.tgz with jpg/, plus the two .mat files) served locally."""
    src = need_fixtures() / "flowers102"
    jpgs = [(f"jpg/image_{i:05d}.jpg", tiny_jpeg(i), None) for i in range(1, 8190)]
    tgz = make_tar(tmp_path / "102flowers.tgz", [("jpg", None, None)] + jpgs).read_bytes()
    files = {"102flowers.tgz": tgz, "imagelabels.mat": (src / "imagelabels.mat").read_bytes(),
             "setid.mat": (src / "setid.mat").read_bytes()}
    server = Server(files)
    archives = tuple(dl.Archive(f"{server.url}/{n}", md5(d), "flowers-102", n.endswith(".tgz")) for n, d in files.items())
    root = tmp_path / "data"
    try:
        dl.download_archives("flowers102", archives, root, manual="by hand")
    finally:
        server.close()
    assert lookup("flowers102").present(root)
    assert not (root / ".downloads" / "102flowers.tgz").exists()  # the archive is removed after extraction
    from rextransfer.config.settings import Config
    from rextransfer.data import get_splits

    s = get_splits(Config(dataset="flowers102", data_root=str(root), source="original"))
    assert (len(s.train), len(s.eval)) == (2040, 6149)


def cli(*args: str, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "rextransfer.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=60)
    return proc, time.monotonic() - start


def test_offline_download_of_an_original_release_says_where_to_put_the_files(tmp_path):
    proc, elapsed = cli("download", "flowers102", "--data-root", str(tmp_path), REXTRANSFER_OFFLINE="1")
    assert elapsed < 5 and proc.returncode == 7, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "www.robots.ox.ac.uk" in lines[0] and str(tmp_path / "flowers-102") in lines[0] and "setid.mat" in lines[0]


def test_offline_hub_download_is_a_fast_one_line_error(tmp_path):
    proc, elapsed = cli("download", "cars", "--data-root", str(tmp_path), HF_HUB_OFFLINE="1")
    assert elapsed < 5 and proc.returncode == 7, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tanganke/stanford_cars" in lines[0] and str(tmp_path / "stanford_cars") in lines[0]


def test_cars_original_download_points_to_the_hub(tmp_path):
    result = CliRunner().invoke(app, ["download", "stanford_cars", "--source", "original", "--data-root", str(tmp_path)])
    assert result.exit_code == DataError.exit_code, result.output
    assert "dead" in result.stderr and "--source hub" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_download_of_a_present_dataset_does_nothing(tmp_path):
    make_flowers_tree(tmp_path, n_per_class=1)
    result = CliRunner().invoke(app, ["download", "flowers", "--data-root", str(tmp_path)], env={"REXTRANSFER_OFFLINE": "1"})
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "flowers-102") in result.output


def test_download_of_an_unknown_dataset_lists_the_choices(tmp_path):
    result = CliRunner().invoke(app, ["download", "imagenet", "--data-root", str(tmp_path)])
    assert result.exit_code == DataError.exit_code and "food101" in result.stderr, result.output


def test_datasets_command_lists_facts_and_what_is_present(tmp_path):
    make_flowers_tree(tmp_path, n_per_class=1)
    result = CliRunner().invoke(app, ["datasets", "--data-root", str(tmp_path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    assert {"food101", "cars", "aircraft", "flowers102"} <= set(rows)
    cells = lambda name: [c.strip() for c in rows[name].split("│")[1:-1]]
    assert cells("flowers102")[2:] == ["102", "2,040", "6,149", "mean_class_acc", "dpdl-benchmark/oxford_flowers102", "yes"]
    assert cells("food101")[2:] == ["101", "75,750", "25,250", "top1", "ethz/food101", "no"]
    assert cells("cars")[2:] == ["196", "8,144", "8,041", "top1", "tanganke/stanford_cars", "no"]
    assert cells("aircraft")[2:] == ["100", "6,667", "3,333", "mean_class_acc", "Donghyun99/FGVC-Aircraft", "no"]
    # and whom to cite, with the dataset's home page
    assert "flowers102: Nilsback, Zisserman" in result.output and "robots.ox.ac.uk/~vgg/data/flowers/102" in result.output


def test_datasets_command_reads_the_data_root_from_the_environment(tmp_path):
    make_flowers_tree(tmp_path, n_per_class=1)
    result = CliRunner().invoke(app, ["datasets"], env={"REXTRANSFER_DATA": str(tmp_path)}, terminal_width=200)
    assert result.exit_code == 0 and str(tmp_path) in result.output
    flowers = next(line for line in result.output.splitlines() if "flowers102" in line)
    assert "yes" in flowers
