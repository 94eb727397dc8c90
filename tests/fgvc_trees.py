"""Tiny but faithful dataset trees for tests: the real metadata files, tiny JPEGs at the real names.

Flowers, Cars and Food use the real metadata from the fixtures (the file names they list are the
real ones). Aircraft has no real files in the fixtures; its text format is simple, so we write it
with the 100 real variant names (spaces and slashes included) at the real split sizes.

Images are 16x16 JPEGs, one per class (a class colour), hard-linked to every file of the class:
101,000 Food-101 files take about a second. `n_per_class` variants keep only a few images per class
and per split (with metadata rewritten to match), for fast training tests.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

from PIL import Image

FIXTURES = Path(os.environ.get("REXTRANSFER_FIXTURES", "")) if os.environ.get("REXTRANSFER_FIXTURES") else None
for _candidate in (Path(__file__).parent / "fixtures" / "real-metadata", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-metadata"):
    if FIXTURES is None and _candidate.is_dir():
        FIXTURES = _candidate

# data/variants.txt of fgvc-aircraft-2013b, in the release's order (which is code-point sorted)
AIRCRAFT_VARIANTS = [
    "707-320", "727-200", "737-200", "737-300", "737-400", "737-500", "737-600", "737-700", "737-800", "737-900",
    "747-100", "747-200", "747-300", "747-400", "757-200", "757-300", "767-200", "767-300", "767-400", "777-200",
    "777-300", "A300B4", "A310", "A318", "A319", "A320", "A321", "A330-200", "A330-300", "A340-200",
    "A340-300", "A340-500", "A340-600", "A380", "ATR-42", "ATR-72", "An-12", "BAE 146-200", "BAE 146-300", "BAE-125",
    "Beechcraft 1900", "Boeing 717", "C-130", "C-47", "CRJ-200", "CRJ-700", "CRJ-900", "Cessna 172", "Cessna 208", "Cessna 525",
    "Cessna 560", "Challenger 600", "DC-10", "DC-3", "DC-6", "DC-8", "DC-9-30", "DH-82", "DHC-1", "DHC-6",
    "DHC-8-100", "DHC-8-300", "DR-400", "Dornier 328", "E-170", "E-190", "E-195", "EMB-120", "ERJ 135", "ERJ 145",
    "Embraer Legacy 600", "Eurofighter Typhoon", "F-16A/B", "F/A-18", "Falcon 2000", "Falcon 900", "Fokker 100", "Fokker 50", "Fokker 70", "Global Express",
    "Gulfstream IV", "Gulfstream V", "Hawk T1", "Il-76", "L-1011", "MD-11", "MD-80", "MD-87", "MD-90", "Metroliner",
    "Model B200", "PA-28", "SR-20", "Saab 2000", "Saab 340", "Spitfire", "Tornado", "Tu-134", "Tu-154", "Yak-42",
]


def need_fixtures() -> Path:
    import pytest

    if FIXTURES is None:
        pytest.skip("real metadata fixtures not found (set REXTRANSFER_FIXTURES to shared/fixtures/real-metadata)")
    return FIXTURES


def tiny_jpeg(index: int, size: int | tuple[int, int] = 16) -> bytes:
    """A solid-colour JPEG; the colour is a deterministic function of `index` (the class)."""
    color = ((index * 67) % 256, (index * 151 + 40) % 256, (index * 29 + 90) % 256)
    buf = io.BytesIO()
    Image.new("RGB", (size, size) if isinstance(size, int) else size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def place(paths_by_class: dict[int, list[Path]], size: int | tuple[int, int] = 16) -> None:
    """Write one JPEG per class and hard-link it to the class's other paths (copy if links fail)."""
    made: set[Path] = set()
    for label, paths in paths_by_class.items():
        if not paths:
            continue
        data = tiny_jpeg(label, size)
        first = paths[0]
        for p in paths:
            if p.parent not in made:
                p.parent.mkdir(parents=True, exist_ok=True)
                made.add(p.parent)
            if p == first:
                p.write_bytes(data)
                continue
            try:
                os.link(first, p)
            except OSError:
                p.write_bytes(data)


def replace_image(path: Path, size: tuple[int, int], color=(200, 30, 30)) -> None:
    """Give one file its own pixels (breaking its hard link), e.g. a realistic size for crop tests."""
    path.unlink()
    Image.new("RGB", size, color).save(path, "JPEG")


def _first_n(items, n):
    return items if n is None else items[:n]


# --------------------------------------------------------------------------------------------
def make_flowers_tree(root: Path, n_per_class: int | None = None) -> Path:
    """<root>/flowers-102/{jpg/image_%05d.jpg, imagelabels.mat, setid.mat}; returns root."""
    import numpy as np
    import scipy.io as sio

    src = need_fixtures() / "flowers102"
    base = Path(root) / "flowers-102"
    base.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "imagelabels.mat", base / "imagelabels.mat")
    labels = [int(y) - 1 for y in sio.loadmat(src / "imagelabels.mat", squeeze_me=True)["labels"]]
    setid = sio.loadmat(src / "setid.mat", squeeze_me=True)
    if n_per_class is None:
        shutil.copy(src / "setid.mat", base / "setid.mat")
        ids = {k: [int(i) for i in setid[k]] for k in ("trnid", "valid", "tstid")}
    else:
        ids = {}
        for k in ("trnid", "valid", "tstid"):
            kept, seen = [], {}
            for i in (int(i) for i in setid[k]):
                y = labels[i - 1]
                if seen.get(y, 0) < n_per_class:
                    kept.append(i)
                    seen[y] = seen.get(y, 0) + 1
            ids[k] = kept
        sio.savemat(base / "setid.mat", {k: np.array(v, dtype=np.uint16) for k, v in ids.items()})
    by_class: dict[int, list[Path]] = {}
    for i in sorted(i for v in ids.values() for i in v):
        by_class.setdefault(labels[i - 1], []).append(base / "jpg" / f"image_{i:05d}.jpg")
    place(by_class)
    return Path(root)


# --------------------------------------------------------------------------------------------
def write_cars_test_labels(dst: Path, test_annos_mat: Path, labels_csv: Path) -> None:
    """Write cars_test_annos_withlabels.mat (the file torchvision expects) in the real struct layout:
    `annotations`, a 1xN struct array with fields bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname,
    built from devkit/cars_test_annos.mat plus the real test labels (fname,x1,y1,x2,y2,class CSV)."""
    import numpy as np
    import scipy.io as sio

    annos = sio.loadmat(test_annos_mat, squeeze_me=True)["annotations"]
    with open(labels_csv, newline="") as f:
        label_of = {row[0]: int(row[5]) for row in csv.reader(f)}
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]
    out = np.empty((1, len(annos)), dtype=[(k, "O") for k in fields])
    for j, a in enumerate(annos):
        fname = str(a["fname"])
        for k in fields[:4]:
            out[0, j][k] = np.array([[int(a[k])]], dtype=np.uint16)
        out[0, j]["class"] = np.array([[label_of[fname]]], dtype=np.uint8)
        out[0, j]["fname"] = np.array([fname])
    sio.savemat(dst, {"annotations": out})


def make_cars_tree(root: Path, n_per_class: int | None = None, with_test_labels: bool = True) -> Path:
    """<root>/stanford_cars/{devkit/*.mat, cars_test_annos_withlabels.mat, cars_train/, cars_test/}."""
    import numpy as np
    import scipy.io as sio

    src = need_fixtures() / "stanford_cars"
    base = Path(root) / "stanford_cars"
    (base / "devkit").mkdir(parents=True, exist_ok=True)
    for name in ("cars_meta.mat", "cars_train_annos.mat", "cars_test_annos.mat"):
        shutil.copy(src / "devkit" / name, base / "devkit" / name)
    if with_test_labels:
        write_cars_test_labels(base / "cars_test_annos_withlabels.mat", src / "devkit" / "cars_test_annos.mat",
                               src / "_derived_kaggle" / "anno_test.csv")
    by_class: dict[int, list[Path]] = {}
    for annos_file, folder in ((base / "devkit" / "cars_train_annos.mat", "cars_train"),
                               (base / "cars_test_annos_withlabels.mat", "cars_test")):
        if not annos_file.exists():
            (base / folder).mkdir(exist_ok=True)
            continue
        raw = sio.loadmat(annos_file)["annotations"]
        keep, seen = [], {}
        for j, a in enumerate(sio.loadmat(annos_file, squeeze_me=True)["annotations"]):
            y = int(a["class"]) - 1
            if n_per_class is None or seen.get(y, 0) < n_per_class:
                seen[y] = seen.get(y, 0) + 1
                keep.append(j)
                by_class.setdefault(y, []).append(base / folder / str(a["fname"]))
        if n_per_class is not None:
            sio.savemat(annos_file, {"annotations": raw[:, np.array(keep)]})
    place(by_class)
    return Path(root)


# --------------------------------------------------------------------------------------------
def make_food_tree(root: Path, per_class: int | None = None) -> Path:
    """<root>/food-101/{images/<class>/<id>.jpg, meta/*}; `per_class` keeps that many train and test images."""
    src = need_fixtures() / "food-101" / "meta"
    base = Path(root) / "food-101"
    meta = base / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    classes = [c for c in (src / "classes.txt").read_text().splitlines() if c]
    for name in ("classes.txt", "labels.txt"):
        shutil.copy(src / name, meta / name)
    by_class: dict[int, list[Path]] = {}
    for split in ("train", "test"):
        data = json.loads((src / f"{split}.json").read_text())
        if per_class is not None:
            data = {c: v[:per_class] for c, v in data.items()}
        (meta / f"{split}.json").write_text(json.dumps(data))
        (meta / f"{split}.txt").write_text("".join(f"{rel}\n" for c in classes for rel in data[c]))
        for i, c in enumerate(classes):
            by_class.setdefault(i, []).extend(base / "images" / f"{rel}.jpg" for rel in data[c])
    place(by_class)
    return Path(root)


# --------------------------------------------------------------------------------------------
AIRCRAFT_SPLIT_SIZES = {"train": 3334, "val": 3333, "test": 3333}  # 100 images per variant


def make_aircraft_tree(root: Path, n_per_class: int | None = None) -> Path:
    """<root>/fgvc-aircraft-2013b/data/{images/<7-digit id>.jpg, variants.txt, images_variant_*.txt,
    images_{train,val,test}.txt, images_box.txt}: 100 images per variant split 34/33/33 like the release
    (train 3,334 / val 3,333 / test 3,333), or `n_per_class` images per variant and split."""
    data = Path(root) / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in AIRCRAFT_VARIANTS))
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    by_class: dict[int, list[Path]] = {}
    next_id = 34309  # real ids are 7 digits with gaps, e.g. 0034309
    for v, variant in enumerate(AIRCRAFT_VARIANTS):
        if n_per_class is None:
            n_train = 34 if v < 34 else 33
            n_val = 34 if 34 <= v < 67 else 33
            counts = {"train": n_train, "val": n_val, "test": 100 - n_train - n_val}
        else:
            counts = {s: n_per_class for s in rows}
        for split, n in counts.items():
            for _ in range(n):
                image_id = f"{next_id:07d}"
                next_id += 7 + (next_id % 5)
                rows[split].append((image_id, variant))
                by_class.setdefault(v, []).append(data / "images" / f"{image_id}.jpg")
    for split in ("train", "val", "test"):
        rows[split].sort()
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows[split]))
        (data / f"images_{split}.txt").write_text("".join(f"{i}\n" for i, _ in rows[split]))
    trainval = sorted(rows["train"] + rows["val"])
    (data / "images_variant_trainval.txt").write_text("".join(f"{i} {v}\n" for i, v in trainval))
    all_ids = sorted(i for r in rows.values() for i, _ in r)
    (data / "images_box.txt").write_text("".join(f"{i} 2 2 29 17\n" for i in all_ids))
    place(by_class, size=(32, 40))  # the bottom 20 rows stand for the banner the loader crops
    return Path(root)
