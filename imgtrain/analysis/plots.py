"""Figures of a run: curves, sample images, confusion matrix, top losses, per-class scores.

Each function returns a `matplotlib.figure.Figure` built without pyplot, so nothing changes the user's
matplotlib backend: the report saves it as PNG, and a notebook shows it as a picture (it carries `_repr_png_`,
since without pyplot IPython has no display registered for figures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from imgtrain.core.figures import Figure, Mosaic
from imgtrain.core.figures import captions as captions  # re-exported: a run's figures use them
from imgtrain.core.figures import png_bytes as png_bytes
from imgtrain.core.figures import samples as samples

if TYPE_CHECKING:
    import numpy.typing as npt


def curves(history: dict[str, list[float]], title: str = "") -> Figure:
    """Loss and accuracy per epoch, train against validation; learning rate on a second axis of the loss plot."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    epochs = np.arange(1, len(next(iter(history.values()), [])) + 1)
    stage = history.get("stage", [])
    changes = [i for i in range(1, len(stage)) if stage[i] != stage[i - 1]]  # first epoch index of a new stage
    for ax, key in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for name, style in ((key, "-o"), (f"val_{key}", "-s")):
            if name in history:
                ax.plot(epochs, history[name], style, ms=3, label="train" if name == key else "validation")
        for i in changes:  # a two-stage run: the head alone, then the body too
            ax.axvline(i + 0.5, color="gray", ls="--", lw=1, label=f"stage {int(stage[i])} starts")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key == "loss" and "learning_rate" in history:
            lr_ax = ax.twinx()
            lr_ax.plot(epochs, history["learning_rate"], ":", color="gray", label="learning rate")
            lr_ax.set_ylabel("learning rate", color="gray")
            lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
            lines = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
            ax.legend(lines, [l.get_label() for l in lines], loc="upper right")
        else:
            ax.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return fig


def confusion(matrix: npt.ArrayLike, class_names: list[str]) -> Figure:
    """The confusion matrix normalised by true class (each row sums to 1), class names on both axes."""
    from sklearn.metrics import ConfusionMatrixDisplay

    m = np.asarray(matrix, dtype=float)
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = max(5.0, 0.55 * len(class_names) + 2)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    ConfusionMatrixDisplay(norm, display_labels=class_names).plot(
        ax=ax, cmap="Blues", values_format=".2f", xticks_rotation=45, colorbar=True
    )
    if len(class_names) > 20:  # numbers in cells become unreadable
        for t in ax.texts:
            t.set_visible(False)
    ax.set_title("confusion matrix (rows: true class, normalised)")
    return fig


def top_losses(probs: np.ndarray, y: np.ndarray, n: int = 24) -> np.ndarray:
    """Indices of the `n` misclassified images with the highest loss (lowest probability on the true class)."""
    wrong = np.flatnonzero(probs.argmax(axis=1) != y)
    true_p = probs[wrong, y[wrong]]
    return wrong[np.argsort(true_p, kind="stable")][:n]


def misclassified(
    x: np.ndarray, y: np.ndarray, probs: np.ndarray, class_names: list[str], n: int = 24, cols: int = 8
) -> Figure:
    """The highest-loss misclassified images, titled 'label : true, pred : predicted (confidence)'."""
    idx = top_losses(probs, y, n)
    grid = Mosaic(
        len(idx), cols, (1.9, 2.1), 0.38, "top losses: misclassified test images, most confident mistakes first"
    )
    for k, i in enumerate(idx):
        pred = int(probs[i].argmax())
        grid.show(k, x[i], f"label : {class_names[y[i]]}\npred : {class_names[pred]} ({probs[i, pred]:.2f})", 7)
    if not len(idx):
        grid.ax.text(0.95, 1.0, "no misclassified images", ha="center", va="center")
    return grid.fig


def heatmaps(
    x: np.ndarray,
    pred_maps: np.ndarray,
    true_maps: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    method: str,
    title: str = "the highest-loss mistakes, then one right image per class",
) -> Figure:
    """One row per image: the image, the evidence for the predicted class, and for the true class (the same map
    when the prediction is right), each map laid over the image (bright: much evidence)."""
    grid = Mosaic(3 * len(x), 3, (1.9, 2.0), 0.25, f"why ({method}): {title}")
    for i in range(len(x)):
        pred = int(probs[i].argmax())
        right = pred == y[i]
        grid.show(3 * i, x[i], f"{'right' if right else 'wrong'}: {class_names[y[i]]}", 7)
        grid.show(3 * i + 1, x[i], f"pred {class_names[pred]} ({probs[i, pred]:.2f})", 7, pred_maps[i])
        grid.show(
            3 * i + 2,
            x[i],
            "true = pred" if right else f"true {class_names[y[i]]} ({probs[i, y[i]]:.2f})",
            7,
            true_maps[i],
        )
    return grid.fig


def per_class(per_class_metrics: dict[str, dict[str, float]]) -> Figure:
    """Precision, recall (the per-class accuracy) and F1 for every class."""
    names = list(per_class_metrics)
    fig = Figure(figsize=(max(6.0, 0.7 * len(names) + 2), 4), layout="constrained")
    ax = fig.subplots()
    pos = np.arange(len(names))
    for k, key in enumerate(("precision", "recall", "f1")):
        ax.bar(pos + (k - 1) * 0.27, [per_class_metrics[c][key] for c in names], width=0.27, label=key)
    low = min(min(m[k] for k in ("precision", "recall", "f1")) for m in per_class_metrics.values())
    ax.set_ylim(max(0.0, low - 0.05), 1.0)
    ax.set_xticks(pos, names, rotation=45, ha="right")
    ax.set_ylabel("score on the test set")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside the bars it would hide
    return fig


def compare(histories: dict[str, dict[str, list[float]]], key: str = "val_accuracy") -> Figure:
    """One curve per run for `key` (and the training loss), to compare runs side by side."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for name, h in histories.items():
        if key in h:
            ax_acc.plot(np.arange(1, len(h[key]) + 1), h[key], "-o", ms=3, label=name)
        if "loss" in h:
            ax_loss.plot(np.arange(1, len(h["loss"]) + 1), h["loss"], "-", label=name)
    for ax, label in ((ax_acc, key), (ax_loss, "loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def search_history(trials: list[dict[str, Any]], metric: str, maximize: bool) -> Figure:
    """A hyper-parameter search: each trial's value (complete: dots, pruned: crosses at their last reported value)
    and the best so far, against the trial number. `trials`: {"number", "state", "value"} rows."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for state, style in (("complete", "o"), ("pruned", "x")):
        rows = [t for t in trials if t["state"] == state and t["value"] is not None]
        ax.plot([t["number"] for t in rows], [t["value"] for t in rows], style, label=state)
    done = sorted((t["number"], t["value"]) for t in trials if t["state"] == "complete" and t["value"] is not None)
    if done:
        best = (np.maximum if maximize else np.minimum).accumulate(np.array([v for _, v in done]))
        last = max(t["number"] for t in trials)  # the line runs on to the last trial, complete or not
        ax.step([n for n, _ in done] + [last], [*best, best[-1]], where="post", color="gray", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    ax.set_title("optimisation history")
    return fig


def importances(scores: dict[str, float], note: str = "") -> Figure:
    """Hyper-parameter importances (fractions of the value's variance, largest on top); `note` when there are none."""
    fig = Figure(figsize=(7, max(2.5, 0.45 * len(scores) + 1.2)), layout="constrained")
    ax = fig.subplots()
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names])
    if not scores:
        ax.text(0.5, 0.5, note or "no importances", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("parameter importances")
    return fig
