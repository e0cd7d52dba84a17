"""The commands that take a trained model (a run directory or a model file): evaluate, predict, export and serve.
Registered on the command in cli.py; each selects the run's backend (backend_of) before Keras loads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional

import typer

from imgtrain.core.errors import ImgtrainError


def backend_of(target: Path) -> dict[str, Any]:
    """The config.yaml of the run that `target` (a run directory or a model file in one) belongs to, or {}; selects
    that run's backend (TensorFlow for a model file on its own)."""
    from imgtrain.core.backend import use_backend

    cfg_file = target / "config.yaml" if target.is_dir() else target.parent / "config.yaml"
    run_cfg: dict[str, Any] = {}
    if cfg_file.is_file():
        import yaml

        run_cfg = yaml.safe_load(cfg_file.read_text()) or {}
    use_backend(run_cfg.get("backend", "tensorflow"))
    return run_cfg


def evaluate(
    target: Path = typer.Argument(..., help="run directory or model file (.keras/.h5)"),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="default: the run's dataset"),
    split: str = typer.Option("test", "--split", help="test, val or train"),
    batch_size: int = typer.Option(512, "--batch-size", "-b"),
    json_out: Optional[Path] = typer.Option(
        None, "--json", help="write the full result here (default for a run directory: RUN_DIR/evaluation-<split>.json)"
    ),
    fmt: str = typer.Option("table", "--format", help="table or json on standard output"),
    tta: str = typer.Option(
        "none", "--tta", help="test-time augmentation: none, or flip (average with the mirror image)"
    ),
) -> None:
    """Loss, accuracy, per-class precision/recall/F1 and confusion matrix of a model on a dataset split."""
    from imgtrain.analysis.evaluate import check_tta

    if split not in ("test", "val", "train"):
        raise ImgtrainError(f"unknown split {split!r}; valid: test, val, train")
    if fmt not in ("table", "json"):
        raise ImgtrainError(f"unknown format {fmt!r}; valid: table, json")
    check_tta(tta)
    run_cfg = backend_of(target)
    from imgtrain.analysis.evaluate import evaluate as evaluate_model
    from imgtrain.analysis.evaluate import format_table
    from imgtrain.core.saving import load_model
    from imgtrain.data import run_dataset

    model, meta = load_model(target)
    name = dataset or run_cfg.get("dataset") or meta.get("dataset")
    if not name:
        raise ImgtrainError(f"{target}: no dataset recorded with this model; give one with --dataset")
    h, w, c = model.input_shape[1:]
    ds = run_dataset(run_cfg, name, image_size=(h, w), channels=c)
    if ds.num_classes != model.output_shape[-1]:
        raise ImgtrainError(
            f"dataset {name!r} has {ds.num_classes} classes but the model predicts {model.output_shape[-1]}"
        )
    part = getattr(ds, split)
    if part is None or not len(part):
        raise ImgtrainError(f"dataset {name!r} has no {split} split")
    result = evaluate_model(model, part, meta.get("class_names") or ds.class_names, batch_size, tta)
    result.update(dataset=name, split=split, model=str(target))
    if json_out is None and target.is_dir():
        json_out = target / f"evaluation-{split}{'' if tta == 'none' else '-tta-' + tta}.json"
    if json_out is not None:
        from imgtrain.core.saving import atomic_write_json

        atomic_write_json(json_out, result)
    typer.echo(json.dumps(result, indent=2) if fmt == "json" else format_table(result))
    if json_out is not None and fmt == "table":
        typer.echo(f"\nwritten: {json_out}")


def predict(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="run directory or model file"),
    images: List[str] = typer.Argument(..., help="image files and/or folders"),
    top_k: int = typer.Option(3, "--top-k", "-k", help="classes to show per image"),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="table, csv or json (default: csv for an --output NAME.csv, else table)"
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="write here instead of standard output; a CSV is written as it goes and continued"
    ),
    shard: str = typer.Option("1/1", "--shard", help="K/N: score every N-th file from the K-th (N processes)"),
    batch_size: int = typer.Option(256, "--batch-size", "-b", help="images per model call"),
    tta: str = typer.Option("none", "--tta", help="test-time augmentation: none, or flip (mean with the mirror image)"),
    force_tta: bool = typer.Option(False, "--force-tta", help="flip TTA for a model not trained with flips"),
) -> None:
    """Top-k classes with names and probabilities for each image. With `--output NAME.csv` the rows are written as
    the images are scored (memory does not grow with their number) and the same command continues a killed run."""
    fmt = fmt or ("csv" if output is not None and output.suffix.lower() == ".csv" else "table")
    if fmt not in ("table", "csv", "json"):
        raise ImgtrainError(f"unknown format {fmt!r}; valid: table, csv, json")
    if top_k < 1:
        raise ImgtrainError(f"--top-k must be at least 1 (got {top_k})")
    if batch_size < 1:
        raise ImgtrainError(f"--batch-size must be at least 1 (got {batch_size})")
    from imgtrain.ship.batch_predict import parse_shard

    part = parse_shard(shard)
    from imgtrain.core.saving import resolve_model_path

    model_file = resolve_model_path(model_path)  # a wrong model path is reported before anything else
    backend_of(model_path)
    from imgtrain.analysis.evaluate import check_tta, tta_for
    from imgtrain.analysis.predict import expand_paths, format_rows, predict_files
    from imgtrain.core.saving import load_model

    check_tta(tta)
    paths = expand_paths(images)
    model, meta = load_model(model_path)
    model = tta_for(model, tta, force_tta)
    if output is not None and fmt == "csv":
        return _stream_csv(model, model_file, paths, meta["class_names"], output, top_k, batch_size, part, tta)
    paths = paths[part[0] - 1 :: part[1]]
    rows = predict_files(model, paths, meta["class_names"], top_k)
    notes = [f"note: {r['file']}: {r['note']}" for r in rows if r.get("note")]
    for line in notes[:10]:  # on stderr, so that standard output stays the table, CSV or JSON
        typer.echo(line, err=True)
    if len(notes) > 10:
        typer.echo(
            f"note: {len(notes) - 10} more images converted (--format json or csv gives a note for each)", err=True
        )
    text = format_rows(rows, fmt)
    if output:
        from imgtrain.core.saving import atomic_write

        atomic_write(output, text + "\n")
        typer.echo(f"written: {output} ({len(rows)} images, {sum(bool(r['error']) for r in rows)} skipped)")
    else:
        typer.echo(text)


def _stream_csv(
    model: Any,
    model_file: Path,
    paths: List[str],
    class_names: List[str],
    output: Path,
    top_k: int,
    batch_size: int,
    shard: tuple[int, int],
    tta: str,
) -> None:
    from imgtrain.ship.batch_predict import predict_to_csv, terminal_progress

    done = predict_to_csv(
        model,
        model_file,
        paths,
        class_names,
        output,
        top_k=top_k,
        batch_size=batch_size,
        shard=shard,
        tta=tta,
        progress=terminal_progress,
    )
    for path, note in done["notes"]:  # on stderr, as for the other formats
        typer.echo(f"note: {path}: {note}", err=True)
    kept = f", {done['kept']:,} kept from an earlier run" if done["kept"] else ""
    rate = done["written"] / done["seconds"] if done["seconds"] > 0 else 0
    typer.echo(f"written: {output} ({done['files']} images, {done['skipped']} skipped{kept}; {rate:,.0f} img/s)")


def export_model(
    target: Path = typer.Argument(..., help="run directory or model file"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="keras, savedmodel, onnx or tflite"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder (default RUN_DIR/export)"),
    check: int = typer.Option(256, "--check", help="real test images to compare with Keras; 0 skips the check"),
) -> None:
    """Export a model for another runtime, checked against Keras, with a preprocessing JSON beside it."""
    from imgtrain.ship.export import FORMATS

    if fmt not in FORMATS:
        raise ImgtrainError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if fmt == "onnx":
        from imgtrain.core.extras import require

        require("export", "imgtrain export --format onnx")
    from imgtrain.core.backend import use_backend

    use_backend("tensorflow")  # the exporters (SavedModel, tf2onnx, LiteRT) need TensorFlow
    from imgtrain.ship.export import export

    info = export(target, fmt, out, check)
    typer.echo(f"{info['format']}: {info['path']}")
    if info["checked_images"]:
        typer.echo(
            f"checked on {info['checked_images']} test images: max |difference| {info['max_abs_diff']:.2e}, "
            f"top-1 agreement {info['top1_agreement']:.4f}"
        )
    if "vs_trained" in info:  # a float32 graph of a model trained in mixed precision: what the conversion cost
        vs = info["vs_trained"]
        typer.echo(
            f"{info['precision']} export of a {info['trained_precision']} model: max |difference| from it as "
            f"trained {vs['max_abs_diff']:.2e}, top-1 agreement {vs['top1_agreement']:.4f}"
        )
    typer.echo(f"preprocessing: {info['path']}.preprocessing.json")


def serve(
    target: Path = typer.Argument(..., help="run directory or model file"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    top_k: int = typer.Option(3, "--top-k", "-k"),
    max_upload_mb: float = typer.Option(10.0, "--max-upload-mb", help="largest accepted file"),
    max_files: int = typer.Option(16, "--max-files", help="most images in one request"),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="largest accepted width x height"),
    max_batch: int = typer.Option(64, "--max-batch", help="most images per model call when requests are batched"),
    model_name: str = typer.Option(
        None, "--model-name", help="the model's name under /v2/models/ (default: the run directory's name)"
    ),
) -> None:
    """Serve predictions over HTTP: POST /predict, GET /health, GET /model, an upload page at /, docs at /docs, and
    the Open Inference Protocol (KServe v2) under /v2 for standard clients such as tritonclient."""
    from imgtrain.core.extras import require
    from imgtrain.core.saving import resolve_model_path

    require("serve", "imgtrain serve")
    model_path = resolve_model_path(target)
    backend_of(target)
    import uvicorn

    from imgtrain.ship.serve import create_app

    application = create_app(
        target,
        top_k=top_k,
        max_upload_mb=max_upload_mb,
        max_files=max_files,
        max_pixels=max_pixels,
        max_batch=max_batch,
        model_name=model_name,
    )
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    # uvicorn logs only warnings, so this line is all a user sees; typer.echo flushes it before uvicorn starts
    typer.echo(f"serving {model_path} at {url} (upload page; API docs at {url}docs); Ctrl+C stops")
    uvicorn.run(application, host=host, port=port, log_level="warning")
