"""Image files on disk: a folder with one sub-folder per class, a flat Kaggle-style folder, or a CSV table."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from imgtrain.core.errors import DataError
from imgtrain.data.images import DECODE_ERRORS, GRAY_MODES, is_image_name, peek

SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
PATH_COLUMNS = ("filename", "path", "file", "image", "filepath")
LABEL_COLUMNS = ("label", "category", "class", "y", "target")
DEFAULT_SIZE = (128, 128)  # seed 004's IMAGE_SIZE, used when the images differ in size


@dataclass
class FileList:
    """Paths and string labels per split ('train', and optionally 'val' / 'test')."""

    splits: dict[str, tuple[list[str], list[str]]]
    skipped: dict[str, str] = field(default_factory=dict)
    class_names: list[str] | None = None  # folder order; None: sorted labels
    class_paths: dict[str, str] = field(default_factory=dict)  # class -> what a skipped class is listed as


def outside_root(root: str | Path) -> str:
    """The skip reason, shared by folder and CSV listings, for a file whose real path is not under `root`."""
    return f"outside the dataset root {root} (allow_outside_root: true to read it)"


def _within(path: str, real_root: str) -> bool:
    return os.path.commonpath([path, real_root]) == real_root


def _images_in(folder: Path, skipped: dict[str, str], real_root: str | None = None) -> list[str]:
    """Image-named files under `folder`, sorted. With `real_root`, files whose real path (after symlinks, of the
    file or of a folder above it) is not under it are skipped with the CSV loader's reason."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # one realpath per folder, and one per file only for the files that are symlinks (an lstat each)
        dir_inside = real_root is None or _within(os.path.realpath(dirpath), real_root)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if not is_image_name(name):
                skipped[path] = "not an image file extension"
            elif real_root is not None and not (
                _within(os.path.realpath(path), real_root) if os.path.islink(path) else dir_inside
            ):
                skipped[path] = outside_root(real_root)
            else:
                out.append(path)
    return out


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_folder(root: str, allow_outside_root: bool = False) -> FileList:
    """`root/<class>/*.png`, or `root/{train,val,test}/<class>/*`, or flat `root/<label>.<n>.jpg` (Dogs-vs-Cats).
    Files that lead out of `root` through a symlink (a linked file or class folder) are skipped unless
    `allow_outside_root`, as in `list_table`."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"folder:{root}: not a directory")
    real_root = None if allow_outside_root else os.path.realpath(base)
    skipped: dict[str, str] = {}
    subdirs = _class_dirs(base)
    split_dirs = {SPLIT_DIRS[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_DIRS}
    if "train" in split_dirs and _class_dirs(split_dirs["train"]):
        class_names = [d.name for d in _class_dirs(split_dirs["train"])]
        splits = {}
        for split, folder in split_dirs.items():
            extra = sorted({d.name for d in _class_dirs(folder)} - set(class_names))
            if extra:
                raise DataError(
                    f"folder:{root}: {folder.name}/ has classes {extra} that train/ lacks; "
                    f"train classes: {', '.join(class_names)}"
                )
            paths, labels = [], []
            for name in class_names:
                if (folder / name).is_dir():
                    found = _images_in(folder / name, skipped, real_root)
                    paths += found
                    labels += [name] * len(found)
            splits[split] = (paths, labels)
        return FileList(splits, skipped, class_names, {n: str(split_dirs["train"] / n) for n in class_names})
    if subdirs:
        class_names = [d.name for d in subdirs]
        paths, labels = [], []
        for d in subdirs:
            found = _images_in(d, skipped, real_root)
            paths += found
            labels += [d.name] * len(found)
        return FileList({"train": (paths, labels)}, skipped, class_names, {d.name: str(d) for d in subdirs})
    # Flat folder: the label is the file name up to its first dot, as in Kaggle's dogs-vs-cats/train/dog.1.jpg.
    paths = _images_in(base, skipped, real_root)
    labels = [Path(p).name.split(".")[0] for p in paths]
    if len(set(labels)) < 2:
        raise DataError(
            f"folder:{root}: found no class sub-folders and no '<label>.<n>.<ext>' file names "
            "with two or more labels; expected root/<class>/<image> files"
        )
    return FileList({"train": (paths, labels)}, skipped, class_paths={l: str(base / f"{l}.*") for l in set(labels)})


def list_table(csv_file: str, allow_outside_root: bool = False) -> FileList:
    """A CSV with a path column (filename/path/file/image) and a label column (label/category/class/y), and an
    optional `split` column (train/val/test). Relative paths are read from the CSV's folder; paths that lead out
    of that folder (`../`, absolute paths, symlinks) are skipped unless `allow_outside_root`."""
    path = Path(csv_file)
    root = path.parent.resolve()
    if not path.is_file():
        raise DataError(f"csv:{csv_file}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = {c.lower().strip(): c for c in (reader.fieldnames or [])}
        pcol = next((cols[c] for c in PATH_COLUMNS if c in cols), None)
        lcol = next((cols[c] for c in LABEL_COLUMNS if c in cols), None)
        if pcol is None or lcol is None:
            raise DataError(
                f"csv:{csv_file}: needs a path column ({'/'.join(PATH_COLUMNS)}) and a label column "
                f"({'/'.join(LABEL_COLUMNS)}); found {', '.join(reader.fieldnames or []) or 'none'}"
            )
        scol = cols.get("split")
        splits: dict[str, tuple[list[str], list[str]]] = {}
        skipped: dict[str, str] = {}
        for row in reader:
            file = (path.parent / row[pcol].strip()) if row[pcol] else None
            split = SPLIT_DIRS.get((row.get(scol) or "train").strip().lower()) if scol else "train"
            if split is None:
                raise DataError(f"csv:{csv_file}: split {row[scol]!r} is not one of train, val, test")
            if file is None or not file.is_file():
                skipped[str(file or row[pcol])] = "file not found"
                continue
            if not allow_outside_root and not file.resolve().is_relative_to(root):
                skipped[str(file)] = outside_root(root)
                continue
            paths, labels = splits.setdefault(split, ([], []))
            paths.append(str(file))
            labels.append(str(row[lcol]).strip())
    if "train" not in splits:
        raise DataError(f"csv:{csv_file}: no training rows with existing files")
    return FileList(splits, skipped)


def label_order(labels: set[str]) -> list[str]:
    """Numeric labels in numeric order, otherwise sorted as text."""
    if all(l.lstrip("-").isdigit() for l in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def spread_sample(labels: list[str], sample: int = 64) -> list[int]:
    """Positions of about `sample` files, at least 2 of each class, evenly spaced within each class: a colour class
    sorted after grayscale ones is seen (the first 64 of a class-sorted list may all be one class)."""
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    k = max(2, -(-sample // max(1, len(by_class))))  # per class, rounded up
    out = []
    for idx in by_class.values():
        step = max(1, len(idx) / k)
        out += sorted({idx[int(j * step)] for j in range(min(k, len(idx)))})
    return out


def sniff_shape(paths: list[str], labels: list[str], sample: int = 64) -> tuple[tuple[int, int], int]:
    """((height, width), channels) from the headers of a sample spread over every class (`spread_sample`): the
    size they share, or DEFAULT_SIZE when they differ; 1 channel only when every sampled file is grayscale."""
    sizes, gray = set(), True
    for i in spread_sample(labels, sample):
        try:
            size, mode = peek(paths[i])
        except DECODE_ERRORS:
            continue
        sizes.add(size)
        gray &= mode in GRAY_MODES
    size = sizes.pop() if len(sizes) == 1 else DEFAULT_SIZE
    return size, (1 if gray and paths else 3)


def listing_hash(paths: list[str], labels: list[str]) -> str:
    """sha256 over (path, size, mtime, label): cheap, and changes when any file does."""
    h = hashlib.sha256()
    for p, l in zip(paths, labels):
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError as err:  # a symlink loop or a vanished file: hashed as what it is
            stamp = f"error {err.errno}"
        h.update(f"{p}\0{stamp}\0{l}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()
