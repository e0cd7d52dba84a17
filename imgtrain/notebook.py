"""imgtrain in a Jupyter notebook: a live progress display while `train()` runs, a run's report inline
(`run.show()`), a grid of a dataset's images (`ds.show_batch()`), and figures that display as pictures.

Nothing here changes what the objects are: a run's model stays a keras.Model, its history a dict, a dataset's
images a NumPy array. IPython is imported only inside a notebook.
"""
from __future__ import annotations

import base64
import html
import sys
import time


REPORT_HEIGHT_PX = 900  # the inline report's frame; it scrolls inside


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where rich displays render), not a terminal or a script."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def show_batch(ds, n: int = 30, split: str = "train", cols: int = 10, seed: int = 0):
    """A grid of `n` random images of `split` with their class names (decoded from files for a streamed split)."""
    from . import plots
    from .report import random_images

    part = getattr(ds, split)
    if part is None or not len(part):
        raise ValueError(f"dataset {ds.name} has no {split} images")
    x, y = random_images(part, ds.input_shape, n, seed)
    return plots.samples(x, y, ds.class_names, n=len(x), cols=cols, seed=seed)


def report_frame(run_dir) -> str:
    """The run's report.html inline: an iframe whose document is the report itself (it needs no files beside)."""
    from pathlib import Path

    report = Path(run_dir) / "report.html"
    if not report.is_file():
        raise FileNotFoundError(f"{report} does not exist: the run was trained with report false")
    return (f'<div><iframe srcdoc="{html.escape(report.read_text(), quote=True)}" style="width:100%;'
            f'height:{REPORT_HEIGHT_PX}px;border:1px solid #ddd"></iframe></div>')


def summary_html(run) -> str:
    """A run in a few lines: where it is, its test score, and its training curves."""
    from pathlib import Path

    m = run.metrics
    lines = [f"<b>run</b> <code>{html.escape(str(run.run_dir))}</code>"]
    if "test_accuracy" in m:
        lines.append(f"test accuracy <b>{m['test_accuracy']:.4f}</b>, loss {m['test_loss']:.4f} "
                     f"({m['test_images']} images, best epoch {m.get('best_epoch', '-')}/{m.get('epochs_run', '-')})")
    curves = Path(run.run_dir) / "curves.png"
    if curves.is_file():
        data = base64.b64encode(curves.read_bytes()).decode("ascii")
        lines.append(f'<img src="data:image/png;base64,{data}" style="max-width:100%">')
    return "<br>".join(lines)


def make_live_progress():
    """A Keras callback that shows training in a notebook: a line for the step in progress, updated at most every
    0.3 s, and a table that gains a row per epoch."""
    import keras
    from IPython.display import HTML, display

    class LiveProgress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows, self.last, self.epoch = [], 0.0, 0
            self.line = display(HTML(""), display_id=True)
            self.table = display(HTML(""), display_id=True)

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.started = epoch, time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if now - self.last < 0.3:
                return
            self.last = now
            total = self.params.get("steps") or "?"
            loss = (logs or {}).get("loss")
            text = f"epoch {self.epoch + 1}/{self.params.get('epochs', '?')}: step {batch + 1}/{total}"
            self.line.update(HTML(text + (f", loss {float(loss):.4f}" if loss is not None else "")))

        def on_epoch_end(self, epoch, logs=None):
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items() if _is_number(v)}}
            row["seconds"] = time.perf_counter() - self.started
            self.rows.append(row)
            self.line.update(HTML(f"epoch {epoch + 1}/{self.params.get('epochs', '?')} done"))
            self.table.update(HTML(_table(self.rows)))

    return LiveProgress()


def _is_number(v) -> bool:
    try:
        float(v)
        return not isinstance(v, (str, bool))
    except (TypeError, ValueError):
        return False


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
