"""imgtrain in a Jupyter notebook: a live progress display while `train()` runs, a run's report inline
(`run.show()`), and figures that display as pictures.

Nothing here changes what the objects are: a run's model stays a keras.Model, its history a dict, a dataset's
images a NumPy array. IPython is imported only inside a notebook.
"""

from __future__ import annotations

import base64
import html
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Protocol

    import keras

    class _RunLike(Protocol):
        """What `summary_html` reads of a run (training.run.RunResult)."""

        @property
        def run_dir(self) -> str | Path: ...

        @property
        def metrics(self) -> Mapping[str, Any]: ...


REPORT_HEIGHT_PX = 900  # the inline report's frame; it scrolls inside


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where rich displays render), not a terminal or a script."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return type(shell).__name__ == "ZMQInteractiveShell"


def report_frame(run_dir: str | Path) -> str:
    """The run's report.html inline: an iframe whose document is the report itself (it needs no files beside)."""
    from pathlib import Path

    report = Path(run_dir) / "report.html"
    if not report.is_file():
        raise FileNotFoundError(f"{report} does not exist: the run was trained with report false")
    return (
        f'<div><iframe srcdoc="{html.escape(report.read_text(), quote=True)}" style="width:100%;'
        f'height:{REPORT_HEIGHT_PX}px;border:1px solid #ddd"></iframe></div>'
    )


def summary_html(run: _RunLike) -> str:
    """A run in a few lines: where it is, its test score, and its training curves."""
    from pathlib import Path

    m = run.metrics
    lines = [f"<b>run</b> <code>{html.escape(str(run.run_dir))}</code>"]
    if "test_accuracy" in m:
        lines.append(
            f"test accuracy <b>{m['test_accuracy']:.4f}</b>, loss {m['test_loss']:.4f} "
            f"({m['test_images']} images, best epoch {m.get('best_epoch', '-')}/{m.get('epochs_run', '-')})"
        )
    curves = Path(run.run_dir) / "curves.png"
    if curves.is_file():
        data = base64.b64encode(curves.read_bytes()).decode("ascii")
        lines.append(f'<img src="data:image/png;base64,{data}" style="max-width:100%">')
    return "<br>".join(lines)


def make_live_progress() -> keras.callbacks.Callback:
    """A Keras callback that shows training in a notebook: a line for the step in progress, updated at most every
    0.3 s, and a table that gains a row per epoch."""
    import keras
    from IPython.display import HTML as _HTML
    from IPython.display import display as _display

    HTML: Any = _HTML  # IPython's display functions are untyped
    display: Any = _display

    class LiveProgress(keras.callbacks.Callback):  # type: ignore[misc]  # Keras is untyped: Callback is Any
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[dict[str, float]] = []
            self.last, self.epoch = 0.0, 0
            self.line = display(HTML(""), display_id=True)
            self.table = display(HTML(""), display_id=True)

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.epoch, self.started = epoch, time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.perf_counter()
            if now - self.last < 0.3:
                return
            self.last = now
            total = self.params.get("steps") or "?"
            loss = (logs or {}).get("loss")
            text = f"epoch {self.epoch + 1}/{self.params.get('epochs', '?')}: step {batch + 1}/{total}"
            self.line.update(HTML(text + (f", loss {float(loss):.4f}" if loss is not None else "")))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            row: dict[str, float] = {
                "epoch": epoch + 1,
                **{k: float(v) for k, v in (logs or {}).items() if _is_number(v)},
            }
            row["seconds"] = time.perf_counter() - self.started
            self.rows.append(row)
            self.line.update(HTML(f"epoch {epoch + 1}/{self.params.get('epochs', '?')} done"))
            self.table.update(HTML(_table(self.rows)))

    return LiveProgress()


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return not isinstance(v, (str, bool))
    except (TypeError, ValueError):
        return False


def _table(rows: list[dict[str, float]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(k))}</td>" for k in keys) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(v: float | None) -> str:
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}" if abs(v) < 1e-3 or abs(v) >= 1e4 else f"{v:.4f}"
