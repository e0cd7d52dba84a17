"""Decisions from the audit's review page (or written by hand), applied as the data are read: `drop` leaves an image
out, `relabel` gives it another class, `keep` changes nothing. The user's files are never moved or changed.

    split,index,path,decision,label
    train,4,/data/digits/train/5/00004.png,relabel,3
    test,917,,drop,

`index` is the image's position in its split as the dataset ships it (issues.csv's column); `path`, where given,
must be the file at that position, so that a decisions file written for another version of a folder is refused.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from imgtrain.core.errors import DataError
from imgtrain.core.hashing import sha256_files
from imgtrain.data.dataset import Dataset

CHOICES = ("keep", "relabel", "drop")
COLUMNS = ("split", "index", "decision")  # required; path and label are optional


def read_decisions(path: str | Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields, rows = set(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"decisions {path}: cannot read ({type(err).__name__}: {err})") from None
    missing = [c for c in COLUMNS if c not in fields]
    if missing:
        raise DataError(
            f"decisions {path}: no column {', '.join(missing)}; columns: split, index, path, decision, label"
        )
    return rows


def _row_of(ds: Dataset, r: dict[str, str], line: int, where: str) -> tuple[str, int]:
    """(split, row in the loaded split) the decision names; one line if it names no image of this dataset."""
    split, text = (r.get("split") or "").strip(), (r.get("index") or "").strip()
    part = getattr(ds, split, None) if split in ("train", "val", "test") else None
    if part is None:
        have = ", ".join(s for s in ("train", "val", "test") if getattr(ds, s) is not None)
        raise DataError(f"{where} line {line}: no split {split!r} in {ds.name}; splits: {have}")
    if not text.isdigit():
        raise DataError(f"{where} line {line}: index {text!r} is not a position (0, 1, 2, ...)")
    at = np.flatnonzero(part.positions == int(text))
    if not len(at):
        raise DataError(f"{where} line {line}: no {split} image at index {text} in {ds.name} ({len(part):,} images)")
    given, files = (r.get("path") or "").strip(), ds.files.get(split, [])
    if given and files and Path(files[int(text)]) != Path(given) and not files[int(text)].endswith(given):
        raise DataError(
            f"{where} line {line}: {split} {text} is {files[int(text)]} here, not {given}: was the data changed "
            "since the audit?"
        )
    return split, int(at[0])


def apply_decisions(ds: Dataset, path: str | Path) -> Dataset:
    """`ds` with the decisions in `path` applied; checked whole before anything changes."""
    rows, where = read_decisions(path), Path(path).name
    drops: dict[str, set[int]] = {}
    labels: dict[tuple[str, int], int] = {}
    for line, r in enumerate(rows, start=2):  # line 1: the header
        choice = (r.get("decision") or "").strip().lower()
        if choice not in CHOICES:
            raise DataError(f"{where} line {line}: decision {choice!r}; valid: {', '.join(CHOICES)}")
        split, row = _row_of(ds, r, line, where)
        if choice == "drop":
            drops.setdefault(split, set()).add(row)
        elif choice == "relabel":
            name = (r.get("label") or "").strip()
            if name not in ds.class_names:
                raise DataError(
                    f"{where} line {line}: label {name!r} is not a class; classes: {', '.join(ds.class_names)}"
                )
            labels[split, row] = ds.class_names.index(name)
    for split in {s for s, _ in labels}:  # a copy: a loader may hand out the same label array on every call
        part = getattr(ds, split)
        part.y = part.y.copy()
        for (where_split, row), label in labels.items():
            if where_split == split:
                part.y[row] = label
    for split, gone in drops.items():
        part = getattr(ds, split)
        setattr(ds, split, part.take(np.setdiff1d(np.arange(len(part)), sorted(gone))))
    relabelled = len([k for k in labels if k[1] not in drops.get(k[0], set())])
    ds.decisions = {
        "file": str(path),
        "sha256": sha256_files([Path(path)]),
        "dropped": sum(len(v) for v in drops.values()),
        "relabelled": relabelled,
    }
    ds.notes.append(f"decisions {where}: {ds.decisions['dropped']} images dropped, {relabelled} relabelled")
    return ds
