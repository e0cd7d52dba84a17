"""docs/tutorial.ipynb, run top to bottom in a real Jupyter kernel at a small size (the committed copy carries the
outputs of a full run, checked here too)."""

import re
import sys

import nbformat
import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "docs"))
import make_tutorial  # noqa: E402

NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


def _outputs(cell, kind: str) -> list[str]:
    """The `kind` ('text/html', 'image/png', 'stream') outputs of a code cell."""
    if kind == "stream":
        return [o["text"] for o in cell.outputs if o.output_type == "stream" and o.get("name") == "stdout"]
    return [o["data"][kind] for o in cell.outputs if kind in o.get("data", {})]


def _cell(nb, start: str):
    return next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(start))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    return make_tutorial.run(nb, tmp_path_factory.mktemp("tutorial"), timeout=600, small=True)


def test_the_committed_notebook_is_the_generated_one_with_a_full_runs_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in nb.cells] == [c.source for c in make_tutorial.build().cells], (
        "docs/tutorial.ipynb is stale: run python docs/make_tutorial.py --run"
    )
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs for c in code), "every code cell of the committed notebook shows its output"
    summary = _outputs(_cell(nb, 'run = train(dataset="mnist"'), "text/html")[-1]
    assert float(re.search(r"test accuracy <b>([\d.]+)</b>", summary).group(1)) >= 0.98  # all 60,000 images
    assert "(1800, 28, 28, 1)" not in "".join(_outputs(_cell(nb, "mnist = load_dataset"), "stream"))  # not small


def test_the_tutorial_runs_in_a_jupyter_kernel_and_shows_what_it_says(executed):
    assert "(1800, 28, 28, 1) uint8 (200, 28, 28, 1) (10000, 28, 28, 1)" in "".join(
        _outputs(_cell(executed, "mnist = load_dataset"), "stream")
    )  # the small size: 2,000 images
    # each picture the text promises: show_batch grids, the curves, the heatmaps
    for start in (
        "mnist = load_dataset",
        "fashion = load_dataset",
        "run002 = train",
        "from pathlib import Path",
        "test = clothes",
    ):
        assert len(_outputs(_cell(executed, start), "image/png")) == 1, start
    train_cell = _cell(executed, 'run = train(dataset="mnist"')
    html = _outputs(train_cell, "text/html")
    # the live display: its last state is the table of the one epoch, then the run's own summary
    assert html[0] == "epoch 1/1 done" and html[1].count("<tr>") == 2 and "<th>val_accuracy</th>" in html[1]
    assert re.search(r"test accuracy <b>0\.[5-9]\d{3}</b>", html[2]) and 'src="data:image/png;base64,' in html[2]
    report = _outputs(_cell(executed, "run.show()"), "text/html")[0]
    assert report.startswith("<div><iframe srcdoc=") and "&lt;title&gt;imgtrain" in report
    note = "".join(_outputs(_cell(executed, "import tensorflow as tf"), "stream"))
    assert re.search(r"test accuracy 0\.\d+ grad_norm per epoch \[\d+\.\d+\]", note)  # the note's own train_step ran
    table = _outputs(_cell(executed, "import tensorflow as tf"), "text/html")[1]
    assert "<th>grad_norm</th>" in table
    # `import imgtrain` first keeps TensorFlow's start-up banner out, as the CLI does (#27)
    streams = [o["text"] for c in executed.cells if c.cell_type == "code" for o in c.outputs if "text" in o]
    noise = [t for t in streams if "oneDNN" in t or "absl::" in t]
    assert not noise, noise[0][:300]
