"""`imgtrain audit`: the data audit (imgtrain/audit/) from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from imgtrain.auditing.duplicates import NEAR
from imgtrain.auditing.outliers import OUTLIER_FRACTION


def audit_command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="mnist, fashion_mnist, folder:PATH, csv:FILE, ..."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="audit directory (default audits/<dataset>-<time>)"),
    folds: int = typer.Option(5, "--folds", help="cross-validation folds: each is one training run"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML or TOML file of the fold runs' keys"),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="the fold runs' recipe (`imgtrain presets`)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="a name from `imgtrain models`"),
    epochs: Optional[int] = typer.Option(None, "--epochs", "-e"),
    train_limit: Optional[int] = typer.Option(None, "--train-limit", help="audit at most N training images"),
    near: float = typer.Option(NEAR, "--near", help="thumbnail correlation at which two images are copies"),
    outlier_fraction: float = typer.Option(
        OUTLIER_FRACTION, "--outlier-fraction", help="the farthest fraction of training images counted as outliers"
    ),
    set_: List[str] = typer.Option([], "--set", help="KEY=VALUE for any config key of the fold runs"),
) -> None:
    """Audit a dataset: label issues from out-of-fold predictions (cleanlab), exact and near duplicates, test
    images with a copy in train, outliers and odd images. Writes issues.csv/.json, summary.json and the review
    page audit.html; the fold runs and their probabilities are kept, so a second audit trains nothing."""
    from imgtrain.core.extras import require

    require("audit", "imgtrain audit")
    from imgtrain.auditing.run import audit
    from imgtrain.core.backend import use_backend
    from imgtrain.core.config import config_values
    from imgtrain.core.presets import preset_config

    flags = dict(model=model, epochs=epochs, train_limit=train_limit)
    values = config_values(config, flags, set_, base=preset_config(preset) if preset else None)
    values.pop("dataset", None)  # a preset names its own dataset: the audit's is --dataset
    use_backend(values.get("backend", "tensorflow"))
    result = audit(
        dataset,
        out,
        folds=folds,
        near=near,
        outlier_fraction=outlier_fraction,
        log=lambda m: typer.echo(m, err=True),
        **values,
    )
    s = result.summary
    typer.echo(f"audit directory: {result.out}")
    for split in s["images"]:
        line = f"{split}: {s['images'][split]:,} images, audit models' accuracy {s[f'{split}_accuracy']:.4f}, "
        line += f"label errors estimated {s[f'{split}_label_errors_estimated']:,}"
        if f"{split}_leaked_images" in s:
            line += (
                f", {s[f'{split}_leaked_images']:,} with a copy in train "
                f"(accuracy without them {s[f'{split}_accuracy_without_leaks']:.4f})"
            )
        typer.echo(line)
    counts = s.get("issues", {})
    typer.echo("flagged: " + (", ".join(f"{n:,} {k}" for k, n in counts.items()) or "nothing"))
    for note in s.get("odd_notes", []):
        typer.echo(f"note: {note}")
    typer.echo(f"review: {result.out / 'audit.html'}   table: {result.out / 'issues.csv'}")
