"""Image folders in MVTec-AD layout, and plain folders of images.

MVTec layout (what `station capture` writes, and public benchmarks use):
    root/train/good/*.png
    root/test/good/*.png
    root/test/<defect_type>/*.png
    root/ground_truth/<defect_type>/<stem>_mask.png
Folder and file names match whatever their case; `good` may also be `ok` (BTAD), and a mask
may be `<stem>_mask` or `<stem>` with any image suffix.
`MVTecFolder(root)` lists the training images (`train_good()`) and labelled test items
(`test_items()`); `category_dirs(root)` finds one or many such folders (a benchmark with
categories side by side). `training_images(folder)` accepts an MVTec folder or a plain folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from station.errors import StationError
from station.files import file_sha256
from station.imaging import IMAGE_SUFFIXES

GOOD_NAMES = ("good", "ok")


def child_folder(folder: Path, names: Sequence[str]) -> Path | None:
    """The sub-folder of `folder` named one of `names` (case-insensitive, in that order)."""
    if not folder.is_dir():
        return None
    subs = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}
    return next((subs[n.lower()] for n in names if n.lower() in subs), None)


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


@dataclass(frozen=True)
class DatasetItem:
    path: Path
    label: int  # 0 good, 1 defect
    mask_path: Path | None  # None for good images (and defects without a mask file)
    defect_type: str  # "good" or the test sub-folder name

    @property
    def stem(self) -> str:
        return self.path.stem


class MVTecFolder:
    """One category in MVTec-AD layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        _check_dataset_folder(self.root, missing_hint=None)
        self._masks: dict[str, dict[str, Path]] = {}

    @property
    def name(self) -> str:
        return self.root.name

    @staticmethod
    def is_mvtec(root: Path) -> bool:
        return (root / "train").is_dir() or (root / "test").is_dir()

    def train_good(self) -> list[Path]:
        good = child_folder(self.root / "train", GOOD_NAMES)
        return image_files(good) if good is not None else []

    def _mask_for(self, defect_type: str, image: Path) -> Path | None:
        if defect_type not in self._masks:
            gt = child_folder(self.root / "ground_truth", [defect_type])
            files = image_files(gt) if gt is not None else []
            self._masks[defect_type] = {p.name.lower(): p for p in files}
        found = self._masks[defect_type]
        for stem in (f"{image.stem}_mask", image.stem):
            for suffix in IMAGE_SUFFIXES:
                if (stem + suffix).lower() in found:
                    return found[(stem + suffix).lower()]
        return None

    def test_items(self) -> list[DatasetItem]:
        test = self.root / "test"
        if not test.is_dir():
            return []
        items: list[DatasetItem] = []
        for sub in sorted(p for p in test.iterdir() if p.is_dir()):
            label = 0 if sub.name.lower() in GOOD_NAMES else 1
            for img in image_files(sub):
                mask = None if label == 0 else self._mask_for(sub.name, img)
                items.append(DatasetItem(img, label, mask, sub.name))
        return items


def _check_dataset_folder(root: Path, missing_hint: str | None) -> None:
    if root.exists() and not root.is_dir():
        raise StationError(
            f"dataset {root} is a file, not a dataset folder",
            hint="give the folder of an MVTec-layout category (train/, test/) or of categories",
        )
    if not root.is_dir():
        raise StationError(f"dataset folder {root} does not exist", hint=missing_hint)


def category_dirs(root: str | Path) -> list[Path]:
    """`root` itself when it is one MVTec category, else its sub-folders that are."""
    root = Path(root)
    _check_dataset_folder(root, missing_hint="check --dataset")
    if MVTecFolder.is_mvtec(root):
        return [root]
    cats = sorted(p for p in root.iterdir() if p.is_dir() and MVTecFolder.is_mvtec(p))
    if not cats:
        raise StationError(
            f"{root} is neither an MVTec-layout folder (train/, test/) nor a folder of them",
            hint="point --dataset at a category folder or a folder of categories",
        )
    return cats


def training_images(folder: str | Path) -> list[Path]:
    """Good training images of an MVTec folder (train/good) or of a plain image folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StationError(
            f"training data {folder} is a file, not a folder",
            hint="give --data the folder that holds the good images",
        )
    if not folder.is_dir():
        raise StationError(
            f"training folder {folder} does not exist",
            hint="capture good parts first (station capture --label good) or check --data",
        )
    if MVTecFolder.is_mvtec(folder):
        files = MVTecFolder(folder).train_good()
        where = folder / "train" / "good"
    else:
        files = image_files(folder)
        where = folder
    if not files:
        raise StationError(
            f"no training images in {where}",
            hint="capture good parts first (station capture) or give --data a folder of images",
        )
    return files


def copies_of_training(folder: str | Path, items: Sequence[DatasetItem]) -> list[bool]:
    """Per test item: its file holds the same bytes as one of the category's train/good
    images. A test split holding training images measures memory, not the material."""
    train = {file_sha256(p) for p in MVTecFolder(folder).train_good()}
    return [file_sha256(it.path) in train for it in items]
