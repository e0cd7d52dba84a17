"""The pictures and the HTML report of a run. They only read the run directory (and the data it names).

`write_report(run_dir)` writes curves.png, samples.png, confusion.png, misclassified.png, per_class.png and
report.html (one self-contained file: images embedded as base64) into the run directory.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import yaml

from imgtrain.analysis import plots
from imgtrain.analysis.evaluate import PREDICTIONS
from imgtrain.core.errors import ImgtrainError
from imgtrain.core.figures import png_bytes
from imgtrain.core.saving import atomic_write
from imgtrain.data.sample import images_of, random_images

if TYPE_CHECKING:
    import keras

    from imgtrain.core.figures import Figure
    from imgtrain.data.dataset import Dataset, Split

FIGURES = ["curves", "samples", "confusion", "misclassified", "heatmaps", "per_class"]
EXPLAINED_MISTAKES = 8  # rows of the heatmaps figure: the highest-loss mistakes, then one right image per class
EXPLAINED_CLASSES = 10


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    info: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


def read_history(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows] for k in keys}


def read_run(run_dir: str | Path) -> RunRecord:
    path = Path(run_dir)
    if not (path / "run.json").is_file():
        raise ImgtrainError(f"{path}: not a run directory (no run.json)")
    read_json: Callable[[str], dict[str, Any]] = lambda name: (
        json.loads((path / name).read_text()) if (path / name).is_file() else {}
    )
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").is_file() else {}
    return RunRecord(
        path, config or {}, read_json("run.json"), read_json("metrics.json"), read_history(path / "history.csv")
    )


def _predictions(run: RunRecord, ds: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probs, y, positions) of the best model on the test split, from the run directory or computed anew."""
    saved = run.path / PREDICTIONS
    if saved.is_file():
        with np.load(saved, allow_pickle=False) as z:
            return z["probs"], z["y"], z["positions"]
    from imgtrain.core.backend import use_backend

    use_backend(run.config.get("backend", "tensorflow"))
    from imgtrain.analysis.evaluate import predict_probs
    from imgtrain.core.saving import load_model

    model, _ = load_model(run.path)
    # the caller scores only a dataset with a test split
    return predict_probs(model, cast("Split", ds.test), tta=run.config.get("tta", "none"))


def make_figures(
    run_dir: str | Path,
    ds: Dataset | None = None,
    timings: dict[str, float] | None = None,
    model: keras.Model | None = None,
) -> dict[str, Figure]:
    """{name: matplotlib Figure} for a run directory; `ds` and `model` (the run's best model) save reloading them
    when the caller has them; `timings` gets the seconds the heatmaps took (`heatmaps_s`)."""
    run = read_run(run_dir)
    from imgtrain.data import run_dataset

    ds = ds if ds is not None else run_dataset(run.config)
    shape = tuple(ds.input_shape)
    names = ds.class_names
    figs: dict[str, Figure] = {
        "curves": plots.curves(
            run.history, title=f"{run.name}: {run.config.get('model')} on {run.config.get('dataset')}"
        )
    }
    figs["samples"] = plots.samples(*random_images(ds.train, shape), names)
    if ds.test is not None and len(ds.test):
        from imgtrain.analysis.evaluate import metrics_from_probs

        probs, y, pos = _predictions(run, ds)
        result = run.metrics.get("test") or metrics_from_probs(probs, y, names)
        figs["confusion"] = plots.confusion(result["confusion"], names)
        figs["per_class"] = plots.per_class(result["per_class"])
        worst = plots.top_losses(probs, y, 24)
        # the grid is drawn from just the chosen images, re-indexed 0..n-1
        figs["misclassified"] = plots.misclassified(
            images_of(ds.test, pos[worst], shape), y[worst], probs[worst], names, n=len(worst)
        )
        t = time.perf_counter()
        explained = _heatmaps(run, ds, probs, y, pos, worst[:EXPLAINED_MISTAKES], model)
        if timings is not None:
            timings["heatmaps_s"] = time.perf_counter() - t
        if explained is not None:
            figs["heatmaps"] = explained
    return figs


def _heatmaps(
    run: RunRecord,
    ds: Dataset,
    probs: np.ndarray,
    y: np.ndarray,
    pos: np.ndarray,
    mistakes: np.ndarray,
    model: keras.Model | None = None,
) -> Figure | None:
    """The heatmaps figure: each of `mistakes` and the most confident right image of each of the first classes,
    with the evidence for the predicted and for the true class. None on a backend without heatmaps (JAX)."""
    import keras

    from imgtrain.analysis.heatmaps import explain
    from imgtrain.core.saving import load_model

    if keras.backend.backend() != "tensorflow":
        return None
    pred = probs.argmax(1)
    right: list[int] = []
    for c in range(min(len(ds.class_names), EXPLAINED_CLASSES)):
        idx = np.flatnonzero((pred == y) & (y == c))
        if len(idx):
            right.append(int(idx[np.argmax(probs[idx, c])]))
    rows = np.concatenate([mistakes, np.array(right, np.int64)]).astype(np.int64)
    if not len(rows):
        return None
    model = model if model is not None else load_model(run.path)[0]
    x = images_of(cast("Split", ds.test), pos[rows], tuple(ds.input_shape))  # called only with a test split
    both = explain(model, np.concatenate([x, x]), np.concatenate([pred[rows], y[rows]]))  # one trace, one batch
    return plots.heatmaps(
        x, both.heatmaps[: len(x)], both.heatmaps[len(x) :], y[rows], probs[rows], ds.class_names, both.method
    )


def render_html(run: RunRecord, pngs: dict[str, bytes]) -> str:
    """report.html (templates/report.html.j2) from the run's records and its figures as PNG bytes."""
    from imgtrain.analysis.pages import render

    m, info, data = run.metrics, run.info, run.info.get("data", {})
    names = data.get("class_names", [])
    counts = data.get("counts", {})
    per_split = {s: counts.get(s) or [0] * len(names) for s in ("train", "val", "test")}
    steps = len(next(iter(run.history.values()), []))
    return render(
        "report.html.j2",
        name=run.name,
        model=run.config.get("model"),
        dataset=run.config.get("dataset"),
        status=info.get("status"),
        started=info.get("started", "-"),
        pngs=pngs,
        search=run.path.parent.name if (run.path.parent / "study.db").is_file() else None,
        headline=[
            ("test accuracy", m.get("test_accuracy", "-")),
            ("test loss", m.get("test_loss", "-")),
            ("test macro F1", m.get("test_macro_f1", "-")),
            ("test images", m.get("test_images", "-")),
            ("best epoch", f"{m.get('best_epoch', '-')} of {m.get('epochs_run', '-')}"),
            ("best validation accuracy", m.get("best_val_accuracy", "-")),
            ("parameters", f"{info.get('params', 0):,}"),
        ],
        per_class=[
            (c, v["precision"], v["recall"], v["f1"], v["support"])
            for c, v in m.get("test", {}).get("per_class", {}).items()
        ],
        data_rows=[
            ("dataset", data.get("name")),
            ("source", data.get("source")),
            ("sha256", data.get("hash")),
            ("input shape", data.get("input_shape")),
            ("streamed", data.get("streamed")),
            ("skipped files", data.get("skipped", 0)),
        ],
        counts=[(c, *[per_split[s][i] or 0 for s in per_split]) for i, c in enumerate(names)],
        notes=data.get("notes", []),
        warnings=data.get("warnings", []),
        skipped=list(data.get("skipped_files", {}).items())[:100],
        history_keys=list(run.history),
        history=[(i + 1, *[v[i] for v in run.history.values()]) for i in range(steps)],
        timings=[(k, f"{v:,.1f}") for k, v in info.get("timings", {}).items()],
        distribution=list(info.get("distribution", {}).items()),
        config=[(k, json.dumps(v)) for k, v in run.config.items()],
        versions=list(info.get("versions", {}).items()),
    )


def write_report(
    run_dir: str | Path,
    ds: Dataset | None = None,
    timings: dict[str, float] | None = None,
    model: keras.Model | None = None,
) -> Path:
    """Write the PNGs and report.html into `run_dir`; returns the path of report.html. `timings`, `model`: see
    make_figures."""
    run_dir = Path(run_dir)
    figs = make_figures(run_dir, ds, timings, model)
    pngs = {name: png_bytes(fig) for name, fig in figs.items()}
    for name, data in pngs.items():
        atomic_write(run_dir / f"{name}.png", data)
    out = run_dir / "report.html"
    atomic_write(out, render_html(read_run(run_dir), pngs))
    return out
