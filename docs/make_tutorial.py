"""Writes docs/tutorial.ipynb from the cells below, and with --run executes it in a Jupyter kernel at full size so
that the committed notebook carries real outputs:

    .venv/bin/python docs/make_tutorial.py --run      # ~10 min on 2 CPU cores; runs go under /tmp/imgtrain-tutorial

`make test` executes the same notebook at a small size (tests/test_notebooks.py).
"""

import argparse
import os
import shutil
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "tutorial.ipynb"


def _note_001() -> str:
    """Note 001's train_step and network as tests/note001.py defines them (the file the tests train), so that the
    notebook shows the code that is tested."""
    text = (HERE.parent / "tests" / "note001.py").read_text()
    body = text[text.index("@keras.saving.register_keras_serializable") : text.index("\nRECIPE = ")].rstrip()
    return "import tensorflow as tf\n\n\n" + body


NOTE_001 = _note_001()

CELLS = [
    (
        "md",
        """# imgtrain in a notebook: the five notes' workflows

The tutorial notes trained MNIST and Fashion-MNIST classifiers with Keras cell by cell: a CNN, a hand-written
`GradientTape` loop, dense networks, callbacks and saving, a folder of photos with augmentation and BatchNorm.
Here each is a few lines of imgtrain's Python API. Everything it returns is plain: `run.model` is a `keras.Model`,
`run.history` a dict of lists, a dataset's images a NumPy array. In a notebook `train()` shows a live table of the
epochs, `run.show()` shows the run's report inline, and `ds.show_batch()` draws a grid of images.

`make test` runs this notebook top to bottom in a Jupyter kernel at a small size (`IMGTRAIN_TUTORIAL_SMALL=1`);
the outputs below are from a full run (`python docs/make_tutorial.py --run`).""",
    ),
    (
        "code",
        """import os

import imgtrain  # first: it keeps TensorFlow's start-up banner (absl, oneDNN) out of the outputs, as the CLI does
from imgtrain import load_dataset, train

import keras
import numpy as np

SMALL = os.environ.get("IMGTRAIN_TUTORIAL_SMALL") == "1"  # make test: a few thousand images, one or two epochs
LIMIT = 2000 if SMALL else None  # training images of each run (None: all)
print(f"imgtrain {imgtrain.__version__}, Keras {keras.__version__} on {keras.backend.backend()}")""",
    ),
    (
        "md",
        """## Seed 000: a CNN on MNIST

The data come from the offline copy that `make` installs; `load_dataset` returns uint8 images and integer labels,
with a stratified validation split held out of the training set.""",
    ),
    (
        "code",
        """mnist = load_dataset("mnist", train_limit=LIMIT)
print(mnist.train.x.shape, mnist.train.x.dtype, mnist.val.x.shape, mnist.test.x.shape)
mnist.show_batch(20)""",
    ),
    (
        "code",
        """run = train(dataset="mnist", model="cnn_small", epochs=1 if SMALL else 3, train_limit=LIMIT)
run""",
    ),
    (
        "md",
        """The run directory holds the model (`best.keras`, plain Keras), the history, the config and the report. The
report, inline:""",
    ),
    ("code", """run.show()"""),
    (
        "md",
        """## Seed 001: the note's own training loop, as a `train_step`

Note 001 wrote its loop by hand with `tf.GradientTape`. Written as the model's `train_step`, the same loop runs
inside imgtrain: the run still gets checkpoints, resume, the test score and the report. Whatever the step
returns lands in the history (here the gradients' norm).""",
    ),
    (
        "code",
        NOTE_001
        + """


run001 = train(model=note001, dataset="mnist", label_mode="onehot", batch_size=100, learning_rate=1e-3,
               schedule="constant", epochs=1 if SMALL else 3, train_limit=LIMIT, report=False)
print("test accuracy", run001.metrics["test_accuracy"], "grad_norm per epoch", np.round(run001.history["grad_norm"], 3))""",
    ),
    (
        "md",
        """## Seed 002: dense networks on Fashion-MNIST

The note's split (`train_test_split(test_size=0.2, random_state=42)`) is `val_split=0.2, seed=42`; its
`Dense(100, sigmoid)` network is the registry's `mlp` with options. `imgtrain.analysis.plots.curves` draws what the note
plotted from `history.history`.""",
    ),
    (
        "code",
        """fashion = load_dataset("fashion_mnist", train_limit=LIMIT)
fashion.show_batch(20)""",
    ),
    (
        "code",
        """run002 = train(dataset="fashion_mnist", model="mlp", val_split=0.2, seed=42, epochs=2 if SMALL else 10,
               model_options={"width": 100, "activation": "sigmoid", "dropout": 0.0}, train_limit=LIMIT,
               report=False)
imgtrain.analysis.plots.curves(run002.history)""",
    ),
    (
        "md",
        """## Seed 003: callbacks, saving and loading

Early stopping, the best checkpoint and the plateau schedule are config keys. The saved model is plain Keras:
load it without imgtrain and predict.""",
    ),
    (
        "code",
        """run003 = train(dataset="fashion_mnist", model="mlp", epochs=2 if SMALL else 20, monitor="val_loss",
               early_stopping=3, reduce_lr_patience=2, schedule="constant", learning_rate=1e-3,
               train_limit=LIMIT, report=False)
print("epochs run", run003.metrics["epochs_run"], "best epoch", run003.metrics["best_epoch"])

model = keras.models.load_model(run003.run_dir / "best.keras")
probs = model.predict(fashion.test.x[:8], verbose=0)
print("predicted", [fashion.class_names[i] for i in probs.argmax(1)])
print("true     ", [fashion.class_names[i] for i in fashion.test.y[:8]])""",
    ),
    (
        "code",
        """scores = imgtrain.evaluate(model, fashion.test, fashion.class_names)  # a dict, per class included
print({k: round(v, 4) for k, v in scores.items() if isinstance(v, float)})
scores["per_class"]["Shirt"]""",
    ),
    (
        "md",
        """## Seed 004: a folder of images, augmentation and BatchNorm

Your own photos go in one folder per class. Here a folder is written from Fashion-MNIST so that the notebook runs
offline; `folder:PATH` reads any such folder (JPEG, PNG, ...).""",
    ),
    (
        "code",
        """from pathlib import Path

from PIL import Image

photos = Path("runs/tutorial-photos")
per_class = 100 if SMALL else 600
for c, name in enumerate(fashion.class_names[:4]):
    folder = photos / name.replace("/", "-")
    folder.mkdir(parents=True, exist_ok=True)
    for i, k in enumerate(np.flatnonzero(fashion.train.y == c)[:per_class]):
        Image.fromarray(fashion.train.x[k, ..., 0]).save(folder / f"{i}.png")

clothes = load_dataset(f"folder:{photos}", val_split=0.2)
print(clothes.class_names, len(clothes.train), "training images")
clothes.show_batch(12, cols=6)""",
    ),
    (
        "code",
        """run004 = train(dataset=f"folder:{photos}", model="cnn_bn", augment="seed004", val_split=0.2,
               epochs=3 if SMALL else 15)
run004""",
    ),
    (
        "md",
        """## Why did it decide that?

`imgtrain.explain` returns a heatmap per image (Grad-CAM on the last convolution); the report shows them for the
worst mistakes. Here, the first test images of the folder run:""",
    ),
    (
        "code",
        """test = clothes.test if clothes.test is not None else clothes.val
x, y = test.x[:6], test.y[:6]
why = imgtrain.explain(run004.model, x)  # for the predicted class
why_true = imgtrain.explain(run004.model, x, class_index=y)  # for the true class
print(why.method, why.layer, why.heatmaps.shape)
imgtrain.analysis.plots.heatmaps(x, why.heatmaps, why_true.heatmaps, y, why.probs, clothes.class_names, why.method,
                        title="the first test images")""",
    ),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.cells = [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in CELLS]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def run(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 1800, small: bool = False) -> nbformat.NotebookNode:
    """Executes `nb` in a fresh kernel in `cwd` (runs are written there); raises on the first failing cell."""
    from nbclient import NotebookClient

    env = {**os.environ, "IMGTRAIN_TUTORIAL_SMALL": "1" if small else "0"}
    previous = os.environ.copy()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(previous)
    return nb


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="execute it at full size and keep the outputs")
    args = parser.parse_args()
    nb = build()
    if args.run:
        where = Path("/tmp/imgtrain-tutorial")
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        t = time.perf_counter()
        run(nb, where)
        print(f"executed in {time.perf_counter() - t:.0f} s")
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK}")
