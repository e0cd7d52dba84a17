"""Figures built without pyplot (so nothing changes the user's matplotlib backend) that display in a notebook,
and the image grid every picture of images uses: a dataset's samples, a run's mistakes, heatmaps."""

from __future__ import annotations

import io

import numpy as np
from matplotlib import figure
from matplotlib.patches import Rectangle


def png_bytes(fig: figure.Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


class Figure(figure.Figure):
    """A plain matplotlib Figure that a notebook displays as a PNG."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self, dpi=90)


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return (n + cols - 1) // cols, cols


def captions(fig: figure.Figure) -> list[str]:
    """The captions of an image grid (samples, misclassified, heatmaps), in the grid's order."""
    return [t.get_text() for ax in fig.axes for t in ax.texts if t.get_gid() == "caption"]


class Mosaic:
    """A grid of images drawn into one Axes that fills the figure (coordinates in inches from the top left): one
    imshow per image and its caption as text (gid "caption", in order; a heatmap's imshow has gid "overlay"). One Axes
    instead of one per image: creating and laying out dozens
    of Axes took most of the report's time (0.8 s of the heatmaps figure's 1.1 s)."""

    def __init__(self, n: int, cols: int, cell: tuple[float, float], title_in: float, head: str = ""):
        rows, self.cols = _grid(max(n, 1), cols)
        self.cell, self.title_in, self.top = cell, title_in, 0.3 if head else 0.05
        width, height = cell[0] * self.cols, cell[1] * rows + self.top
        self.fig = Figure(figsize=(width, height))
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_autoscale_on(False)
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(height, 0)
        self.ax.axis("off")
        if head:
            self.ax.text(width / 2, 0.08, head, ha="center", va="top", fontsize=9)

    def show(
        self, k: int, img: np.ndarray, title: str = "", fontsize: float = 8, heat: np.ndarray | None = None
    ) -> None:
        """Image k (row-major) with `title` above it; `heat` (h × w in [0, 1]) laid over it."""
        row, col = divmod(k, self.cols)
        box_w, box_h = self.cell[0] - 0.15, self.cell[1] - self.title_in - 0.1  # inches left for the image
        h, w = img.shape[:2]
        scale = min(box_w / w, box_h / h)
        x0 = col * self.cell[0] + (self.cell[0] - w * scale) / 2
        y0 = self.top + row * self.cell[1] + self.title_in
        extent = (x0, x0 + w * scale, y0 + h * scale, y0)
        gray = img.shape[-1] == 1
        self.ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=255, extent=extent)
        if heat is not None:
            self.ax.imshow(
                heat, cmap="inferno", alpha=0.55, vmin=0, vmax=1, interpolation="bilinear", extent=extent, gid="overlay"
            )
        self.ax.add_patch(Rectangle((x0, y0), w * scale, h * scale, fill=False, lw=0.6, ec="black"))
        self.ax.text(x0 + w * scale / 2, y0 - 0.04, title, ha="center", va="bottom", fontsize=fontsize, gid="caption")


def samples(x: np.ndarray, y: np.ndarray, class_names: list[str], n: int = 30, cols: int = 10, seed: int = 0) -> Figure:
    """A grid of `n` random images, titled with their class."""
    idx = np.random.default_rng(seed).choice(len(x), size=min(n, len(x)), replace=False)
    grid = Mosaic(len(idx), cols, (1.3, 1.5), 0.25)
    for k, i in enumerate(idx):
        grid.show(k, x[i], class_names[y[i]], 8)
    return grid.fig
