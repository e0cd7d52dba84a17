"""`imgtrain audit`: out-of-fold probabilities (folds.py), then label issues (labels.py), duplicates and leaks
(duplicates.py), outliers and odd images (outliers.py), written as tables (tables.py) in one directory.

    result = audit("mnist", out="audits/mnist")      # 5 fold runs, then the analyses
    result.issues                                    # a pandas DataFrame, one row per flagged image, worst first
    result.summary["label_errors_estimated"]         # from the confident joint

A second call with the same out directory and settings trains nothing (oof.npz is kept); other thresholds
(`near`, `outlier_fraction`) only redo the analyses.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgtrain.auditing import folds as fold_runs
from imgtrain.auditing.duplicates import NEAR
from imgtrain.auditing.outliers import OUTLIER_FRACTION
from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    import pandas

    from imgtrain.data import Dataset

AUDIT_JSON = "audit.json"
OOF, EMBEDDINGS = "oof.npz", "embeddings.npz"


@dataclass
class AuditResult:
    out: Path
    issues: pandas.DataFrame  # issues.csv: one row per flagged image
    summary: dict[str, Any]  # summary.json


def _load(dataset: str, values: dict[str, Any]) -> Dataset:
    """The dataset as the audit reads it: every training image (no validation carve, no test carved from train),
    after the run's limits and classes."""
    from imgtrain.data import run_dataset

    return run_dataset({**values, "dataset": dataset, "val_split": 0.0, "test_split": 0.0, "fold": None})


def _settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse an audit directory that holds an audit of other data or another recipe; record this one's."""
    from imgtrain.core.saving import atomic_write_json

    path = out / AUDIT_JSON
    if path.is_file():
        earlier = json.loads(path.read_text()).get("settings")
        if earlier != json.loads(json.dumps(settings)):
            keys = sorted(k for k in settings if (earlier or {}).get(k) != settings[k])
            raise ImgtrainError(
                f"{out} holds an audit with other settings ({', '.join(keys) or 'format'}); use the same ones "
                "to continue it, or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"settings": settings, "status": "running"})


def audit(
    dataset: str,
    out: str | Path | None = None,
    *,
    folds: int = 5,
    near: float = NEAR,
    outlier_fraction: float = OUTLIER_FRACTION,
    log: Callable[[str], object] = print,
    **config: Any,
) -> AuditResult:
    """Audit `dataset` (any spec imgtrain reads); `config`: the fold runs' recipe keys (model, epochs, preset keys,
    train_limit, ...) over the audit's fast default for the kind of data. Writes issues.csv/.json, summary.json,
    audit.html, oof.npz and embeddings.npz in `out` (default audits/<dataset>-<time>)."""
    from imgtrain.core.config import make_config
    from imgtrain.data import check_folds

    if folds < 2:
        raise ImgtrainError(f"folds must be 2 or more, not {folds}")
    if not 0 < near <= 1 or not 0 <= outlier_fraction < 1:
        raise ImgtrainError(f"near must be in (0, 1] and outlier_fraction in [0, 1); got {near} and {outlier_fraction}")
    t0 = time.perf_counter()
    ds = _load(dataset, config)
    check_folds(ds, folds)
    kind, values = fold_runs.recipe_for(ds, config)
    make_config(**values, dataset=dataset, fold=f"1/{folds}", test_split=0.0)  # a bad key fails before any work
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_out = Path(out) if out else Path("audits") / f"{dataset.replace(':', '-').replace('/', '-')}-{stamp}"
    settings = {"dataset": dataset, "folds": folds, "kind": kind, "recipe": values, "data_hash": ds.data_hash}
    _settings(run_out, settings)
    arrays, emb, ds, timing = _probabilities(dataset, ds, values, run_out, folds, log)
    dirs = [fold_runs.fold_dir(run_out, k, folds) for k in range(1, folds + 1)]
    from imgtrain.auditing.analyse import analyse
    from imgtrain.auditing.tables import write_tables

    t1 = time.perf_counter()
    rows, summary = analyse(ds, arrays, emb, near=near, outlier_fraction=outlier_fraction, log=log)
    summary.update(
        dataset=dataset,
        folds=folds,
        kind=kind,
        recipe=values,
        near=near,
        outlier_fraction=outlier_fraction,
        seconds={**timing, "analyses": round(time.perf_counter() - t1, 2), "total": round(time.perf_counter() - t0, 2)},
    )
    from imgtrain.core.resources import peak_rss_mib

    # of this process (predictions, analyses; fold runs that had to run in it) and of the fold runs' own processes
    folds_peak = [json.loads((d / "run.json").read_text()).get("peak_rss_mib") or 0 for d in dirs]
    summary.update(peak_rss_mib=peak_rss_mib(), fold_runs_peak_rss_mib=max(folds_peak))
    issues = write_tables(run_out, ds, rows, summary)
    from imgtrain.core.saving import atomic_write_json

    atomic_write_json(run_out / AUDIT_JSON, {"settings": settings, "status": "done"})
    return AuditResult(run_out, issues, summary)


def _probabilities(
    dataset: str, ds: Dataset, values: dict[str, Any], out: Path, folds: int, log: Callable[[str], object]
) -> tuple[dict[str, Any], dict[str, Any], Dataset, dict[str, float]]:
    """(oof arrays, embeddings, the dataset at the fold runs' input size, seconds): read back when kept."""
    from imgtrain.core.config import load_config

    t0 = time.perf_counter()
    dirs = fold_runs.train_folds(values, dataset, out, folds, log)
    t1 = time.perf_counter()
    # the runs' own resolved settings (a backbone's image size, say) decide how the images are read for predictions
    resolved = load_config(dirs[0] / "config.yaml").model_dump()
    ds = _load(dataset, {k: v for k, v in resolved.items() if k not in ("dataset", "fold")})
    if (out / OOF).is_file() and (out / EMBEDDINGS).is_file():
        log(f"probabilities and embeddings: kept from earlier ({out / OOF})")
        arrays, emb = fold_runs.load_npz(out / OOF), fold_runs.load_npz(out / EMBEDDINGS)
    else:
        # predictions in the fold runs' own batch size: a larger one would need more memory than training did (at
        # 96x96 pixels, batch 512 took 1.2 GB more than the runs' batch 64)
        batch = resolved["batch_size"] if isinstance(resolved["batch_size"], int) else 64
        arrays, emb = fold_runs.collect(ds, dirs, resolved["seed"], batch)
        fold_runs.save_npz(out / OOF, arrays)
        fold_runs.save_npz(out / EMBEDDINGS, emb)
    return arrays, emb, ds, {"folds": round(t1 - t0, 2), "predictions": round(time.perf_counter() - t1, 2)}
