"""What imgtrain has, as `imgtrain` commands: the presets, the datasets, the models, the config keys, and sample
images to try predict on. Registered on the command in cli.py; like every command, Keras loads inside them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from imgtrain.core.errors import ImgtrainError


def presets(show: Optional[str] = typer.Option(None, "--show", help="print this preset as a config file")) -> None:
    """Named recipes for `imgtrain train --preset NAME`, with the target each was tuned for."""
    import yaml

    from imgtrain.core.presets import PRESETS, preset_config

    if show:
        typer.echo(f"# imgtrain preset {show}: {PRESETS.get(show)['about']}")
        typer.echo(yaml.safe_dump(preset_config(show), sort_keys=False).rstrip())
        return
    for name, p in PRESETS.items():
        t = p["target"]
        typer.echo(f"{name:<12} {t['accuracy']:.1%} in <= {t['seconds']:>3} s   {p['about']}")


def sample_images(
    dataset: str = typer.Argument(..., help="a dataset name, e.g. mnist or fashion_mnist"),
    out: Path = typer.Argument(..., help="folder to write the PNG files into (created)"),
    n: int = typer.Option(10, "-n", help="how many images"),
    split: str = typer.Option("test", "--split", help="test or train"),
    folders: bool = typer.Option(
        False, "--folders", help="one sub-folder per class (OUT/<class>/test0.png): a dataset for --dataset folder:OUT"
    ),
) -> None:
    """Write the first N images of a dataset split as PNG files (test0-label7.png, ...): pictures to try
    `imgtrain predict` and the upload page on; with --folders, a folder dataset to try `train` on."""
    if split not in ("test", "train"):
        raise ImgtrainError(f"unknown split {split!r}; valid: test, train")
    if n < 1:
        raise ImgtrainError(f"-n must be at least 1 (got {n})")
    import numpy as np
    from PIL import Image

    from imgtrain.data import load_dataset
    from imgtrain.data.sample import images_of

    ds = load_dataset(dataset, val_split=0, test_split=0.1)
    part = getattr(ds, split)
    take = min(n, len(part))
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images_of(part, np.arange(take), ds.input_shape)):
        label = ds.class_names[part.y[i]].replace("/", "-")  # 'T-shirt/top' is no file name
        path = out / label / f"{split}{i}.png" if folders else out / f"{split}{i}-label{label}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
    typer.echo(f"wrote {take} {split} images of {dataset} to {out}")


def datasets() -> None:
    """List the datasets: registered names, what they are, and whether their files are here."""
    from imgtrain.data import DATASETS, dataset_names
    from imgtrain.data.builtin import status

    rows = [(shown, getattr(fn, "about"), status(name)) for shown, (name, fn) in zip(dataset_names(), DATASETS.items())]
    w = max(len(r[0]) for r in rows)
    for shown, about, where in rows:
        typer.echo(f"{shown:<{w}}  {about}\n{'':<{w}}  {where}")


def models() -> None:
    """List the models: input size, parameters and forward MFLOPs per image at that size (10 classes), summary.
    The pretrained backbones are counted at the size of their ImageNet weights."""
    import os

    from imgtrain.core.backend import use_backend

    use_backend(os.environ.get("KERAS_BACKEND", "tensorflow"))
    from imgtrain.models import MODELS, build_model
    from imgtrain.models.cost import forward_mflops

    typer.echo(f"{'model':<19} {'input':>11} {'params':>11} {'MFLOPs':>7}  about")
    for name, fn in MODELS.items():
        size = getattr(fn, "default_size", None)
        shape, extra = ((size, size, 3), {"weights": "none"}) if size else ((28, 28, 1), {})
        model = build_model(name, shape, 10, **extra)
        about = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        typer.echo(
            f"{name:<19} {'x'.join(map(str, shape)):>11} {model.count_params():>11,} "
            f"{forward_mflops(model):>7,.1f}  {about}"
        )


def config_keys() -> None:
    """Print every config key with its type, default and meaning (Markdown)."""
    from imgtrain.core.config import CONFIG_DOC_HEAD, describe

    typer.echo(CONFIG_DOC_HEAD)
    typer.echo(describe())
