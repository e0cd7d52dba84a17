"""Past runs: find them, list them, compare them. Reads only run directories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgtrain.analysis.report import RunRecord, read_run
from imgtrain.core.errors import ImgtrainError

if TYPE_CHECKING:
    from imgtrain.core.figures import Figure

COLUMNS = [
    ("run", 28),
    ("dataset", 16),
    ("model", 10),
    ("epochs", 6),
    ("best val acc", 12),
    ("test acc", 8),
    ("time s", 7),
    ("status", 7),
]


def find_runs(folder: str | Path) -> list[RunRecord]:
    """Every run directory directly under `folder` (or `folder` itself), oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImgtrainError(f"{folder}: no such folder of runs")
    found = [folder] if (folder / "run.json").is_file() else sorted(p.parent for p in folder.glob("*/run.json"))
    runs = [read_run(p) for p in found]
    return sorted(runs, key=lambda r: (r.info.get("started", ""), r.name))


def summary_row(run: RunRecord) -> list[str]:
    m, c = run.metrics, run.config
    fmt: Callable[[object], str] = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"
    epochs = f"{m.get('epochs_run', '-')}/{c.get('epochs', '-')}"
    total = run.info.get("timings", {}).get("total_s")
    return [
        run.name,
        str(c.get("dataset", "-")),
        str(c.get("model", "-")),
        epochs,
        fmt(m.get("best_val_accuracy")),
        fmt(m.get("test_accuracy")),
        f"{total:.0f}" if total is not None else "-",
        str(run.info.get("status", "-")),
    ]


def format_runs(runs: list[RunRecord]) -> str:
    if not runs:
        return "no runs"
    rows = [summary_row(r) for r in runs]
    widths = [max(w, len(h), *(len(row[i]) for row in rows)) for i, (h, w) in enumerate(COLUMNS)]
    line: Callable[[list[str]], str] = lambda cells: "  ".join(
        c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([line([h for h, _ in COLUMNS]), *map(line, rows)])


def compare_runs(run_dirs: Sequence[str | Path]) -> tuple[str, Figure]:
    """(text table, matplotlib Figure): headline metrics and differing config keys per run; all curves."""
    from imgtrain.analysis import plots

    if len(run_dirs) < 2:
        raise ImgtrainError("runs compare needs two or more run directories")
    runs = [read_run(p) for p in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):
        names = [str(r.path) for r in runs]
    keys = sorted({k for r in runs for k in r.config})
    differing = [k for k in keys if len({repr(r.config.get(k)) for r in runs}) > 1 and k != "out"]
    fmt: Callable[[object], str] = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v if v is not None else "-")
    rows = [
        ("test accuracy", [fmt(r.metrics.get("test_accuracy")) for r in runs]),
        ("test loss", [fmt(r.metrics.get("test_loss")) for r in runs]),
        ("best val accuracy", [fmt(r.metrics.get("best_val_accuracy")) for r in runs]),
        ("epochs run", [fmt(r.metrics.get("epochs_run")) for r in runs]),
        ("time s", [fmt(round(r.info.get("timings", {}).get("total_s", 0), 1)) for r in runs]),
        *[(k, [fmt(r.config.get(k)) for r in runs]) for k in differing],
    ]
    w0 = max(len(k) for k, _ in rows)
    widths = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    lines = [" " * w0 + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths))]
    lines += [k.ljust(w0) + "  " + "  ".join(v.rjust(w) for v, w in zip(vals, widths)) for k, vals in rows]
    return "\n".join(lines), plots.compare({n: r.history for n, r in zip(names, runs)})
